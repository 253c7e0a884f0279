//! Printing: results on stdout (human sentences, or JSON/YAML for scripts), errors and progress on
//! stderr. Colour only on a terminal and never with `NO_COLOR` (anstream decides); a spinner only
//! while waiting on the network and only when stderr is a terminal.
//!
//! Strings from a tka server or the tailnet (problem details, node names, the caller's name,
//! error text) are shown to people only through [`Untrusted`] and the printers here, which
//! replace every character that could drive a terminal (C0 and C1 controls, DEL, and so every
//! escape sequence; bidirectional overrides and isolates, which reorder text) by a visible
//! escape such as `\u{1b}`. A hostile server therefore cannot move the cursor, rewrite earlier
//! lines, set the window title or fake a line of tka's own. `-o json|yaml` prints the exact
//! strings, escaped the way each format escapes (see [`result`]).

use std::borrow::Cow;
use std::fmt;
use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use anstyle::{AnsiColor, Style};
use jiff::{SignedDuration, Timestamp, tz::TimeZone};
use serde::Serialize;

use crate::cli::OutputFormat;
use crate::error::CliError;

const ERROR: Style = Style::new()
    .fg_color(Some(anstyle::Color::Ansi(AnsiColor::Red)))
    .bold();
const HINT: Style = Style::new().bold();

/// Whether a character must not reach a terminal as it is: a control character (C0, DEL, C1,
/// which starts or carries every escape sequence) or a bidirectional formatting character
/// (embeddings, overrides, isolates and marks), which reorders the text around it.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}'
                | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// Writes `text` with every unsafe character replaced by its visible escape (`\n`, `\u{1b}`,
/// `\u{202e}`); with `keep_newlines`, line breaks stay (for whole multi-line texts whose
/// fields were already escaped).
fn write_escaped(out: &mut impl fmt::Write, text: &str, keep_newlines: bool) -> fmt::Result {
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if is_unsafe(c) && !(keep_newlines && c == '\n') {
            out.write_str(text.get(start..i).unwrap_or_default())?;
            out.write_fmt(format_args!("{}", c.escape_default()))?;
            start = i + c.len_utf8();
        }
    }
    out.write_str(text.get(start..).unwrap_or_default())
}

/// `text` as it may be shown on a terminal (see [`write_escaped`]).
fn escaped(text: &str, keep_newlines: bool) -> Cow<'_, str> {
    if !text
        .chars()
        .any(|c| is_unsafe(c) && !(keep_newlines && c == '\n'))
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    // Writing to a String cannot fail.
    let _ = write_escaped(&mut out, text, keep_newlines);
    Cow::Owned(out)
}

/// A value from the server or the tailnet, shown on one line: displays it with every control,
/// escape and bidirectional formatting character replaced by a visible escape, line breaks and
/// tabs included.
///
/// ```text
/// format!("{}", Untrusted("\u{1b}]0;pwned\u{7}alice")) == "\\u{1b}]0;pwned\\u{7}alice"
/// ```
#[derive(Debug, Clone, Copy)]
pub(crate) struct Untrusted<T>(pub(crate) T);

impl<T: fmt::Display> fmt::Display for Untrusted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Escaping<'a, 'b>(&'a mut fmt::Formatter<'b>);
        impl fmt::Write for Escaping<'_, '_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                write_escaped(self.0, s, false)
            }
        }
        fmt::Write::write_fmt(&mut Escaping(f), format_args!("{}", self.0))
    }
}

/// Prints a result in the chosen format. Human text goes through the same escaping as
/// [`Untrusted`] (keeping its own line breaks), so a server string that a printer forgot to
/// wrap still cannot drive the terminal. JSON and YAML carry the exact strings and are written
/// as they are (not through the colour filter, which would drop bytes from them); JSON also
/// escapes what its serializer leaves raw (DEL, C1, bidirectional controls) as `\uXXXX`, which
/// reads back as the same string.
pub(crate) fn result<T: Serialize>(
    format: OutputFormat,
    value: &T,
    human: impl FnOnce() -> String,
) -> Result<(), CliError> {
    let text = match format {
        OutputFormat::Human => return stdout(&escaped(&human(), true)),
        OutputFormat::Json => {
            json_escaped(
                &serde_json::to_string_pretty(value)
                    .map_err(|e| CliError::Output(e.to_string()))?,
            ) + "\n"
        }
        OutputFormat::Yaml => {
            serde_yaml::to_string(value).map_err(|e| CliError::Output(e.to_string()))?
        }
    };
    stdout(&text)
}

/// Writes text to stdout exactly (results, the exec plugin's credential, completion scripts):
/// no colour filter in the way, which would drop bytes.
pub(crate) fn stdout(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| CliError::Output(e.to_string()))
}

