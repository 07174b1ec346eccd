//! The source's shape: no import cycle between files of different modules.
//!
//! Each file under `src/` is a node; a `crate::…` path in its code (not its comments, not its
//! `#[cfg(test)] mod tests`) is an edge to the file that path names, as are `super::x` paths
//! to a sibling and `child::x` paths to a child module. Files of one directory (report/mod.rs,
//! report/fleet.rs and report/members.rs) may use each other; a cycle through files of different modules (`config` → `callback/guard`
//! → `config`, as there once was) fails, naming the files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module paths (`config`, `report/fleet`; `crate` for lib.rs and main.rs) → source text.
fn sources() -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path
                .strip_prefix(&root)
                .expect("under src/")
                .with_extension("")
                .to_string_lossy()
                .replace('\\', "/");
            let module = match rel.as_str() {
                "lib" | "main" => "crate".to_string(),
                _ => rel.strip_suffix("/mod").unwrap_or(&rel).to_string(),
            };
            let text = std::fs::read_to_string(&path).expect("a source file is readable");
            files.insert(module, code_only(&text));
        }
    }
    files
}

/// The text without comments and without the unit tests' module.
fn code_only(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `::`-separated paths that follow `crate::` in `code`, groups (`{a, b::c}`) expanded.
fn crate_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `my_crate::`
        }
        expand("", rest, &mut paths);
    }
    paths
}

/// Pushes the path(s) at the start of `text` onto `out`, each prefixed with `prefix`.
fn expand(prefix: &str, text: &str, out: &mut Vec<String>) {
    let ident_end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    let head = &text[..ident_end];
    let full = format!("{prefix}{head}");
    if text[ident_end..].starts_with('{') && head.ends_with("::") {
        let group = &text[ident_end + 1..];
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    expand(&full, group[start..i].trim(), out);
                    return;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&full, group[start..i].trim(), out);
                    start = i + 1;
                }
                _ => {}
            }
        }
    } else {
        out.push(full.trim_end_matches(':').to_string());
    }
}

/// The module file a path names: its longest prefix that is a module.
fn resolve(modules: &BTreeSet<String>, path: &str) -> String {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("/"))
        .find(|candidate| modules.contains(candidate))
        .unwrap_or_else(|| "crate".to_string())
}

fn parent(module: &str) -> &str {
    module.rsplit_once('/').map_or("crate", |(dir, _)| dir)
}

/// The directory a module's file is in, as a module: `report` for report/mod.rs and
/// report/fleet.rs, `crate` for config.rs.
fn directory<'m>(modules: &BTreeSet<String>, module: &'m str) -> &'m str {
    let prefix = format!("{module}/");
    if modules.iter().any(|m| m.starts_with(&prefix)) {
        module
    } else {
        parent(module)
    }
}

/// Whether `code` has a path starting with `name::` (not the tail of a longer path).
fn names(code: &str, name: &str) -> bool {
    let needle = format!("{name}::");
    code.match_indices(&needle).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
    })
}

/// Module → the modules its code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let files = sources();
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    files
        .iter()
        .map(|(module, code)| {
            let mut uses: BTreeSet<String> = crate_paths(code)
                .iter()
                .map(|path| resolve(&modules, path))
                .collect();
            let mut rest = code.as_str();
            while let Some(at) = rest.find("super::") {
                rest = &rest[at + "super::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let dir = parent(module);
                let sibling = if dir == "crate" {
                    name
                } else {
                    format!("{dir}/{name}")
                };
                uses.insert(if modules.contains(&sibling) {
                    sibling
                } else {
                    dir.to_string()
                });
            }
            // A child module named by its own name (`guard::pin` in callback/mod.rs).
            for child in modules.iter().filter(|m| parent(m) == module.as_str()) {
                let name = child.rsplit('/').next().expect("a name");
                if names(code, name) {
                    uses.insert(child.clone());
                }
            }
            uses.remove(module);
            uses.remove("crate");
            (module.clone(), uses)
        })
        .collect()
}

/// The strongly connected components of more than one module (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let at = self
                    .stack
                    .iter()
                    .rposition(|&m| m == v)
                    .expect("on the stack");
                let component: Vec<String> = self.stack.drain(at..).map(str::to_string).collect();
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn no_import_cycle_crosses_a_module() {
    let graph = graph();
    assert!(graph.contains_key("config") && graph.contains_key("callback/guard"));
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    let crossing: Vec<Vec<String>> = cycles(&graph)
        .into_iter()
        .filter(|component| {
            let first = directory(&modules, &component[0]);
            component.iter().any(|m| directory(&modules, m) != first)
        })
        .collect();
    assert!(
        crossing.is_empty(),
        "import cycles across modules: {crossing:?}\n(edges: {graph:#?})"
    );
}

#[test]
fn the_checker_sees_paths_and_cycles() {
    let mut paths = crate_paths(
        "use crate::callback::{self, guard::{Guard, HostList}};\nlet x = crate::config::X; my_crate::no",
    );
    paths.sort();
    assert_eq!(
        paths,
        [
            "callback::guard::Guard",
            "callback::guard::HostList",
            "callback::self",
            "config::X"
        ]
    );
    let modules: BTreeSet<String> = ["callback", "callback/guard", "config"]
        .map(String::from)
        .into();
    assert_eq!(
        resolve(&modules, "callback::guard::Guard"),
        "callback/guard"
    );
    assert_eq!(resolve(&modules, "callback::self"), "callback");
    assert_eq!(resolve(&modules, "Shared"), "crate");
    let edges = |pairs: &[(&str, &str)]| {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in pairs {
            graph
                .entry(from.to_string())
                .or_default()
                .insert(to.to_string());
            graph.entry(to.to_string()).or_default();
        }
        graph
    };
    // The cycle this test was written against, and a chain without one.
    let old = edges(&[("config", "callback/guard"), ("callback/guard", "config")]);
    assert_eq!(cycles(&old).len(), 1);
    let chain = edges(&[("config", "lists"), ("callback/guard", "lists")]);
    assert!(cycles(&chain).is_empty());
    assert!(names("use guard::pin;", "guard") && !names("x::guard::pin", "guard"));
    let tree: BTreeSet<String> = ["report", "report/fleet", "config"]
        .map(String::from)
        .into();
    assert_eq!(directory(&tree, "report"), "report");
    assert_eq!(directory(&tree, "report/fleet"), "report");
    assert_eq!(directory(&tree, "config"), "crate");
    assert!(code_only("// crate::config\nx\n#[cfg(test)]\nmod tests { crate::y }").trim() == "x");
}
