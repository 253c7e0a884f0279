//! `modcycles`: fails when the modules of any crate in the workspace import each other in a
//! cycle. It is the cheap stand-in for `cargo modules dependencies --acyclic` that `make
//! modcycles` (part of `make test`) runs: it parses the sources with `syn` and needs no build of
//! the crates it checks.
//!
//! It owns the rule below and the allowlist file next to its manifest. It must not build, run or
//! change the code it reads.
//!
//! # The rule
//!
//! - Crates: every target of every workspace member: `src/lib.rs`, `src/main.rs`, `src/bin/*`,
//!   `examples/*`, `benches/*`, `tests/*` (one crate each, followed through `mod` declarations,
//!   inline modules included).
//! - Nodes: modules. The code of a module is its own items; a submodule's code is the submodule's.
//! - Edges: module A depends on module B (A ≠ B) when code in A names an item defined in B
//!   through a path that starts with `crate::`, `self::`, `super::` or the name of a submodule,
//!   in a `use` item or anywhere in an expression, type, pattern or macro argument that parses as
//!   expressions. A path is resolved to the module that defines the item, following `use`
//!   bindings (globs too), so naming `crate::Tag` that the crate root re-exports from `domain` is
//!   an edge to `domain`. Uses of a module's ancestors and descendants count like any other.
//! - Not edges: a `mod` declaration (containment), and a re-export (`pub use`, `pub(crate) use`,
//!   any `use` with a visibility): it names, it does not depend; whoever uses the re-exported
//!   name depends on the defining module.
//! - A cycle is a strongly connected component of two or more modules. Each is reported with its
//!   modules and, for every edge inside it, one place that makes the edge.
//!
//! Paths inside attributes, doc comments and macro bodies that are not expressions are not seen.
//!
//! # The allowlist
//!
//! `allowlist.txt` lists known cycles, one per line: `<crate root file>: <module> <module> ...`
//! (the crate root is `crate`). A found cycle passes when its modules are all in one listed line,
//! so a listed cycle may shrink but not grow, and any new cycle fails. A listed cycle no longer
//! found is mentioned, so the line can be removed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use syn::spanned::Spanned as _;
use syn::visit::{self, Visit};

/// A module's path from the crate root (empty for the root).
type ModPath = Vec<String>;

/// A path as written, in the module it is written in.
#[derive(Debug, Clone)]
struct Written {
    segments: Vec<String>,
    line: usize,
    text: String,
}

/// What one module holds.
#[derive(Debug, Default)]
struct Module {
    children: BTreeSet<String>,
    items: BTreeSet<String>,
    /// `use` bindings as written: name → path.
    bindings: BTreeMap<String, Vec<String>>,
    /// `use path::*` as written.
    globs: Vec<Vec<String>>,
    /// Paths that may be edges.
    refs: Vec<Written>,
}

/// One crate: its modules.
#[derive(Debug)]
struct Crate {
    root: String,
    modules: BTreeMap<ModPath, Module>,
}

/// One edge and the first place that makes it.
type Edges = BTreeMap<(ModPath, ModPath), String>;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("modcycles: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool, String> {
    let tool_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let workspace = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .or_else(|| tool_dir.parent()?.parent().map(Path::to_path_buf))
        .ok_or("cannot tell the workspace directory; pass it as the first argument")?;
    // The allowlist beside the checked workspace's tool (not the one this binary was built
    // from: a shared target directory may hold a build from another checkout).
    let allowlist = workspace.join("tools/modcycles/allowlist.txt");
    let (report, ok) = check(&workspace, &allowlist)?;
    std::io::stdout()
        .lock()
        .write_all(report.as_bytes())
        .map_err(|e| format!("cannot write the report: {e}"))?;
    Ok(ok)
}

