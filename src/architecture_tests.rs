//! Checks of the crate's shape that the compiler cannot make: the top-level modules form no import
//! circle, and the doors (REST, MCP, CLI, dashboards) never touch SQLite, Tantivy or control-plane SQL.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("readable dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)]` modules.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("source is text");
    let cut = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..cut]
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("//") {
                ""
            } else {
                l.split(" //").next().unwrap_or("")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn top_module(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_string_lossy().into_owned();
    let name = first.trim_end_matches(".rs").to_string();
    (!matches!(name.as_str(), "lib" | "main" | "architecture_tests")).then_some(name)
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(f)).collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = modules.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
    let prefix = ["crate", "::"].concat();
    for f in &files {
        let Some(from) = top_module(f) else { continue };
        let code = code_of(f);
        let mut rest = code.as_str();
        while let Some(i) = rest.find(&prefix) {
            rest = &rest[i + prefix.len()..];
            let mut names = Vec::new();
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                names.extend(group[..end].split(',').map(|s| s.trim().split("::").next().unwrap_or("").to_string()));
            } else {
                names.push(rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect());
            }
            for n in names {
                if n != from && modules.contains(&n) {
                    g.get_mut(&from).expect("known").insert(n);
                }
            }
        }
    }
    g
}

fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(n: &str, g: &BTreeMap<String, BTreeSet<String>>, state: &mut BTreeMap<String, u8>, stack: &mut Vec<String>) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == m).expect("on the stack");
                    let mut c = stack[at..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_module_graph_has_no_circles() {
    let g = graph();
    assert!(g.contains_key("services") && g["api"].contains("services"), "the graph was read: {g:?}");
    if let Some(c) = find_cycle(&g) {
        panic!("import circle between top-level modules: {}", c.join(" -> "));
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.insert("a".into(), ["b".to_string()].into());
    g.insert("b".into(), ["c".to_string()].into());
    g.insert("c".into(), ["a".to_string()].into());
    assert_eq!(find_cycle(&g), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    g.get_mut("c").expect("c").clear();
    assert_eq!(find_cycle(&g), None);
}

/// Doors parse, call a service and shape the answer: no storage access of their own.
#[test]
fn doors_never_touch_storage() {
    let forbidden = [
        "rusqlite",
        "tantivy",
        "with_reader(",
        "with_writer(",
        "control.run(",
        "control.write(",
        "run_sync(",
        "write_sync(",
        ".blocking(",
        "registry.",
        "cap_for_",
        "state.control",
        ".control()",
    ];
    let mut doors = Vec::new();
    rust_files(&src().join("api"), &mut doors);
    rust_files(&src().join("dashboard"), &mut doors);
    doors.push(src().join("cli.rs"));
    doors.push(src().join("transfer.rs"));
    let mut found = Vec::new();
    for f in &doors {
        let code = code_of(f);
        for word in forbidden {
            if code.contains(word) {
                found.push(format!("{} uses {word}", f.strip_prefix(src()).unwrap_or(f).display()));
            }
        }
    }
    assert!(found.is_empty(), "doors must go through crate::services:\n{}", found.join("\n"));
}

/// The local operator's proof (which can open any tenant) is minted only by the CLI's doors.
#[test]
fn only_the_cli_mints_the_local_operator_proof() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let allowed = ["cli.rs", "transfer.rs", "auth.rs"];
    let needle = ["local_operator", "("].concat();
    let minted: Vec<String> = files
        .iter()
        .filter(|f| !allowed.iter().any(|a| f.ends_with(a)))
        .filter(|f| code_of(f).contains(&needle))
        .map(|f| f.strip_prefix(src()).unwrap_or(f).display().to_string())
        .collect();
    assert!(minted.is_empty(), "the local operator's proof is minted outside the CLI: {minted:?}");
}
