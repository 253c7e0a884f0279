//! Printing: results on stdout (human sentences, or JSON/YAML for scripts), errors and progress on
//! stderr. Colour only on a terminal and never with `NO_COLOR` (anstream decides); a spinner only
//! while waiting on the network and only when stderr is a terminal.

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

/// Prints a result in the chosen format.
pub(crate) fn result<T: Serialize>(
    format: OutputFormat,
    value: &T,
    human: impl FnOnce() -> String,
) -> Result<(), CliError> {
    let text = match format {
        OutputFormat::Human => human(),
        OutputFormat::Json => {
            serde_json::to_string_pretty(value).map_err(|e| CliError::Output(e.to_string()))? + "\n"
        }
        OutputFormat::Yaml => {
            serde_yaml::to_string(value).map_err(|e| CliError::Output(e.to_string()))?
        }
    };
    stdout(&text)
}

/// Writes text to stdout as is.
pub(crate) fn stdout(text: &str) -> Result<(), CliError> {
    let mut out = anstream::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| CliError::Output(e.to_string()))
}

/// A note for people on stderr (not part of the result).
pub(crate) fn note(text: &str) {
    let _ = writeln!(anstream::stderr(), "{text}");
}

/// Reports a failure: `error: what happened` and `hint: what to do`, or, for the exec plugin
/// (whose stderr kubectl shows inline), one line `tka: what happened; what to do`.
pub(crate) fn report(error: &CliError, one_line: bool) {
    let mut err = anstream::stderr().lock();
    if one_line {
        let _ = match error.hint() {
            Some(hint) => writeln!(err, "tka: {error}; {hint}"),
            None => writeln!(err, "tka: {error}"),
        };
        return;
    }
    let _ = writeln!(err, "{ERROR}error:{ERROR:#} {error}");
    if let Some(hint) = error.hint() {
        let _ = writeln!(err, "{HINT}hint:{HINT:#} {hint}");
    }
}

/// A warning on stderr.
pub(crate) fn warn(text: &str, one_line: bool) {
    let mut err = anstream::stderr().lock();
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
    fn remaining_is_coarse() {
        assert_eq!(remaining(SignedDuration::from_secs(42 * 60 + 59)), "42m");
        assert_eq!(remaining(SignedDuration::from_secs(3600)), "1h");
        assert_eq!(remaining(SignedDuration::from_secs(3900)), "1h5m");
        assert_eq!(remaining(SignedDuration::from_secs(30)), "30s");
        assert_eq!(remaining(SignedDuration::from_secs(0)), "expired");
        assert_eq!(remaining(SignedDuration::from_secs(-5)), "expired");
    }
}