/// The report, and whether every cycle found is allowlisted.
fn check(workspace: &Path, allowlist_path: &Path) -> Result<(String, bool), String> {
    let allowlist = read_allowlist(allowlist_path)?;

    let mut out = String::new();
    let mut ok = true;
    let mut seen_allowed: BTreeSet<usize> = BTreeSet::new();
    let mut crates = 0;
    for root in crate_roots(workspace)? {
        let krate = load_crate(workspace, &root)?;
        crates += 1;
        let edges = edges(&krate);
        for cycle in cycles(&krate, &edges) {
            let names: BTreeSet<String> = cycle.iter().map(|m| display(m)).collect();
            let allowed = allowlist
                .iter()
                .position(|(r, mods)| *r == krate.root && names.is_subset(mods));
            if let Some(i) = allowed {
                seen_allowed.insert(i);
            } else {
                ok = false;
            }
            let verdict = if allowed.is_some() {
                "allowed cycle"
            } else {
                "cycle"
            };
            let _ = writeln!(
                out,
                "{verdict} in {}: {}",
                krate.root,
                names.iter().cloned().collect::<Vec<_>>().join(", ")
            );
            for ((from, to), place) in &edges {
                if cycle.contains(from) && cycle.contains(to) {
                    let _ = writeln!(out, "  {} -> {}: {place}", display(from), display(to));
                }
            }
        }
    }
    for (i, (root, mods)) in allowlist.iter().enumerate() {
        if !seen_allowed.contains(&i) {
            let _ = writeln!(
                out,
                "note: the allowlisted cycle {root}: {} is gone; remove its line from {}",
                mods.iter().cloned().collect::<Vec<_>>().join(" "),
                allowlist_path.display()
            );
        }
    }
    if ok {
        let _ = writeln!(out, "modcycles: no new module cycle in {crates} crates");
    } else {
        let _ = writeln!(
            out,
            "modcycles: module cycles found (above). Break each by moving what both sides need \
             into its own module that imports neither; see the rule in tools/modcycles/src/main.rs"
        );
    }
    Ok((out, ok))
}

/// `<root>: <module> ...` lines; `#` starts a comment.
fn read_allowlist(path: &Path) -> Result<Vec<(String, BTreeSet<String>)>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut list = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let (root, mods) = line.split_once(':').ok_or_else(|| {
            format!(
                "{}: `{line}` is not `<crate root>: <module> <module> ...`",
                path.display()
            )
        })?;
        list.push((
            root.trim().to_owned(),
            mods.split_whitespace().map(str::to_owned).collect(),
        ));
    }
    Ok(list)
}

/// Every crate root of every workspace member, relative to the workspace.
fn crate_roots(workspace: &Path) -> Result<Vec<String>, String> {
    let manifest = workspace.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
    let value: toml::Value =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", manifest.display()))?;
    let members = value
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(toml::Value::as_array)
        .ok_or_else(|| format!("{} has no workspace.members", manifest.display()))?;
    let mut roots = Vec::new();
    for member in members.iter().filter_map(toml::Value::as_str) {
        let dir = workspace.join(member);
        for single in ["src/lib.rs", "src/main.rs"] {
            if dir.join(single).is_file() {
                roots.push(format!("{member}/{single}"));
            }
        }
        for sub in ["src/bin", "examples", "benches", "tests"] {
            let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
                continue;
            };
            let mut found: Vec<String> = entries
                .filter_map(Result::ok)
                .filter_map(|entry| {
                    let path = entry.path();
                    let name = entry.file_name().into_string().ok()?;
                    if path.is_dir() && path.join("main.rs").is_file() {
                        Some(format!("{member}/{sub}/{name}/main.rs"))
                    } else if name.ends_with(".rs") && path.is_file() {
                        Some(format!("{member}/{sub}/{name}"))
                    } else {
                        None
                    }
                })
                .collect();
            found.sort();
            roots.extend(found);
        }
    }
    Ok(roots)
}

fn load_crate(workspace: &Path, root: &str) -> Result<Crate, String> {
    let mut krate = Crate {
        root: root.to_owned(),
        modules: BTreeMap::new(),
    };
    let file = workspace.join(root);
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let parsed = parse(&file)?;
    load_module(&mut krate, workspace, &[], &file, &dir, &parsed.items)?;
    Ok(krate)
}

