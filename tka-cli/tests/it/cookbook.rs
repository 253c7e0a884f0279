//! The policy cookbook (docs/cookbook/) is true: every recipe page quotes its real policy file
//! and GrantMappings verbatim, shows at least one `--who` answer, is linked from the index, and
//! every `tka policy explain` command shown on it (and in docs/cli.md) prints exactly what the
//! page says, run from the repository's root. A shown output ending in a `...` line is a prefix.

use std::path::{Path, PathBuf};

use crate::support::{Sandbox, run, stderr, stdout};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `$ tka ...` commands of a page's `console` blocks, each with the output shown after it.
fn shown_commands(page: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut in_console = false;
    let mut current: Option<(String, String)> = None;
    for line in page.lines() {
        if !in_console {
            in_console = line.trim_end() == "```console";
            continue;
        }
        if line.trim_end() == "```" || line.starts_with("$ ") {
            out.extend(current.take());
        }
        if line.trim_end() == "```" {
            in_console = false;
        } else if let Some(command) = line.strip_prefix("$ ") {
            current = Some((command.to_owned(), String::new()));
        } else if let Some((_, output)) = current.as_mut() {
            output.push_str(line);
            output.push('\n');
        }
    }
    out.into_iter()
        .filter(|(command, _)| command.starts_with("tka policy explain "))
        .collect()
}

fn check_commands(sandbox: &Sandbox, page_path: &Path) -> usize {
    let page = std::fs::read_to_string(page_path).unwrap();
    let commands = shown_commands(&page);
    for (command, shown) in &commands {
        let args: Vec<&str> = command.split_whitespace().skip(1).collect();
        let out = run(sandbox.tka().current_dir(root()).args(&args));
        assert!(out.status.success(), "{command}: {}", stderr(&out));
        let printed = stdout(&out);
        match shown.strip_suffix("...\n") {
            Some(prefix) => assert!(
                printed.starts_with(prefix),
                "{}: `{command}` printed\n{printed}",
                page_path.display()
            ),
            None => assert_eq!(
                &printed,
                shown,
                "{}: `{command}` printed something else",
                page_path.display()
            ),
        }
    }
    commands.len()
}

#[test]
fn every_recipe_quotes_its_files_and_shows_what_explain_prints() {
    let cookbook = root().join("docs/cookbook");
    let index = std::fs::read_to_string(cookbook.join("README.md")).unwrap();
    let sandbox = Sandbox::new();
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&cookbook)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md") && !p.ends_with("README.md"))
        .collect();
    pages.sort();
    assert_eq!(pages.len(), 6, "{pages:?}");
    for page_path in &pages {
        let recipe = page_path.file_stem().unwrap().to_str().unwrap();
        let page = std::fs::read_to_string(page_path).unwrap();
        assert!(
            index.contains(&format!("]({recipe}.md)")),
            "the index does not link {recipe}"
        );
        for (file, lang) in [("policy.hujson", "jsonc"), ("mappings.yaml", "yaml")] {
            let text = std::fs::read_to_string(cookbook.join(recipe).join(file)).unwrap();
            assert!(
                page.contains(&format!("```{lang}\n{text}```")),
                "{recipe}.md does not quote {recipe}/{file} as it is"
            );
            assert!(
                page.contains(&format!("]({recipe}/{file})")),
                "{recipe}: link to {file}"
            );
        }
        let who = shown_commands(&page)
            .iter()
            .filter(|(c, _)| {
                c.contains(" --who ") && c.contains(&format!("docs/cookbook/{recipe}/"))
            })
            .count();
        assert!(
            who >= 1,
            "{recipe}.md shows no --who answer of its own files"
        );
        assert!(check_commands(&sandbox, page_path) >= 2, "{recipe}");
    }
    assert_eq!(check_commands(&sandbox, &root().join("docs/cli.md")), 1);
}
