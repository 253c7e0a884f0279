//! The book (`book.toml`, pages under `docs/`, ordered by `docs/SUMMARY.md`) kept true to
//! itself and to the code. It reads files only; nothing is built or run here:
//!
//! - every page is in the summary, and every relative link and `#anchor` of the book's pages
//!   (and of README.md) resolves; with `TKA_BOOK_HTML` set to a built book (`make book` does),
//!   the same for every `href`/`src` of the rendered HTML, against the ids mdBook really wrote;
//! - every shell command shown in the book is on [`COMMANDS`], which names for each the test,
//!   demo or Makefile recipe that runs it and a piece of its text that must be in that file;
//! - every message quoted in `docs/troubleshooting.md` is in the source of tka-cli, tka-server
//!   or tka-core;
//! - `docs/api-reference.md` is exactly what [`render_api_reference`] makes of the OpenAPI
//!   document (`TKA_BLESS_DOCS=1` rewrites it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

pub(super) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tka-server sits in the workspace")
        .to_owned()
}

pub(super) fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Whether the test should write the generated pages instead of comparing them.
fn bless() -> bool {
    std::env::var_os("TKA_BLESS_DOCS").is_some_and(|v| v == "1")
}

// ---------------------------------------------------------------------------------------------
// Markdown, as far as the checks need it.

/// A fenced code block: its info string's first word and its lines.
pub(super) struct CodeBlock {
    pub(super) lang: String,
    pub(super) lines: Vec<String>,
}

/// A page split into its prose lines (code blocks blanked) and its code blocks.
pub(super) struct Page {
    prose: Vec<String>,
    pub(super) blocks: Vec<CodeBlock>,
}

pub(super) fn parse_page(text: &str) -> Page {
    let mut prose = Vec::new();
    let mut blocks = Vec::new();
    let mut open: Option<(String, CodeBlock)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some((fence, block)) = &mut open {
            if trimmed.starts_with(fence.as_str())
                && trimmed.trim_start_matches(['`', '~']).trim().is_empty()
            {
                let (_, block) = open.take().expect("a block is open");
                blocks.push(block);
            } else {
                block.lines.push(line.to_owned());
            }
            prose.push(String::new());
            continue;
        }
        let fence_len = trimmed
            .chars()
            .take_while(|c| *c == '`')
            .count()
            .max(trimmed.chars().take_while(|c| *c == '~').count());
        if fence_len >= 3 {
            let fence: String = trimmed.chars().take(fence_len).collect();
            let lang = trimmed[fence_len..]
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_owned();
            open = Some((
                fence,
                CodeBlock {
                    lang,
                    lines: Vec::new(),
                },
            ));
            prose.push(String::new());
            continue;
        }
        prose.push(line.to_owned());
    }
    assert!(open.is_none(), "a code block is never closed");
    Page { prose, blocks }
}

/// The line without its inline code spans.
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '`' {
            let run = chars[i..].iter().take_while(|c| **c == '`').count();
            let fence: String = "`".repeat(run);
            let rest: String = chars[i + run..].iter().collect();
            if let Some(end) = rest.find(&fence) {
                i += run + rest[..end].chars().count() + run;
                out.push_str("code");
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// The text of a heading as a reader sees it (code spans and link targets removed).
fn heading_text(raw: &str) -> String {
    let mut text = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '`' | '*' => {}
            ']' if chars.peek() == Some(&'(') => {
                for c in chars.by_ref() {
                    if c == ')' {
                        break;
                    }
                }
            }
            '[' => {}
            _ => text.push(c),
        }
    }
    text.trim().to_owned()
}

/// mdBook's (and GitHub's) id of a heading: lowercase letters, digits, `-` and `_`, spaces as
/// `-`, everything else dropped; a repeated id gets `-1`, `-2`, ….
fn heading_ids(page: &Page) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for line in &page.prose {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base: String = heading_text(&line[hashes..])
            .chars()
            .filter_map(|c| {
                if c.is_alphanumeric() || c == '_' || c == '-' {
                    Some(c.to_lowercase().next().unwrap_or(c))
                } else if c.is_whitespace() {
                    Some('-')
                } else {
                    None
                }
            })
            .collect();
        let n = seen.entry(base.clone()).or_insert(0);
        ids.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    ids
}