/// JSON text with every unsafe character but its own line breaks written as a `\uXXXX`
/// escape. Outside strings JSON is ASCII, with no controls but whitespace, and inside strings
/// the serializer already escaped C0 (line breaks included), so only string contents change, and
/// only in spelling.
fn json_escaped(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if is_unsafe(c) && c != '\n' {
            // Every unsafe character is in the Basic Multilingual Plane: one UTF-16 unit.
            for unit in c.encode_utf16(&mut [0; 2]) {
                out += &format!("\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A note for people on stderr (not part of the result), on one line: server strings in it are
/// escaped.
pub(crate) fn note(text: &str) {
    let _ = writeln!(anstream::stderr(), "{}", Untrusted(text));
}

/// Reports a failure: `error: what happened` and `hint: what to do`, or, for the exec plugin
/// (whose stderr kubectl shows inline), one line `tka: what happened; what to do`. Both are
/// single lines whose server text (a problem's detail, a node's name) is escaped.
pub(crate) fn report(error: &CliError, one_line: bool) {
    let mut err = anstream::stderr().lock();
    let error = Untrusted(error);
    let hint = error.0.hint();
    let hint = hint.as_deref().map(Untrusted);
    if one_line {
        let _ = match hint {
            Some(hint) => writeln!(err, "tka: {error}; {hint}"),
            None => writeln!(err, "tka: {error}"),
        };
        return;
    }
    let _ = writeln!(err, "{ERROR}error:{ERROR:#} {error}");
    if let Some(hint) = hint {
        let _ = writeln!(err, "{HINT}hint:{HINT:#} {hint}");
    }
}

/// A warning on stderr, on one line: server strings in it are escaped.
pub(crate) fn warn(text: &str, one_line: bool) {
    let mut err = anstream::stderr().lock();
    let text = Untrusted(text);
    let _ = if one_line {
        writeln!(err, "tka: warning: {text}")
    } else {
        writeln!(err, "{HINT}warning:{HINT:#} {text}")
    };
}

/// Runs `work` with a spinner and `message` on stderr, when stderr is a terminal.
pub(crate) fn with_spinner<T>(message: String, work: impl FnOnce() -> T) -> T {
    if !std::io::stderr().is_terminal() {
        return work();
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    spinner.set_message(message);
    spinner.enable_steady_tick(Duration::from_millis(100));
    let out = work();
    spinner.finish_and_clear();
    out
}

/// A time for people: local time with its zone (`2026-01-01 14:05 CET`).
pub(crate) fn local_time(t: Timestamp) -> String {
    t.to_zoned(TimeZone::system())
        .strftime("%Y-%m-%d %H:%M %Z")
        .to_string()
}

/// Time left, coarsely: `1h5m`, `42m`, `30s`, or `expired`.
pub(crate) fn remaining(d: SignedDuration) -> String {
    let secs = d.as_secs();
    if secs <= 0 {
        return "expired".to_owned();
    }
    let (h, m) = (secs / 3600, (secs % 3600) / 60);
    match (h, m) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m"),
        (h, 0) => format!("{h}h"),
        (h, m) => format!("{h}h{m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_from_servers_become_visible_escapes() {
        let shown = |s: &str| Untrusted(s).to_string();
        // Erase the screen, set the window title (OSC, ended by BEL or ST), a C1 CSI, DEL, a
        // right-to-left override and an isolate, and line breaks that would fake a line.
        assert_eq!(shown("\u{1b}[2Jalice"), "\\u{1b}[2Jalice");
        assert_eq!(
            shown("\u{1b}]0;owned\u{7}x\u{1b}]2;t\u{1b}\\"),
            "\\u{1b}]0;owned\\u{7}x\\u{1b}]2;t\\u{1b}\\"
        );
        assert_eq!(shown("a\u{9b}2Jb\u{7f}"), "a\\u{9b}2Jb\\u{7f}");
        assert_eq!(
            shown("admin\u{202e}txt.exe\u{2066}x\u{2069}"),
            "admin\\u{202e}txt.exe\\u{2066}x\\u{2069}"
        );
        assert_eq!(shown("ok\nerror: fake\r\tx"), "ok\\nerror: fake\\r\\tx");
        // Ordinary text, non-ASCII included, is unchanged.
        for plain in [
            "alice@example.com",
            "José Müller (東京)",
            "tka-prod",
            "שלום",
            "",
        ] {
            assert_eq!(shown(plain), plain);
        }
        // Whole texts keep their own line breaks and lose everything else.
        assert_eq!(
            escaped("one\u{1b}[1A\ntwo\u{202e}\n", true),
            "one\\u{1b}[1A\ntwo\\u{202e}\n"
        );
        assert!(matches!(escaped("one\ntwo\n", true), Cow::Borrowed(_)));
        assert_eq!(escaped("one\ntwo", false), "one\\ntwo");
    }

    #[test]
    fn json_output_reads_back_exactly_and_carries_no_raw_controls() {
        let value = serde_json::json!({"caller": "\u{1b}[2Ja\u{7f}\u{9b}\u{202e}b\nJosé 東京"});
        let text = json_escaped(&serde_json::to_string_pretty(&value).unwrap());
        assert!(!text.chars().any(|c| is_unsafe(c) && c != '\n'), "{text:?}");
        assert!(text.contains("\\u007f\\u009b\\u202e") && text.contains("José 東京"));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            value
        );
    }

    #[test]
    fn remaining_is_coarse() {
        assert_eq!(remaining(SignedDuration::from_secs(42 * 60 + 59)), "42m");
        assert_eq!(remaining(SignedDuration::from_secs(3600)), "1h");
        assert_eq!(remaining(SignedDuration::from_secs(3900)), "1h5m");
        assert_eq!(remaining(SignedDuration::from_secs(30)), "30s");
        assert_eq!(remaining(SignedDuration::from_secs(0)), "expired");
        assert_eq!(remaining(SignedDuration::from_secs(-5)), "expired");
    }
}