fn parse(file: &Path) -> Result<syn::File, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    syn::parse_file(&text).map_err(|e| format!("cannot parse {}: {e}", file.display()))
}

/// Records one module's items; `dir` is where its `mod x;` files are.
fn load_module(
    krate: &mut Crate,
    workspace: &Path,
    path: &[String],
    file: &Path,
    dir: &Path,
    items: &[syn::Item],
) -> Result<(), String> {
    let shown = file
        .strip_prefix(workspace)
        .unwrap_or(file)
        .display()
        .to_string();
    let mut module = Module::default();
    let mut submodules = Vec::new();
    for item in items {
        match item {
            syn::Item::Mod(m) => {
                let name = m.ident.to_string();
                module.children.insert(name.clone());
                submodules.push(m);
            }
            syn::Item::Use(u) => {
                let mut flat = Vec::new();
                flatten(&u.tree, Vec::new(), &mut flat);
                let line = u.span().start().line;
                for (segments, binding) in flat {
                    let shown_use = use_text(&segments, &binding);
                    match binding {
                        Binding::Name(name) => {
                            module.bindings.insert(name, segments.clone());
                        }
                        Binding::Glob => module.globs.push(segments.clone()),
                        Binding::Hidden => {}
                    }
                    if matches!(u.vis, syn::Visibility::Inherited) {
                        module.refs.push(Written {
                            text: format!("{shown}:{line}: use {shown_use}"),
                            segments,
                            line,
                        });
                    }
                }
            }
            other => {
                if let Some(name) = item_name(other) {
                    module.items.insert(name);
                }
                let mut collector = Collector {
                    file: &shown,
                    refs: &mut module.refs,
                };
                collector.visit_item(other);
            }
        }
    }
    krate.modules.insert(path.to_vec(), module);
    for m in submodules {
        let name = m.ident.to_string();
        let mut child = path.to_vec();
        child.push(name.clone());
        match &m.content {
            Some((_, inner)) => {
                load_module(krate, workspace, &child, file, &dir.join(&name), inner)?;
            }
            None => {
                let flat = dir.join(format!("{name}.rs"));
                let nested = dir.join(&name).join("mod.rs");
                let child_file = if flat.is_file() { flat } else { nested };
                let parsed = parse(&child_file)?;
                load_module(
                    krate,
                    workspace,
                    &child,
                    &child_file,
                    &dir.join(&name),
                    &parsed.items,
                )?;
            }
        }
    }
    Ok(())
}

fn item_name(item: &syn::Item) -> Option<String> {
    let ident = match item {
        syn::Item::Const(i) => &i.ident,
        syn::Item::Enum(i) => &i.ident,
        syn::Item::ExternCrate(i) => i.rename.as_ref().map_or(&i.ident, |(_, r)| r),
        syn::Item::Fn(i) => &i.sig.ident,
        syn::Item::Macro(i) => i.ident.as_ref()?,
        syn::Item::Static(i) => &i.ident,
        syn::Item::Struct(i) => &i.ident,
        syn::Item::Trait(i) => &i.ident,
        syn::Item::TraitAlias(i) => &i.ident,
        syn::Item::Type(i) => &i.ident,
        syn::Item::Union(i) => &i.ident,
        _ => return None,
    };
    Some(ident.to_string())
}

/// What a flattened `use` binds.
enum Binding {
    Name(String),
    Glob,
    /// `use x as _;`
    Hidden,
}

/// A flattened `use` as it would be written alone.
fn use_text(segments: &[String], binding: &Binding) -> String {
    let path = segments.join("::");
    match binding {
        Binding::Glob => format!("{path}::*"),
        Binding::Name(name) if segments.last() != Some(name) => format!("{path} as {name}"),
        Binding::Name(_) => path,
        Binding::Hidden => format!("{path} as _"),
    }
}

