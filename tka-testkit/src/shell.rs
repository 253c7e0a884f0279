//! Shell commands as documentation shows them: the logical commands of a block of lines, for
//! the tests that run what the docs show.

/// The logical commands of `lines`: continuation lines (`\`) joined, `# comments` and blank
/// lines dropped, here-document bodies skipped (the command that opens one is kept), and
/// whitespace collapsed to single spaces.
pub fn logical_commands<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    let mut heredoc: Option<String> = None;
    for line in lines {
        if let Some(end) = &heredoc {
            if line.trim() == end {
                heredoc = None;
            }
            continue;
        }
        let code = strip_comment(line);
        if code.trim().is_empty() && pending.is_empty() {
            continue;
        }
        if let Some(rest) = code.trim_end().strip_suffix('\\') {
            pending.push_str(rest);
            pending.push(' ');
            continue;
        }
        pending.push_str(&code);
        let command = pending.split_whitespace().collect::<Vec<_>>().join(" ");
        pending.clear();
        if let Some(pos) = command.find("<<") {
            let word = command[pos + 2..]
                .trim_start_matches('-')
                .split_whitespace()
                .next()
                .unwrap_or("");
            heredoc = Some(word.trim_matches(['\'', '"']).to_owned());
        }
        if !command.is_empty() {
            out.push(command);
        }
    }
    out
}

/// The line without a trailing `# comment` (a `#` at the start or after whitespace, outside
/// quotes).
pub fn strip_comment(line: &str) -> String {
    let mut out = String::new();
    let (mut single, mut double) = (false, false);
    let mut previous = ' ';
    for c in line.chars() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && previous.is_whitespace() => break,
            _ => {}
        }
        out.push(c);
        previous = c;
    }
    out.truncate(out.trim_end().len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuations_comments_and_here_documents() {
        let block = [
            "# a comment",
            "kubectl apply \\",
            "  -k overlays/prod   # the overlay",
            "",
            "cat <<'EOF' > x.yaml",
            "a: 1 # not a command",
            "EOF",
            "echo 'a # b' \"c # d\" e#f",
        ];
        assert_eq!(
            logical_commands(block),
            [
                "kubectl apply -k overlays/prod",
                "cat <<'EOF' > x.yaml",
                "echo 'a # b' \"c # d\" e#f",
            ]
        );
    }
}
