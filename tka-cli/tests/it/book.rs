//! docs/cli-help.md is the built `tka`'s `--help`, command by command: the page is generated
//! from the binary (every command `tka --help` lists, and theirs in turn) and must equal what
//! it renders to now. `TKA_BLESS_DOCS=1` rewrites it.

use std::path::Path;

use crate::support::*;

const PAGE: &str = "docs/cli-help.md";

/// The `--help` of `tka` followed by `words`.
fn help(sandbox: &Sandbox, words: &[String]) -> String {
    let out = run(sandbox.tka().args(words).arg("--help"));
    assert!(
        out.status.success(),
        "tka {words:?} --help: {}",
        stderr(&out)
    );
    stdout(&out)
}

/// The subcommands a help text lists under `Commands:` (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim_end() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

/// Every command, depth first in the order `--help` lists them, with its help.
fn walk(sandbox: &Sandbox, words: &[String], out: &mut Vec<(Vec<String>, String)>) {
    let text = help(sandbox, words);
    let children = subcommands(&text);
    out.push((words.to_vec(), text));
    for child in children {
        let mut next = words.to_vec();
        next.push(child);
        walk(sandbox, &next, out);
    }
}

fn render(commands: &[(Vec<String>, String)]) -> String {
    let mut page = String::from(
        "# Help of every command\n\n\
         <!-- Generated from the built tka by tka-cli's test\n     \
         book::the_cli_help_page_is_the_built_binarys_help. Do not edit: change the clap\n     \
         definitions, then regenerate with\n     \
         TKA_BLESS_DOCS=1 cargo test -p tka-cli --test it book:: -->\n\n\
         What `tka <command> --help` prints, for every command. [The tka command](cli.md) explains\n\
         each one with its files, exit codes and examples; this page is the exact text, kept equal to\n\
         the binary by a test.\n",
    );
    for (words, text) in commands {
        let name = std::iter::once("tka")
            .chain(words.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        page.push_str(&format!(
            "\n## `{name}`\n\n```text\n{}\n```\n",
            text.trim_end()
        ));
    }
    page
}

#[test]
fn the_cli_help_page_is_the_built_binarys_help() {
    let sandbox = Sandbox::new();
    let mut commands = Vec::new();
    walk(&sandbox, &[], &mut commands);
    assert!(
        commands.len() >= 9,
        "only {} commands found: {:?}",
        commands.len(),
        commands.iter().map(|(w, _)| w).collect::<Vec<_>>()
    );
    let rendered = render(&commands);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(PAGE);
    if std::env::var_os("TKA_BLESS_DOCS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &rendered).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    let first_difference = current.lines().zip(rendered.lines()).find(|(a, b)| a != b);
    assert!(
        current == rendered,
        "{PAGE} is not the built tka's help; regenerate it with\n  TKA_BLESS_DOCS=1 cargo test -p tka-cli --test it book::\nfirst difference (page, binary): {first_difference:?}"
    );
}
