//! `docs/security.md` names, for each threat, the tests that prove its mitigation. This keeps
//! that table true: every test it names exists (a `fn` of that name in the named package, and
//! the first module of its path is a module of the named target), every row names a test or
//! says "not yet tested", and every threat of the threat model's brief has a row. It reads
//! sources only; nothing is built or run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The threats the model must cover, each as words its row's threat cell contains.
const THREATS: &[&str] = &[
    "through `bind`",
    "cluster-wide roles",
    "Token replay",
    "stolen kubeconfig, direct mode",
    "stolen kubeconfig, proxy mode",
    "Leaked tokens",
    "Revocation gaps",
    "Streams outliving a session",
    "Cleanup failures",
    "TOCTOU between whois and issuing",
    "Cross-site requests and DNS rebinding",
    "Slow clients",
    "A hostile server driving the CLI",
    "Name collisions",
    "Clock skew",
    "Funnel or public exposure",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tka-server sits in the workspace")
        .to_owned()
}

/// One row of the table: the threat and the "proved by" cell.
struct Row {
    threat: String,
    proved_by: String,
}

/// The rows of the table under the `## Threats` heading (header and separator skipped).
fn rows(doc: &str) -> Vec<Row> {
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Threats"))
        .expect("docs/security.md has a `## Threats…` section");
    section
        .lines()
        .filter(|line| line.starts_with('|'))
        .skip(2)
        .map(|line| {
            let cells: Vec<&str> = line.trim().trim_matches('|').split(" | ").collect();
            assert_eq!(cells.len(), 3, "a row of three cells: {line}");
            Row {
                threat: cells[0].trim().to_owned(),
                proved_by: cells[2].trim().to_owned(),
            }
        })
        .collect()
}

/// A test as the table names it: `<package> --lib|--bin <bin>|--test <binary> <path>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Named {
    package: String,
    target: Target,
    path: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Lib,
    Bin,
    Test(String),
}

/// The backticked spans of `cell` that name a test: those that start with a workspace package
/// and a `--` option. One that starts so but does not parse is an error, so a typo cannot hide.
fn named_tests(cell: &str, root: &Path) -> Vec<Result<Named, String>> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| {
            let mut words = span.split(' ');
            let package = words.next().unwrap_or_default();
            words.next().is_some_and(|w| w.starts_with("--"))
                && root.join(package).join("Cargo.toml").is_file()
        })
        .map(|span| parse(span).ok_or_else(|| format!("`{span}` does not name a test")))
        .collect()
}