/// Every link target in the page's prose: inline `[text](target)` and definitions `[x]: target`.
fn link_targets(page: &Page) -> Vec<String> {
    let mut targets = Vec::new();
    for line in &page.prose {
        let line = without_code_spans(line);
        let trimmed = line.trim_start();
        if let Some(pos) = trimmed.find("]: ")
            && trimmed.starts_with('[')
            && !trimmed[..pos].contains('(')
        {
            targets.push(
                trimmed[pos + 3..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_owned(),
            );
            continue;
        }
        let mut rest = line.as_str();
        while let Some(pos) = rest.find("](") {
            let after = &rest[pos + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = after[..end].split_whitespace().next().unwrap_or("");
            targets.push(target.trim_matches(['<', '>']).to_owned());
            rest = &after[end..];
        }
    }
    targets
}

fn is_external(target: &str) -> bool {
    target.contains("://") || target.starts_with("mailto:")
}

/// `dir/../x` without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The pages the summary links, in order, relative to docs/.
fn summary_pages(docs: &Path) -> Vec<String> {
    let summary = parse_page(&read(&docs.join("SUMMARY.md")));
    link_targets(&summary)
        .into_iter()
        .filter(|t| !t.is_empty() && !is_external(t))
        .collect()
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            markdown_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

#[test]
fn every_page_is_in_the_summary_and_every_link_and_anchor_resolves() {
    let root = workspace();
    let docs = root.join("docs");
    let pages = summary_pages(&docs);
    let in_book: BTreeSet<PathBuf> = pages.iter().map(|p| normalize(&docs.join(p))).collect();
    let mut problems = Vec::new();
    for page in &pages {
        if !docs.join(page).is_file() {
            problems.push(format!("SUMMARY.md links {page}, which does not exist"));
        }
    }
    let mut all = Vec::new();
    markdown_files(&docs, &mut all);
    for file in &all {
        if file.file_name().is_some_and(|n| n == "SUMMARY.md") {
            continue;
        }
        if !in_book.contains(&normalize(file)) {
            problems.push(format!(
                "{} is not in docs/SUMMARY.md, so the book does not have it",
                file.display()
            ));
        }
    }

    let mut checked = 0;
    let mut files: Vec<PathBuf> = in_book.iter().cloned().collect();
    files.push(root.join("README.md"));
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let page = parse_page(&text);
        let own_ids = heading_ids(&page);
        let in_docs = file.starts_with(&docs);
        for target in link_targets(&page) {
            if target.is_empty() || is_external(&target) {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let where_ = file.strip_prefix(&root).unwrap_or(file).display();
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                normalize(&file.parent().expect("a file has a directory").join(path))
            };
            if !resolved.exists() {
                problems.push(format!(
                    "{where_}: link {target}: {} does not exist",
                    resolved.display()
                ));
                continue;
            }
            if in_docs && !resolved.starts_with(&docs) {
                problems.push(format!(
                    "{where_}: link {target} leaves docs/, which the book cannot serve; link the file on the code host instead"
                ));
            }
            let is_markdown = resolved.extension().is_some_and(|e| e == "md");
            if in_docs && is_markdown && !in_book.contains(&resolved) {
                problems.push(format!(
                    "{where_}: link {target}: that page is not in SUMMARY.md"
                ));
            }
            if let Some(anchor) = anchor {
                let ids = if path.is_empty() {
                    own_ids.clone()
                } else if is_markdown {
                    heading_ids(&parse_page(&read(&resolved)))
                } else {
                    BTreeSet::new()
                };
                if !ids.contains(anchor) {
                    problems.push(format!(
                        "{where_}: link {target}: no heading with id '{anchor}'"
                    ));
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links were found; is the parser broken?"
    );

    if let Some(html) = std::env::var_os("TKA_BOOK_HTML") {
        problems.extend(check_html(Path::new(&html)));
    } else if std::env::var_os("TKA_REQUIRE_BOOK").is_some_and(|v| v == "1") {
        problems.push("TKA_REQUIRE_BOOK=1 but TKA_BOOK_HTML names no built book".to_owned());
    }
    assert!(
        problems.is_empty(),
        "{} broken:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Every relative `href`/`src` of the built book names a file that exists, and every `#anchor`
/// on a chapter names an id that chapter has.
fn check_html(dir: &Path) -> Vec<String> {
    fn html_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                html_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "html") {
                out.push(path);
            }
        }
    }
    fn attribute_values(html: &str, name: &str) -> Vec<String> {
        let needle = format!(" {name}=\"");
        let mut out = Vec::new();
        let mut rest = html;
        while let Some(pos) = rest.find(&needle) {
            let after = &rest[pos + needle.len()..];
            let end = after.find('"').unwrap_or(after.len());
            out.push(after[..end].replace("&amp;", "&"));
            rest = &after[end..];
        }
        out
    }
    let mut problems = Vec::new();
    let mut files = Vec::new();
    html_files(dir, &mut files);
    if !files.iter().any(|f| f.ends_with("overview.html")) {
        return vec![format!(
            "{}: no built book here (no overview.html)",
            dir.display()
        )];
    }
    let mut ids: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        ids.insert(
            file.clone(),
            attribute_values(&read(file), "id").into_iter().collect(),
        );
    }
    for file in &files {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // The print page and the table of contents repeat every chapter's links.
        if matches!(name, "print.html" | "toc.html" | "404.html") {
            continue;
        }
        let html = read(file);
        for target in attribute_values(&html, "href")
            .into_iter()
            .chain(attribute_values(&html, "src"))
        {
            if target.is_empty()
                || is_external(&target)
                || target.starts_with("javascript:")
                || target.starts_with("data:")
            {
                continue;
            }
            let target = target.split('?').next().unwrap_or("").to_owned();
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p.to_owned(), Some(a.to_owned())),
                None => (target.clone(), None),
            };
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                normalize(&file.parent().expect("a file has a directory").join(&path))
            };
            let shown = file.strip_prefix(dir).unwrap_or(file).display();
            if !resolved.exists() {
                problems.push(format!(
                    "book {shown}: {target}: {} does not exist",
                    resolved.display()
                ));
                continue;
            }
            if let (Some(anchor), Some(targets)) = (anchor, ids.get(&resolved))
                && !anchor.is_empty()
                && !targets.contains(&anchor)
            {
                problems.push(format!("book {shown}: {target}: no id '{anchor}'"));
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// Commands shown in the book.

/// What runs a command the book shows.
enum Runs {
    /// A test: the file (from the workspace root) and the test function in it.
    Test(&'static str, &'static str),
    /// `make demo` (tka-testkit/examples/demo.rs).
    Demo,
    /// A Makefile target's recipe (part of `make test`, or named so in the book when not).
    Make(&'static str),
    /// A build script (run by a Makefile target).
    Script(&'static str),
}

/// Commands run whole by one test wherever some pages show them, with whatever arguments: the
/// command's start, the pages (paths under `docs/`, or their start), the test's file and name
/// (the test must hold the command's start).
const PREFIXES: &[(&str, &[&str], &str, &str)] = &[(
    "tka policy explain ",
    &["cookbook/", "cli.md"],
    "tka-cli/tests/it/cookbook.rs",
    "every_recipe_quotes_its_files_and_shows_what_explain_prints",
)];

/// Every command the book shows (whitespace collapsed, comments dropped), what runs it, and
/// text of that test, recipe or script that shows it is this command (checked to be there).
/// A test that runs a command with other arguments (a real tailnet address instead of
/// `prod`) is named with the part that is the same.
const COMMANDS: &[(&str, Runs, &str)] = &[
    // docs/README.md
    ("make demo", Runs::Make("demo"), "--example demo"),
    ("make test", Runs::Script(".ci/run"), "make test"),
    // docs/testing.md
    ("make soak", Runs::Make("soak"), "e2e_soak::"),
    (
        "TKA_REQUIRE_TESTENV=1 TKA_SOAK_SECONDS=300 cargo test --locked -p tka-server --test it e2e_soak:: -- --nocapture",
        Runs::Make("soak"),
        "TKA_SOAK_SECONDS",
    ),
    // docs/cli.md
    ("tka list", Runs::Demo, "\"list\""),
    ("tka login prod", Runs::Demo, "\"login\", CLUSTER"),
    ("kubectl get ns", Runs::Demo, "&[\"get\", \"ns\""),
    ("tka logout prod", Runs::Demo, "\"logout\", CLUSTER"),
    // docs/api.md
    (
        "curl -sS -X POST -H 'Content-Type: application/json' -H 'Accept: application/yaml' -d '{\"role\":\"sre\",\"ttl\":\"2h\"}' http://tka-prod/api/v1/login > kubeconfig",
        Runs::Test(
            "tka-server/tests/it/e2e_refusals.rs",
            "e2e_refusals_with_deploy_rbac_create_nothing_and_allowed_requests_pass",
        ),
        "Content-Type: application/json",
    ),
    // docs/operations.md
    (
        "kubectl create namespace tka-system",
        Runs::Test(
            "tka-server/tests/it/e2e_install.rs",
            "e2e_the_install_and_uninstall_steps_of_the_operations_page_work_as_shown",
        ),
        "kubectl create namespace tka-system",
    ),
    (
        "kubectl -n tka-system create secret generic tka-tailscale-auth --from-literal=TS_AUTHKEY='tskey-auth-…'",
        Runs::Test(
            "tka-server/tests/it/e2e_install.rs",
            "e2e_the_install_and_uninstall_steps_of_the_operations_page_work_as_shown",
        ),
        "\"kubectl -n tka-system create secret generic tka-tailscale-auth\"",
    ),
    (
        "kubectl apply -k overlays/prod",
        Runs::Test(
            "tka-server/tests/it/e2e_install.rs",
            "e2e_the_install_and_uninstall_steps_of_the_operations_page_work_as_shown",
        ),
        "\"kubectl apply -k overlays/prod\"",
    ),
    (
        "kubectl apply -f tka-server/deploy/examples/grantmappings.yaml",
        Runs::Test(
            "tka-server/tests/it/e2e_install.rs",
            "e2e_the_install_and_uninstall_steps_of_the_operations_page_work_as_shown",
        ),
        "\"kubectl apply -f tka-server/deploy/examples/grantmappings.yaml\"",
    ),
    (
        "kubectl get grantmappings",
        Runs::Demo,
        "\"get\", \"grantmappings\"",
    ),
    (
        "make image",
        Runs::Make("image"),
        "tka-server/image/build.sh",
    ),
    (
        "mkdir -p /tmp/tka-image",
        Runs::Script("tka-server/image/build.sh"),
        "mkdir -p \"$pushed\"",
    ),
    (
        "tar -xf ~/.cache/tka/image/tka-server.tar -C /tmp/tka-image",
        Runs::Script("tka-server/image/build.sh"),
        "tar -xf \"$out.tmp\" -C \"$pushed\"",
    ),
    (
        "crane push /tmp/tka-image ghcr.io/example/tka-server:0.1.0",
        Runs::Script("tka-server/image/build.sh"),
        "push \"$pushed\"",
    ),
    (
        "kubectl -n tka-system exec deploy/tka-server -c tka-server -- tka-server drain --timeout 60s",
        Runs::Test(
            "tka-server/tests/it/e2e_install.rs",
            "e2e_the_install_and_uninstall_steps_of_the_operations_page_work_as_shown",
        ),
        "split_once(\" -- \")",
    ),
    (
        "kubectl delete -k overlays/prod",
        Runs::Test(
            "tka-server/tests/it/e2e_install.rs",
            "e2e_the_install_and_uninstall_steps_of_the_operations_page_work_as_shown",
        ),
        "\"kubectl delete -k overlays/prod\"",
    ),
    // docs/testing.md
    (
        "eval \"$(tka-testkit/testenv/build.sh)\"",
        Runs::Make("e2e"),
        "$(TESTENV_BUILD) 2>/dev/null",
    ),
    (
        "TKA_REQUIRE_TESTENV=1 cargo test -p tka-testkit --test it e2e::kubectl::a_view_credential_reads_everything_and_writes_nothing",
        Runs::Test(
            "tka-testkit/tests/it/e2e/kubectl.rs",
            "a_view_credential_reads_everything_and_writes_nothing",
        ),
        "fn a_view_credential_reads_everything_and_writes_nothing",
    ),
    (
        "TKA_REQUIRE_TESTENV=1 cargo test -p tka-testkit --test it e2e::",
        Runs::Make("e2e"),
        "-p tka-testkit --test it e2e::",
    ),
    (
        "make e2e",
        Runs::Make("e2e"),
        "-p tka-testkit --test it e2e::",
    ),
    (
        "cargo build -p tka-cli",
        Runs::Make("unit"),
        "test --workspace",
    ),
    (
        "TKA_REQUIRE_TESTENV=1 cargo test -p tka-server --test it e2e_ -- --nocapture",
        Runs::Make("unit"),
        "test --workspace",
    ),
    // docs/benchmarks.md: the measured runs that write into $BENCH_OUT. `make bench` and `make
    // bench-exec` (not part of `make test`) run them at their sizes.
    (
        "cargo bench -p tka-benches --bench core",
        Runs::Make("bench"),
        "bench --locked -p tka-benches --bench core",
    ),
    (
        "nice -n 10 cargo build --release -p tka-server -p tka-benches --bin tka-server --bin scale",
        Runs::Make("bench"),
        "--bin scale --bin proxy",
    ),
    (
        "$T/scale --server-bin $T/tka-server --out $BENCH_OUT --idle-seconds 20",
        Runs::Make("bench"),
        "release/scale\"",
    ),
    (
        "$T/scale --server-bin $T/tka-server --out $BENCH_OUT --idle-seconds 20 --server-log-filter warn,tka_core::kubernetes::reconciler=debug",
        Runs::Make("bench"),
        "--server-log-filter \"$(SCALE_LOG_FILTER)\"",
    ),
    (
        "nice -n 10 cargo build --release -p tka-server -p tka-benches --bin tka-server --bin proxy",
        Runs::Make("bench"),
        "--bin scale --bin proxy",
    ),
    (
        "$T/proxy --server-bin $T/tka-server --out $BENCH_OUT --rounds 300 --concurrency 8 --slices 5 --slice-seconds 3 --watches 1000 --logout-rounds 10 --logout-watches 20",
        Runs::Make("bench"),
        "release/proxy\"",
    ),
    (
        "make bench-exec",
        Runs::Make("bench-exec"),
        "release/exec_plugin",
    ),
    (
        "timeout 600 $T/exec_plugin --runs 500 --warmup 20 --seconds 240 --json $BENCH_OUT/exec-plugin.json",
        Runs::Make("bench-exec"),
        "release/exec_plugin",
    ),
    // docs/benchmarks.md: the `$T/…` commands that write nothing into $BENCH_OUT, run at
    // their smallest sizes on debug builds by tka-benches' test.
    (
        "make bench-bins",
        Runs::Make("bench-bins"),
        "-p tka-server -p tka-cli -p tka-benches --bins",
    ),
    (
        "$T/revoke_latency --sessions 200",
        Runs::Test(
            "benches/tests/it/main.rs",
            "every_benchmark_command_of_the_book_runs_at_the_smallest_size",
        ),
        "bin: \"revoke_latency\"",
    ),
    (
        "$T/loadgen --requests 50000 --seconds 20 --concurrency 32 2>/dev/null",
        Runs::Test(
            "benches/tests/it/main.rs",
            "every_benchmark_command_of_the_book_runs_at_the_smallest_size",
        ),
        "bin: \"loadgen\"",
    ),
    (
        "$T/loadgen --requests 50000 --seconds 20 --concurrency 32 --no-logs 2>/dev/null",
        Runs::Test(
            "benches/tests/it/main.rs",
            "every_benchmark_command_of_the_book_runs_at_the_smallest_size",
        ),
        "bin: \"loadgen\"",
    ),
    (
        "$T/exec_plugin --no-live --no-gke --runs 300 --warmup 20",
        Runs::Test(
            "benches/tests/it/main.rs",
            "every_benchmark_command_of_the_book_runs_at_the_smallest_size",
        ),
        "bin: \"exec_plugin\"",
    ),
    (
        "mkdir -p /tmp/tka-cred/home /tmp/tka-cred/cache",
        Runs::Test(
            "benches/tests/it/main.rs",
            "every_benchmark_command_of_the_book_runs_at_the_smallest_size",
        ),
        "/tmp/tka-cred",
    ),
    (
        "F=$($T/seed_cache /tmp/tka-cred/cache http://127.0.0.1:9)",
        Runs::Test(
            "benches/tests/it/main.rs",
            "every_benchmark_command_of_the_book_runs_at_the_smallest_size",
        ),
        "bin: \"seed_cache\"",
    ),
    (
        "env -i PATH=/usr/bin:/bin HOME=/tmp/tka-cred/home XDG_CACHE_HOME=/tmp/tka-cred/cache XDG_STATE_HOME=/tmp/tka-cred/state XDG_CONFIG_HOME=/tmp/tka-cred/config KUBECONFIG=/tmp/tka-cred/kubeconfig TZ=UTC TKA_TAILSCALE_SOCKET=/tmp/tka-cred/none.sock TKA_TAILSCALE_CLI=/tmp/tka-cred/none $T/tka credential prod-eu --server http://127.0.0.1:9 --identity laptop.tail1234.ts.net",
        Runs::Test(
            "benches/tests/it/main.rs",
            "every_benchmark_command_of_the_book_runs_at_the_smallest_size",
        ),
        "bin: \"tka\"",
    ),
    (
        "$T/memory",
        Runs::Test(
            "benches/tests/it/main.rs",
            "every_benchmark_command_of_the_book_runs_at_the_smallest_size",
        ),
        "bin: \"memory\"",
    ),
];

/// The shell commands of a page: every logical line of `sh`/`bash`/`shell` blocks (comments,
/// here-document bodies and blank lines dropped) and every `$ ` line of `console` blocks.
pub(super) fn commands(page: &Page) -> Vec<String> {
    let mut out = Vec::new();
    for block in &page.blocks {
        let console = block.lang == "console";
        if !console && !matches!(block.lang.as_str(), "sh" | "bash" | "shell") {
            continue;
        }
        let lines = block.lines.iter().filter_map(|line| {
            if console {
                line.strip_prefix("$ ")
            } else {
                Some(line.as_str())
            }
        });
        out.extend(tka_testkit::shell::logical_commands(lines));
    }
    out
}

#[test]
fn every_command_in_the_book_is_run_by_a_test_or_the_demo() {
    let root = workspace();
    let docs = root.join("docs");
    let listed: BTreeMap<&str, (&Runs, &str)> =
        COMMANDS.iter().map(|(c, r, n)| (*c, (r, *n))).collect();
    let mut problems = Vec::new();
    let mut shown = BTreeSet::new();
    for page in summary_pages(&docs) {
        for command in commands(&parse_page(&read(&docs.join(&page)))) {
            let by_prefix = PREFIXES.iter().find(|(prefix, pages, _, _)| {
                command.starts_with(prefix) && pages.iter().any(|p| page.starts_with(p))
            });
            if !listed.contains_key(command.as_str()) && by_prefix.is_none() {
                problems.push(format!("{page}: `{command}` is not in book::COMMANDS"));
            }
            shown.insert(command);
        }
    }
    for (prefix, _, file, test) in PREFIXES {
        let text = read(&root.join(file));
        for must in [format!("fn {test}("), (*prefix).to_owned()] {
            if !text.contains(&must) {
                problems.push(format!("`{prefix}…`: {file} has no `{must}`"));
            }
        }
    }
    for (command, (runs, needle)) in &listed {
        if !shown.contains(*command) {
            problems.push(format!(
                "book::COMMANDS lists `{command}`, which no page shows any more"
            ));
        }
        let (file, must_hold): (PathBuf, Vec<String>) = match runs {
            Runs::Test(file, test) => (
                root.join(file),
                vec![format!("fn {test}("), (*needle).to_owned()],
            ),
            Runs::Demo => (
                root.join("tka-testkit/examples/demo.rs"),
                vec![(*needle).to_owned()],
            ),
            Runs::Make(target) => {
                let makefile = read(&root.join("Makefile"));
                match recipe(&makefile, target) {
                    Some(recipe) if recipe.contains(needle) => {}
                    Some(_) => problems.push(format!(
                        "`{command}`: the recipe of make {target} has no `{needle}`"
                    )),
                    None => {
                        problems.push(format!("`{command}`: the Makefile has no target {target}"));
                    }
                }
                continue;
            }
            Runs::Script(file) => (root.join(file), vec![(*needle).to_owned()]),
        };
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for must in must_hold {
            if !text.contains(&must) {
                problems.push(format!("`{command}`: {} has no `{must}`", file.display()));
            }
        }
    }
    assert!(
        shown.len() >= 10,
        "only {} commands found; is the parser broken?",
        shown.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The recipe lines of a Makefile target.
fn recipe(makefile: &str, target: &str) -> Option<String> {
    let mut lines = makefile.lines();
    lines.find(|l| l.starts_with(&format!("{target}:")))?;
    Some(
        lines
            .take_while(|l| l.starts_with('\t') || l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

// ---------------------------------------------------------------------------------------------
// Troubleshooting.

fn rust_sources(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push((path.clone(), read(&path).replace("\\\"", "\"")));
        }
    }
}

/// The literal pieces of a quoted message: the text between its `<placeholders>`.
fn fragments(message: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = message;
    while let Some(start) = rest.find('<') {
        let Some(len) = rest[start..].find('>') else {
            break;
        };
        out.push(rest[..start].to_owned());
        rest = &rest[start + len + 1..];
    }
    out.push(rest.to_owned());
    out.retain(|f| !f.is_empty());
    out
}

#[test]
fn every_quoted_troubleshooting_message_is_in_the_source() {
    let root = workspace();
    let page = parse_page(&read(&root.join("docs/troubleshooting.md")));
    let mut sources = Vec::new();
    for krate in ["tka-cli/src", "tka-server/src", "tka-core/src"] {
        rust_sources(&root.join(krate), &mut sources);
    }
    let mut problems = Vec::new();
    let mut quoted = 0;
    for block in page.blocks.iter().filter(|b| b.lang == "text") {
        for line in block
            .lines
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
        {
            quoted += 1;
            let message = ["error: ", "hint: ", "tka: "]
                .iter()
                .find_map(|p| line.strip_prefix(p))
                .unwrap_or(line);
            let pieces = fragments(message);
            if pieces.iter().map(|p| p.chars().count()).max().unwrap_or(0) < 12 {
                problems.push(format!("`{line}`: too little literal text to find it by"));
                continue;
            }
            let found = sources
                .iter()
                .any(|(_, text)| pieces.iter().all(|p| text.contains(p.as_str())));
            if !found {
                let missing: Vec<&String> = pieces
                    .iter()
                    .filter(|p| !sources.iter().any(|(_, t)| t.contains(p.as_str())))
                    .collect();
                problems.push(format!(
                    "`{line}`: no source file of tka-cli, tka-server or tka-core has all of its text (nowhere: {missing:?})"
                ));
            }
        }
    }
    assert!(
        quoted >= 20,
        "only {quoted} messages quoted; is the parser broken?"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// The API reference page.

const API_REFERENCE: &str = "docs/api-reference.md";

#[test]
fn the_api_reference_page_is_generated_from_the_openapi_document() {
    let document: Value = serde_json::from_str(tka_server::openapi::json()).unwrap();
    let rendered = render_api_reference(&document);
    let path = workspace().join(API_REFERENCE);
    if bless() {
        std::fs::write(&path, &rendered).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == rendered,
        "{API_REFERENCE} is not what the OpenAPI document renders to; regenerate it with\n  TKA_BLESS_DOCS=1 cargo test -p tka-server --test it book::the_api_reference_page\nfirst differing line: {:?}",
        current
            .lines()
            .zip(rendered.lines())
            .find(|(a, b)| a != b)
            .or(Some(("(length differs)", "")))
    );
}

/// One line of table cell text: newlines joined, pipes escaped.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn ref_name(reference: &str) -> &str {
    reference.rsplit('/').next().unwrap_or(reference)
}

fn schema_link(name: &str) -> String {
    format!("[`{name}`](#{})", name.to_lowercase())
}

/// A schema's type in words, with links to named schemas.
fn type_of(schema: &Value) -> String {
    if let Some(reference) = schema["$ref"].as_str() {
        return schema_link(ref_name(reference));
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            let words: Vec<String> = options.iter().map(type_of).collect();
            return format!("one of {}", words.join(", "));
        }
    }
    if let Some(all) = schema["allOf"].as_array() {
        return all.iter().map(type_of).collect::<Vec<_>>().join(" and ");
    }
    let types: Vec<String> = match &schema["type"] {
        Value::String(t) => vec![t.clone()],
        Value::Array(ts) => ts
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let words: Vec<String> = types
        .iter()
        .map(|t| match t.as_str() {
            "array" => format!("array of {}", type_of(&schema["items"])),
            "object" if schema["additionalProperties"].is_object() => {
                format!(
                    "map of string to {}",
                    type_of(&schema["additionalProperties"])
                )
            }
            other => match schema["format"].as_str() {
                Some(format) => format!("{other} ({format})"),
                None => other.to_owned(),
            },
        })
        .collect();
    let mut text = if words.is_empty() {
        "any".to_owned()
    } else {
        words.join(" or ")
    };
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> = values
            .iter()
            .map(|v| format!("`{}`", v.as_str().unwrap_or(&v.to_string())))
            .collect();
        text.push_str(&format!(": {}", values.join(", ")));
    }
    text
}

/// Constraints worth a reader's eye: pattern, minimum, examples.
fn constraints(schema: &Value) -> String {
    let mut out = Vec::new();
    if let Some(p) = schema["pattern"].as_str() {
        out.push(format!("pattern `{p}`"));
    }
    if let Some(m) = schema["minimum"].as_i64() {
        out.push(format!("at least {m}"));
    }
    if let Some(examples) = schema["examples"].as_array() {
        let shown: Vec<String> = examples
            .iter()
            .map(|e| {
                format!(
                    "`{}`",
                    e.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| e.to_string())
                )
            })
            .collect();
        out.push(format!("e.g. {}", shown.join(", ")));
    }
    out.join("; ")
}

/// The whole page, from the document alone.
fn render_api_reference(doc: &Value) -> String {
    let mut out = String::new();
    let info = &doc["info"];
    out.push_str("# API reference\n\n");
    out.push_str("<!-- Generated from the OpenAPI document by tka-server's test\n");
    out.push_str("     book::the_api_reference_page_is_generated_from_the_openapi_document.\n");
    out.push_str("     Do not edit: change the Rust types or handlers, then regenerate with\n");
    out.push_str("     TKA_BLESS_DOCS=1 cargo test -p tka-server --test it book::the_api_reference_page -->\n\n");
    out.push_str(&format!(
        "{} `{}`, OpenAPI {}, license {}. The same document is served at `GET /api/v1/openapi.json` and printed by `tka-server openapi`; [The login API](api.md) explains the checks and problems in prose.\n\n",
        info["title"].as_str().unwrap_or("tka login API"),
        info["version"].as_str().unwrap_or(""),
        doc["openapi"].as_str().unwrap_or(""),
        info["license"]["name"].as_str().unwrap_or(""),
    ));
    out.push_str(info["description"].as_str().unwrap_or(""));
    out.push_str("\n\n## Endpoints\n\n| method | path | summary |\n|---|---|---|\n");
    let mut operations = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, methods) in paths {
            for method in ["get", "post", "put", "patch", "delete"] {
                if methods[method].is_object() {
                    operations.push((path.clone(), method, &methods[method]));
                }
            }
        }
    }
    for (path, method, op) in &operations {
        let title = format!("{} {path}", method.to_uppercase());
        let anchor: String = title
            .to_lowercase()
            .chars()
            .filter_map(|c| {
                if c.is_alphanumeric() || c == '-' || c == '_' {
                    Some(c)
                } else if c == ' ' {
                    Some('-')
                } else {
                    None
                }
            })
            .collect();
        out.push_str(&format!(
            "| `{}` | [`{path}`](#{anchor}) | {} |\n",
            method.to_uppercase(),
            cell(op["summary"].as_str().unwrap_or(""))
        ));
    }
    for (path, method, op) in &operations {
        out.push_str(&format!("\n### `{} {path}`\n\n", method.to_uppercase()));
        for key in ["summary", "description"] {
            if let Some(text) = op[key].as_str() {
                out.push_str(text.trim());
                out.push_str("\n\n");
            }
        }
        if let Some(tags) = op["tags"].as_array() {
            let tags: Vec<&str> = tags.iter().filter_map(Value::as_str).collect();
            out.push_str(&format!(
                "Tags: {}. Operation ID: `{}`.\n\n",
                tags.join(", "),
                op["operationId"].as_str().unwrap_or("")
            ));
        }
        if let Some(body) = op["requestBody"].as_object() {
            out.push_str("**Request body**");
            if body.get("required").and_then(Value::as_bool) == Some(true) {
                out.push_str(" (required)");
            }
            out.push(':');
            if let Some(content) = body.get("content").and_then(Value::as_object) {
                for (media, c) in content {
                    out.push_str(&format!(" `{media}` {}", type_of(&c["schema"])));
                }
            }
            if let Some(d) = body.get("description").and_then(Value::as_str) {
                out.push_str(&format!(". {}", d.trim()));
            }
            out.push_str("\n\n");
        }
        out.push_str("| status | meaning | body |\n|---|---|---|\n");
        if let Some(responses) = op["responses"].as_object() {
            for (status, response) in responses {
                let bodies: Vec<String> = response["content"]
                    .as_object()
                    .map(|c| {
                        c.iter()
                            .map(|(media, m)| format!("`{media}` {}", type_of(&m["schema"])))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push_str(&format!(
                    "| {status} | {} | {} |\n",
                    cell(response["description"].as_str().unwrap_or("")),
                    cell(&bodies.join("; "))
                ));
            }
        }
    }
    out.push_str("\n## Schemas\n");
    if let Some(schemas) = doc["components"]["schemas"].as_object() {
        for (name, schema) in schemas {
            out.push_str(&format!("\n### `{name}`\n\n"));
            if let Some(d) = schema["description"].as_str() {
                out.push_str(d.trim());
                out.push_str("\n\n");
            }
            let required: BTreeSet<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(properties) = schema["properties"].as_object() {
                out.push_str("| field | type | required | description |\n|---|---|---|---|\n");
                for (field, p) in properties {
                    let mut text = p["description"].as_str().unwrap_or("").to_owned();
                    let extra = constraints(p);
                    if !extra.is_empty() {
                        text.push_str(&format!(" ({extra})"));
                    }
                    out.push_str(&format!(
                        "| `{field}` | {} | {} | {} |\n",
                        cell(&type_of(p)),
                        if required.contains(field.as_str()) {
                            "yes"
                        } else {
                            "no"
                        },
                        cell(&text)
                    ));
                }
            } else if let Some(options) = schema["oneOf"].as_array() {
                out.push_str("One of:\n\n");
                for option in options {
                    let mut line = option["description"].as_str().map(cell).unwrap_or_default();
                    if let Some(props) = option["properties"].as_object() {
                        let fields: Vec<String> = props
                            .iter()
                            .map(|(f, p)| format!("`{f}`: {}", type_of(p)))
                            .collect();
                        if !line.is_empty() {
                            line.push(' ');
                        }
                        line.push_str(&format!("({})", fields.join(", ")));
                    } else {
                        if !line.is_empty() {
                            line.push_str(": ");
                        }
                        line.push_str(&type_of(option));
                    }
                    out.push_str(&format!("- {line}\n"));
                }
            } else {
                out.push_str(&format!("Type: {}.", type_of(schema)));
                let extra = constraints(schema);
                if !extra.is_empty() {
                    out.push_str(&format!(" {}.", extra[..1].to_uppercase() + &extra[1..]));
                }
                out.push('\n');
            }
        }
    }
    out
}