/// `use a::{b, c::{self, d as e}, f::*}` → `a::b` (b), `a::c` (c), `a::c::d` (e), `a::f` (glob).
fn flatten(tree: &syn::UseTree, prefix: Vec<String>, out: &mut Vec<(Vec<String>, Binding)>) {
    let with = |name: String| {
        let mut p = prefix.clone();
        p.push(name);
        p
    };
    match tree {
        syn::UseTree::Path(p) => flatten(&p.tree, with(p.ident.to_string()), out),
        syn::UseTree::Name(n) if n.ident == "self" => {
            let name = prefix.last().cloned().unwrap_or_default();
            out.push((prefix, Binding::Name(name)));
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            out.push((with(name.clone()), Binding::Name(name)));
        }
        syn::UseTree::Rename(r) => {
            let path = if r.ident == "self" {
                prefix.clone()
            } else {
                with(r.ident.to_string())
            };
            let binding = if r.rename == "_" {
                Binding::Hidden
            } else {
                Binding::Name(r.rename.to_string())
            };
            out.push((path, binding));
        }
        syn::UseTree::Glob(_) => out.push((prefix, Binding::Glob)),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                flatten(t, prefix.clone(), out);
            }
        }
    }
}

/// Collects the paths of two or more segments in an item, nested modules excepted (they are
/// modules of their own).
struct Collector<'a> {
    file: &'a str,
    refs: &'a mut Vec<Written>,
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item_mod(&mut self, _: &'ast syn::ItemMod) {}

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut flat = Vec::new();
        flatten(&u.tree, Vec::new(), &mut flat);
        let line = u.span().start().line;
        for (segments, binding) in flat {
            self.refs.push(Written {
                text: format!(
                    "{}:{line}: use {}",
                    self.file,
                    use_text(&segments, &binding)
                ),
                segments,
                line,
            });
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() && path.segments.len() >= 2 {
            let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
            let line = path.span().start().line;
            self.refs.push(Written {
                text: format!("{}:{line}: {}", self.file, segments.join("::")),
                segments,
                line,
            });
        }
        visit::visit_path(self, path);
    }

    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_attribute(&mut self, _: &'ast syn::Attribute) {}

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.visit_path(&mac.path);
        let parser = syn::punctuated::Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated;
        if let Ok(args) = syn::parse::Parser::parse2(parser, mac.tokens.clone()) {
            for arg in &args {
                self.visit_expr(arg);
            }
        }
    }
}

impl Crate {
    /// A written path as a path from the crate root, or `None` when it leaves the crate.
    fn absolute(&self, at: &[String], segments: &[String]) -> Option<Vec<String>> {
        let first = segments.first()?;
        match first.as_str() {
            "crate" => Some(segments[1..].to_vec()),
            "self" => Some([at, &segments[1..]].concat()),
            "super" => {
                let supers = segments.iter().take_while(|s| *s == "super").count();
                let keep = at.len().checked_sub(supers)?;
                Some([&at[..keep], &segments[supers..]].concat())
            }
            _ if self.modules.get(at)?.children.contains(first) => Some([at, segments].concat()),
            _ => None,
        }
    }

    /// The module that defines what an absolute path names.
    fn resolve(&self, absolute: &[String], depth: usize) -> Option<ModPath> {
        let mut current: ModPath = Vec::new();
        for (i, segment) in absolute.iter().enumerate() {
            let module = self.modules.get(&current)?;
            if module.children.contains(segment) {
                current.push(segment.clone());
                continue;
            }
            if module.items.contains(segment) || depth > 16 {
                return Some(current);
            }
            if let Some(target) = module.bindings.get(segment) {
                let target = self.absolute(&current, target)?;
                return self.resolve(&[&target[..], &absolute[i + 1..]].concat(), depth + 1);
            }
            for glob in &module.globs {
                let Some(target) = self.absolute(&current, glob) else {
                    continue;
                };
                let Some(source) = self.resolve(&target, depth + 1) else {
                    continue;
                };
                if self.modules.get(&source).is_some_and(|m| {
                    m.children.contains(segment)
                        || m.items.contains(segment)
                        || m.bindings.contains_key(segment)
                }) {
                    let mut next = source;
                    next.extend_from_slice(&absolute[i..]);
                    return self.resolve(&next, depth + 1);
                }
            }
            return Some(current);
        }
        Some(current)
    }
}