fn parse(span: &str) -> Option<Named> {
    let words: Vec<&str> = span.split(' ').collect();
    let (target, path) = match words.as_slice() {
        [_, "--lib", path] => (Target::Lib, *path),
        [_, "--bin", _, path] => (Target::Bin, *path),
        [_, "--test", binary, path] => (Target::Test((*binary).to_owned()), *path),
        _ => return None,
    };
    let path: Vec<String> = path.split("::").map(str::to_owned).collect();
    let ident = |s: &String| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    path.iter().all(ident).then(|| Named {
        package: words[0].to_owned(),
        target,
        path,
    })
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether `text` defines a function `name` (`fn name` followed by a non-identifier character).
fn defines(text: &str, name: &str) -> bool {
    let needle = format!("fn {name}");
    text.match_indices(&needle).any(|(at, _)| {
        let before_ok = text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        let after_ok = text[at + needle.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        before_ok && after_ok
    })
}

/// Why `test` does not exist in the workspace at `root`, or `None` if it does.
fn missing(test: &Named, root: &Path) -> Option<String> {
    let package = root.join(&test.package);
    let target_root = match &test.target {
        Target::Lib | Target::Bin => package.join("src"),
        Target::Test(binary) => {
            let dir = package.join("tests").join(binary);
            if dir.join("main.rs").is_file() {
                dir
            } else if package.join("tests").join(format!("{binary}.rs")).is_file() {
                package.join("tests")
            } else {
                return Some(format!("{} has no test binary `{binary}`", test.package));
            }
        }
    };
    if let [module, _, ..] = test.path.as_slice() {
        let file = target_root.join(format!("{module}.rs"));
        if !file.is_file() && !target_root.join(module).is_dir() {
            return Some(format!("no module `{module}` in {}", target_root.display()));
        }
    }
    let name = test.path.last()?;
    let mut files = Vec::new();
    sources(&package, &mut files);
    let found = files.iter().any(|file| {
        !file.starts_with(package.join("target"))
            && std::fs::read_to_string(file).is_ok_and(|text| defines(&text, name))
    });
    (!found).then(|| format!("no `fn {name}` in {}", package.display()))
}

/// Every problem with the table in `doc`, checked against the sources at `root`.
fn problems(doc: &str, root: &Path) -> Vec<String> {
    let rows = rows(doc);
    let mut problems = Vec::new();
    for threat in THREATS {
        if !rows.iter().any(|row| row.threat.contains(threat)) {
            problems.push(format!("no row for the threat \"{threat}\""));
        }
    }
    let mut tests = BTreeSet::new();
    for row in &rows {
        let named = named_tests(&row.proved_by, root);
        if named.is_empty() && !row.proved_by.contains("not yet tested") {
            problems.push(format!(
                "\"{}\" names no test and does not say \"not yet tested\"",
                row.threat
            ));
        }
        for test in named {
            match test {
                Ok(test) => {
                    tests.insert(test);
                }
                Err(e) => problems.push(e),
            }
        }
    }
    for test in &tests {
        if let Some(why) = missing(test, root) {
            problems.push(format!("{test:?}: {why}"));
        }
    }
    problems
}

#[test]
fn every_test_the_threat_model_names_exists() {
    let root = workspace();
    let doc = std::fs::read_to_string(root.join("docs/security.md")).unwrap();
    let rows = rows(&doc);
    assert!(rows.len() >= THREATS.len(), "{} rows", rows.len());
    let problems = problems(&doc, &root);
    assert!(
        problems.is_empty(),
        "docs/security.md:\n{}",
        problems.join("\n")
    );
    // The check looked at real names, not at an empty table.
    let named: usize = rows
        .iter()
        .map(|row| named_tests(&row.proved_by, &root).len())
        .sum();
    assert!(named > 50, "only {named} test names found");
}

#[test]
fn the_check_refuses_a_missing_test_a_wrong_module_and_a_row_without_a_test() {
    let root = workspace();
    let table = |cell: &str| {
        let mut doc = String::from(
            "# x\n\n## Threats\n\n| threat | mitigation | proved by |\n|---|---|---|\n",
        );
        for threat in THREATS {
            doc.push_str(&format!("| {threat} | m | {cell} |\n"));
        }
        doc.push_str("\n## Residual risks\n");
        doc
    };
    // Allowed: a test that exists, and an honest gap.
    let real = "`tka-server --test it threat_model::every_test_the_threat_model_names_exists`";
    assert_eq!(problems(&table(real), &root), Vec::<String>::new());
    assert_eq!(
        problems(&table("replicas: not yet tested"), &root),
        Vec::<String>::new()
    );
    // Refused: a name with no `fn`, a module the target does not have (each named in every
    // row, reported once), a typo in the form and a row with neither a test nor "not yet
    // tested" (reported for every row).
    // (The missing name is put together here: written out, this file would define it.)
    let absent = format!("no_such_{}", "test_anywhere");
    for (cell, why, count) in [
        (
            format!("`tka-server --test it threat_model::{absent}`"),
            format!("no `fn {absent}`"),
            1,
        ),
        (
            "`tka-server --test it no_such_module::every_test_the_threat_model_names_exists`"
                .to_owned(),
            "no module `no_such_module`".to_owned(),
            1,
        ),
        (
            "`tka-server --tset it threat_model::every_test_the_threat_model_names_exists`"
                .to_owned(),
            "does not name a test".to_owned(),
            THREATS.len(),
        ),
        (
            "nothing here".to_owned(),
            "names no test".to_owned(),
            THREATS.len(),
        ),
    ] {
        let found = problems(&table(&cell), &root);
        assert!(
            found.len() == count && found.iter().all(|p| p.contains(&why)),
            "{cell}: {found:#?}"
        );
    }
    // And a threat without a row.
    let without_funnel = table(real).replace("| Funnel or public exposure |", "| Exposure |");
    assert_eq!(
        problems(&without_funnel, &root),
        vec!["no row for the threat \"Funnel or public exposure\"".to_owned()]
    );
}
