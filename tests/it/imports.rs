//! The shape of `src/` (ARCHITECTURE.md's invariants): no file imports another that
//! imports it back, directly or around a longer cycle, and the pure core imports nothing but
//! the pure core. Read from the sources, as a reader of the code sees them.
//!
//! An import is any path through `crate::` or `super::` (in `use` or inline, including
//! `{...}` groups), or through a child module the file declares with `mod x;`. Declaring a
//! module is not importing it. `#[cfg(test)]` code and `src/bin/` are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Files that do no IO and need no runtime (sans-IO decoding, validation, OT, tables). They
/// may import only each other.
const PURE_CORE: &[&str] = &[
    "auth.rs",
    "conn.rs",
    "demo.rs",
    "docname.rs",
    "hocuspocus.rs",
    "document/events.rs",
    "document/parking.rs",
    "limits.rs",
    "locks.rs",
    "metrics.rs",
    "ot/delta.rs",
    "ot/error.rs",
    "ot/mod.rs",
    "ot/presence.rs",
    "ot/sequencer.rs",
    "ot/sharedb.rs",
    "ot/ytext.rs",
    "presence.rs",
    "protocol.rs",
    "render.rs",
    "validate.rs",
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "bin") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `document/actor/mod.rs` → `["document", "actor"]`; `lib.rs` → `[]`.
fn module_path(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel.trim_end_matches(".rs").split('/').map(String::from).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// The code a reader sees: comments and the test module cut.
fn code(source: &str) -> String {
    let source = source.split("#[cfg(test)]").next().unwrap_or_default();
    source.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The segments after `prefix::` at `at`, and the first segment of each `{...}` entry.
fn paths_after(code: &str, at: usize) -> Vec<Vec<String>> {
    let rest = &code[at..];
    let mut segments = Vec::new();
    let mut chars = rest;
    loop {
        let ident: String = chars.chars().take_while(|c| is_ident(*c)).collect();
        if ident.is_empty() {
            break;
        }
        chars = &chars[ident.len()..];
        segments.push(ident);
        match chars.strip_prefix("::") {
            Some(next) => chars = next,
            None => return vec![segments],
        }
    }
    if let Some(group) = chars.strip_prefix('{') {
        let end = group.find('}').unwrap_or(group.len());
        let mut out: Vec<Vec<String>> = group[..end]
            .split(',')
            .map(|item| item.trim().split("::").next().unwrap_or_default().trim().to_string())
            .filter(|first| !first.is_empty() && first != "self" && first.chars().all(is_ident))
            .map(|first| segments.iter().cloned().chain(std::iter::once(first)).collect())
            .collect();
        out.push(segments);
        return out;
    }
    vec![segments]
}

fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let root = src_dir();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let rel = |p: &Path| p.strip_prefix(&root).expect("under src").to_string_lossy().replace('\\', "/");
    let modules: BTreeMap<Vec<String>, String> = files.iter().map(|p| (module_path(&rel(p)), rel(p))).collect();
    let resolve =
        |path: &[String]| -> Option<String> { (1..=path.len()).rev().find_map(|n| modules.get(&path[..n]).cloned()) };
    let mut graph = BTreeMap::new();
    for file in &files {
        let me = rel(file);
        let here = module_path(&me);
        let code = code(&std::fs::read_to_string(file).expect("read source"));
        let mut found = BTreeSet::new();
        let children: Vec<String> = code
            .lines()
            .filter_map(|l| {
                let l = l.trim().trim_start_matches("pub ").trim_start_matches("pub(crate) ");
                l.strip_prefix("mod ").and_then(|m| m.strip_suffix(';')).map(String::from)
            })
            .collect();
        let mut starts: Vec<(usize, Vec<String>)> = Vec::new();
        for (prefix, base) in [("crate::", Vec::new()), ("super::", here[..here.len().saturating_sub(1)].to_vec())] {
            for (at, _) in code.match_indices(prefix) {
                if code[..at].chars().next_back().is_some_and(is_ident) {
                    continue;
                }
                starts.push((at + prefix.len(), base.clone()));
            }
        }
        if me != "lib.rs" && me != "main.rs" {
            for child in &children {
                let pattern = format!("{child}::");
                for (at, _) in code.match_indices(&pattern) {
                    let before = code[..at].chars().next_back();
                    if before.is_some_and(|c| is_ident(c) || c == ':') {
                        continue;
                    }
                    starts.push((at, here.clone()));
                }
            }
        }
        for (at, base) in starts {
            for path in paths_after(&code, at) {
                let full: Vec<String> = base.iter().cloned().chain(path).collect();
                if let Some(target) = resolve(&full).filter(|t| *t != me) {
                    found.insert(target);
                }
            }
        }
        graph.insert(me, found);
    }
    graph
}

/// Every import cycle, each as the files around it.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    fn walk(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(i) = stack.iter().position(|n| n == node) {
            found.push(stack[i..].to_vec());
            return;
        }
        if done.contains(node) {
            return;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            walk(next, graph, stack, done, found);
        }
        stack.pop();
        done.insert(node.to_string());
    }
    let (mut done, mut found) = (BTreeSet::new(), Vec::new());
    for node in graph.keys() {
        walk(node, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

#[test]
fn the_import_reader_sees_the_imports_it_must() {
    // The checks below are only as good as the reader: it must see the kinds of import the
    // code uses (a `crate::` group, a `super::` path, a declared child module).
    let graph = imports();
    let edges = |f: &str| graph.get(f).cloned().unwrap_or_default();
    assert!(edges("document/registry.rs").contains("document/actor/mod.rs"), "{:?}", edges("document/registry.rs"));
    assert!(edges("document/actor/ot.rs").contains("document/actor/mod.rs"));
    assert!(edges("document/mod.rs").contains("document/registry.rs"));
    assert!(edges("protocol.rs").contains("validate.rs"));
    assert!(graph.len() > 30, "read only {} files", graph.len());
    let looped = BTreeMap::from([
        ("a.rs".to_string(), BTreeSet::from(["b.rs".to_string()])),
        ("b.rs".to_string(), BTreeSet::from(["c.rs".to_string()])),
        ("c.rs".to_string(), BTreeSet::from(["a.rs".to_string()])),
    ]);
    assert_eq!(cycles(&looped).len(), 1);
}

#[test]
fn no_file_imports_one_that_imports_it_back() {
    let graph = imports();
    let found = cycles(&graph);
    assert!(found.is_empty(), "import cycles in src/: {found:#?}");
}

#[test]
fn the_pure_core_imports_only_the_pure_core() {
    let graph = imports();
    let mut upward = Vec::new();
    for file in PURE_CORE {
        let targets = graph.get(*file).unwrap_or_else(|| panic!("{file} is listed as pure core but missing"));
        for target in targets.iter().filter(|t| !PURE_CORE.contains(&t.as_str())) {
            upward.push(format!("{file} -> {target}"));
        }
    }
    assert!(upward.is_empty(), "pure core files importing IO layers: {upward:#?}");
}