fn edges(krate: &Crate) -> Edges {
    let mut edges = Edges::new();
    for (from, module) in &krate.modules {
        let mut refs = module.refs.clone();
        refs.sort_by_key(|r| r.line);
        for written in refs {
            let Some(absolute) = krate.absolute(from, &written.segments) else {
                continue;
            };
            let Some(to) = krate.resolve(&absolute, 0) else {
                continue;
            };
            if &to != from {
                edges.entry((from.clone(), to)).or_insert(written.text);
            }
        }
    }
    edges
}

/// Strongly connected components of two or more modules (Tarjan), each sorted.
fn cycles(krate: &Crate, edges: &Edges) -> Vec<BTreeSet<ModPath>> {
    struct State<'a> {
        next: BTreeMap<&'a ModPath, Vec<&'a ModPath>>,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on_stack: BTreeSet<&'a ModPath>,
        found: Vec<BTreeSet<ModPath>>,
    }
    fn connect<'a>(s: &mut State<'a>, v: &'a ModPath) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.next.get(v).cloned().unwrap_or_default() {
            if !s.index.contains_key(w) {
                connect(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.insert(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        next: BTreeMap::new(),
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for (from, to) in edges.keys() {
        state.next.entry(from).or_default().push(to);
    }
    for v in krate.modules.keys() {
        if !state.index.contains_key(v) {
            connect(&mut state, v);
        }
    }
    state.found.sort();
    state.found
}

fn display(path: &[String]) -> String {
    if path.is_empty() {
        "crate".to_owned()
    } else {
        path.join("::")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `files` (path, text) into a temporary directory and loads the crate at `src/lib.rs`.
    fn crate_of(files: &[(&str, &str)]) -> (tempfile::TempDir, Crate) {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let krate = load_crate(dir.path(), "src/lib.rs").unwrap();
        (dir, krate)
    }

    fn found(krate: &Crate) -> Vec<Vec<String>> {
        cycles(krate, &edges(krate))
            .into_iter()
            .map(|c| c.iter().map(|m| display(m)).collect())
            .collect()
    }

    #[test]
    fn siblings_that_use_each_other_are_a_cycle_and_a_one_way_use_is_not() {
        let (_dir, krate) = crate_of(&[
            ("src/lib.rs", "mod a; mod b; mod c;"),
            ("src/a.rs", "use crate::b::Thing;\npub fn f() {}"),
            // An expression path, not a `use`, closes the cycle.
            ("src/b.rs", "pub struct Thing;\nfn g() { crate::a::f(); }"),
            ("src/c.rs", "use crate::a::f;\nuse crate::b::Thing;"),
        ]);
        assert_eq!(found(&krate), vec![vec!["a".to_owned(), "b".to_owned()]]);

        let (_dir, krate) = crate_of(&[
            ("src/lib.rs", "mod a; mod b;"),
            ("src/a.rs", "use crate::b::Thing;\npub fn f() {}"),
            ("src/b.rs", "pub struct Thing;"),
        ]);
        assert!(found(&krate).is_empty());
    }

    #[test]
    fn a_re_export_leads_to_the_defining_module_and_is_no_edge_itself() {
        let (_dir, krate) = crate_of(&[
            (
                "src/lib.rs",
                "mod a; mod b;\npub use a::Thing;\npub use b::Other;",
            ),
            ("src/a.rs", "pub struct Thing;\nfn f(_: crate::Other) {}"),
            ("src/b.rs", "pub struct Other;\nuse crate::Thing;"),
        ]);
        assert_eq!(found(&krate), vec![vec!["a".to_owned(), "b".to_owned()]]);

        let (_dir, krate) = crate_of(&[
            (
                "src/lib.rs",
                "mod a; mod b;\npub use a::Thing;\npub use b::Other;",
            ),
            ("src/a.rs", "pub struct Thing;"),
            ("src/b.rs", "pub struct Other;\nuse crate::Thing;"),
        ]);
        assert!(found(&krate).is_empty());
    }

    #[test]
    fn a_parent_and_child_that_use_each_other_are_a_cycle_but_a_test_module_is_not() {
        let (_dir, krate) = crate_of(&[
            ("src/lib.rs", "mod cmd;"),
            (
                "src/cmd/mod.rs",
                "mod login;\npub fn run() { login::run(); }\nfn helper() {}",
            ),
            ("src/cmd/login.rs", "use super::helper;\npub fn run() {}"),
        ]);
        assert_eq!(
            found(&krate),
            vec![vec!["cmd".to_owned(), "cmd::login".to_owned()]]
        );

        let (_dir, krate) = crate_of(&[
            ("src/lib.rs", "mod cmd;"),
            (
                "src/cmd/mod.rs",
                "mod login;\npub fn run() { login::run(); }",
            ),
            (
                "src/cmd/login.rs",
                "pub fn run() {}\n#[cfg(test)]\nmod tests {\n    use super::*;\n    fn t() { run(); }\n}",
            ),
        ]);
        assert!(found(&krate).is_empty());
    }

    #[test]
    fn paths_in_macro_arguments_and_globs_count() {
        let (_dir, krate) = crate_of(&[
            ("src/lib.rs", "mod a; mod b;"),
            (
                "src/a.rs",
                "use crate::b::*;\npub const X: u8 = 1;\nfn f() { let _ = Y; }",
            ),
            (
                "src/b.rs",
                "pub const Y: u8 = 2;\nfn g() { assert_eq!(crate::a::X, 1); }",
            ),
        ]);
        assert_eq!(found(&krate), vec![vec!["a".to_owned(), "b".to_owned()]]);
    }

    #[test]
    fn a_cycle_fails_the_check_unless_allowlisted_and_a_gone_one_is_mentioned() {
        let dir = tempfile::tempdir().unwrap();
        let write = |path: &str, text: &str| {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write("Cargo.toml", "[workspace]\nmembers = [\"x\"]\n");
        write("x/src/lib.rs", "mod a; mod b;");
        write("x/src/a.rs", "use crate::b::B;\npub struct A;");
        write("x/src/b.rs", "use crate::a::A;\npub struct B;");
        let allowlist = dir.path().join("allowlist.txt");

        let (report, ok) = check(dir.path(), &allowlist).unwrap();
        assert!(!ok, "{report}");
        assert!(report.contains("cycle in x/src/lib.rs: a, b"), "{report}");
        assert!(
            report.contains("a -> b: x/src/a.rs:1: use crate::b::B"),
            "{report}"
        );

        std::fs::write(&allowlist, "x/src/lib.rs: a b\n").unwrap();
        let (report, ok) = check(dir.path(), &allowlist).unwrap();
        assert!(ok, "{report}");
        assert!(
            report.contains("allowed cycle in x/src/lib.rs: a, b"),
            "{report}"
        );

        write("x/src/b.rs", "pub struct B;");
        let (report, ok) = check(dir.path(), &allowlist).unwrap();
        assert!(ok, "{report}");
        assert!(report.contains("is gone; remove its line"), "{report}");
    }

    #[test]
    fn an_allowlisted_cycle_may_shrink_but_not_grow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allowlist.txt");
        std::fs::write(&path, "# known\nx/src/lib.rs: a b c  # until split\n").unwrap();
        let list = read_allowlist(&path).unwrap();
        let set = |s: &[&str]| s.iter().map(|m| (*m).to_owned()).collect::<BTreeSet<_>>();
        assert_eq!(
            list,
            vec![("x/src/lib.rs".to_owned(), set(&["a", "b", "c"]))]
        );
        assert!(set(&["a", "b"]).is_subset(&list[0].1));
        assert!(!set(&["a", "d"]).is_subset(&list[0].1));
        std::fs::write(&path, "x/src/lib.rs a b\n").unwrap();
        assert!(read_allowlist(&path).is_err());
    }
}
