//! The module-graph check: no import cycle between the top-level modules of `src/`, no arrow the
//! architecture forbids (`cache` knows nothing of `http`, `origin`, `admin`, `proxy`), and no
//! helper crate (storage, the harness, `crates/*`) that depends on the edge crate.
//!
//! An arrow `a -> b` is any `crate::b` path in a file of `a` (`src/a.rs` or `src/a/**`): `use
//! crate::b::..`, each head of `use crate::{b::.., c}` (braces may span lines) and inline
//! `crate::b::f()`. Comments, string and char literals are blanked first. `#[cfg(test)]` code counts
//! too: a unit test that imports a module ties the two together as much as the code does, and one
//! rule is simpler than a test-only exception. `crate::Name` for a name `lib.rs` re-exports (`pub use
//! edge::Edge`) is an arrow to the module it comes from. `lib.rs` and `main.rs` are the roots that
//! wire everything together, so they stay out of the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Arrows that must not exist even without a cycle: `cache` decides and does no I/O.
const FORBIDDEN: &[(&str, &str)] = &[
    ("cache", "http"),
    ("cache", "origin"),
    ("cache", "admin"),
    ("cache", "proxy"),
];

/// `src` with comments, string and char literals replaced by spaces; newlines kept so that line
/// numbers still match.
fn blank(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    // Replaces c[from..to] with spaces (keeping newlines).
    let skip = |out: &mut String, from: usize, to: usize| {
        out.extend(
            c[from..to.min(c.len())]
                .iter()
                .map(|&ch| if ch == '\n' { '\n' } else { ' ' }),
        );
    };
    let mut i = 0;
    while i < c.len() {
        let at = |k: usize| c.get(k).copied().unwrap_or('\0');
        let start = i;
        if c[i] == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && at(i + 1) == '*' {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c[i] == 'r' && (i == 0 || !ident(c[i - 1])) && matches!(at(i + 1), '#' | '"') {
            // Raw string r#"..."#: ends at a quote followed by as many hashes.
            let mut j = i + 1;
            while at(j) == '#' {
                j += 1;
            }
            if at(j) != '"' {
                out.push(c[i]); // an identifier starting with r, or r#ident
                i += 1;
                continue;
            }
            let hashes = j - i - 1;
            i = j + 1;
            while i < c.len() && !(c[i] == '"' && (1..=hashes).all(|h| at(i + h) == '#')) {
                i += 1;
            }
            i += 1 + hashes;
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c[i] == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
            // A char literal; a lifetime ('a) has no closing quote right after its first char.
            // Skip past the escaped char of '\'' before looking for the closing quote.
            i += if at(i + 1) == '\\' { 3 } else { 2 };
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else {
            out.push(c[i]);
            i += 1;
            continue;
        }
        skip(&mut out, start, i);
    }
    out
}

/// The first segment after each `crate::` in blanked code, with its 1-based line; every head of a
/// `crate::{..}` group counts (`crate::{a::B, c::{d, e}}` -> `a`, `c`).
fn crate_refs(code: &str) -> Vec<(String, usize)> {
    let b = code.as_bytes();
    let ident = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let line_of = |pos: usize| 1 + b[..pos].iter().filter(|&&x| x == b'\n').count();
    let ident_at = |mut k: usize| {
        while k < b.len() && b[k].is_ascii_whitespace() {
            k += 1;
        }
        let s = k;
        while k < b.len() && ident(b[k]) {
            k += 1;
        }
        (s, &code[s..k])
    };
    let mut refs = Vec::new();
    for (pos, _) in code.match_indices("crate::") {
        // `$crate::` is a macro's own crate; `foo_crate::` is another name.
        if pos > 0 && (ident(b[pos - 1]) || b[pos - 1] == b'$') {
            continue;
        }
        let mut k = pos + "crate::".len();
        while k < b.len() && b[k].is_ascii_whitespace() {
            k += 1;
        }
        if b.get(k) != Some(&b'{') {
            let (s, name) = ident_at(k);
            if !name.is_empty() {
                refs.push((name.to_string(), line_of(s)));
            }
            continue;
        }
        // A group: take the identifier that opens each depth-1 item.
        let (mut depth, mut item_start) = (0usize, true);
        while k < b.len() {
            match b[k] {
                b'{' => depth += 1,
                b'}' => depth -= 1,
                b',' if depth == 1 => item_start = true,
                x if depth == 1 && item_start && ident(x) => {
                    let (s, name) = ident_at(k);
                    if name != "self" {
                        refs.push((name.to_string(), line_of(s)));
                    }
                    item_start = false;
                    k = s + name.len();
                    continue;
                }
                _ => {}
            }
            if depth == 0 {
                break;
            }
            k += 1;
        }
    }
    refs
}

/// The line of a non-dev dependency on the edge crate (`vedge`) in a Cargo.toml, if any.
fn vedge_dependency(toml: &str) -> Option<usize> {
    let mut in_deps = false;
    for (n, line) in toml.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_end_matches(']').trim();
            if header.ends_with("dependencies.vedge") && !header.contains("dev-dependencies") {
                return Some(n + 1);
            }
            in_deps = header.ends_with("dependencies") && !header.ends_with("dev-dependencies");
        } else if in_deps {
            let key = line.split('=').next().unwrap_or("").trim();
            let renamed = line.replace(' ', "").contains("package=\"vedge\"");
            if key == "vedge" || key.starts_with("vedge.") || renamed {
                return Some(n + 1);
            }
        }
    }
    None
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Every arrow between top-level modules, with the first `file:line` that makes it.
fn module_graph(root: &Path) -> BTreeMap<(String, String), String> {
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let module_of = |p: &Path| {
        let first = p.strip_prefix(&src).ok()?.components().next()?;
        let name = first
            .as_os_str()
            .to_str()?
            .trim_end_matches(".rs")
            .to_string();
        (name != "lib" && name != "main").then_some(name)
    };
    let modules: BTreeSet<String> = files.iter().filter_map(|p| module_of(p)).collect();
    // `pub use edge::Edge;` in lib.rs: `crate::Edge` is an arrow to `edge`.
    let lib = blank(&std::fs::read_to_string(src.join("lib.rs")).expect("read lib.rs"));
    let reexports: BTreeMap<String, String> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub use ")?.strip_suffix(';'))
        .filter_map(|path| {
            let (head, rest) = path.split_once("::")?;
            let name = rest.rsplit("::").next()?.rsplit(" as ").next()?;
            Some((name.trim().to_string(), head.trim().to_string()))
        })
        .collect();
    let mut edges = BTreeMap::new();
    for file in &files {
        let Some(from) = module_of(file) else {
            continue;
        };
        let code = blank(&std::fs::read_to_string(file).expect("read source"));
        for (name, line) in crate_refs(&code) {
            let to = if modules.contains(&name) {
                Some(&name)
            } else {
                reexports.get(&name)
            };
            if let Some(to) = to.filter(|to| **to != from) {
                let rel = file.strip_prefix(root).unwrap_or(file).display();
                edges
                    .entry((from.clone(), to.clone()))
                    .or_insert_with(|| format!("{rel}:{line}"));
            }
        }
    }
    edges
}

/// The groups of modules that reach one another (strongly connected components of size > 1).
fn cycles(edges: &BTreeMap<(String, String), String>) -> Vec<BTreeSet<String>> {
    let nodes: BTreeSet<&String> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
    let reach = |from: &String| {
        let mut seen = BTreeSet::from([from.clone()]);
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for (_, b) in edges.keys().filter(|(a, _)| *a == n) {
                if seen.insert(b.clone()) {
                    todo.push(b.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> =
        nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut sccs = BTreeSet::new();
    for n in &nodes {
        let scc: BTreeSet<String> = reached[n]
            .iter()
            .filter(|m| reached[m].contains(*n))
            .cloned()
            .collect();
        if scc.len() > 1 {
            sccs.insert(scc);
        }
    }
    sccs.into_iter().collect()
}

#[test]
fn no_cycles_and_no_forbidden_arrows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let edges = module_graph(root);
    let mut report = String::new();
    for scc in cycles(&edges) {
        let names: Vec<&str> = scc.iter().map(String::as_str).collect();
        let _ = writeln!(report, "cycle between {{{}}}:", names.join(", "));
        for ((a, b), at) in edges
            .iter()
            .filter(|((a, b), _)| scc.contains(a) && scc.contains(b))
        {
            let _ = writeln!(report, "  {a} -> {b}  ({at})");
        }
        // The two-way pairs are the shortest cycles, usually the first to break.
        let pairs: Vec<String> = (edges.keys())
            .filter(|(a, b)| {
                a < b && scc.contains(a) && edges.contains_key(&(b.clone(), a.clone()))
            })
            .map(|(a, b)| format!("{a} <-> {b}"))
            .collect();
        if !pairs.is_empty() {
            let _ = writeln!(report, "  two-way: {}", pairs.join(", "));
        }
    }
    for (a, b) in FORBIDDEN {
        if let Some(at) = edges.get(&(a.to_string(), b.to_string())) {
            let _ = writeln!(report, "forbidden arrow {a} -> {b}  ({at})");
        }
    }
    let mut crates = vec![root.join("storage"), root.join("benches/harness")];
    if let Ok(dir) = std::fs::read_dir(root.join("crates")) {
        crates.extend(dir.filter_map(|e| Some(e.ok()?.path())));
    }
    for manifest in crates
        .iter()
        .map(|c| c.join("Cargo.toml"))
        .filter(|m| m.exists())
    {
        let toml = std::fs::read_to_string(&manifest).expect("read Cargo.toml");
        if let Some(line) = vedge_dependency(&toml) {
            let rel = manifest.strip_prefix(root).unwrap_or(&manifest).display();
            let _ = writeln!(report, "forbidden dependency on vedge ({rel}:{line})");
        }
    }
    assert!(
        report.is_empty(),
        "module graph of src/ breaks the layering:\n{report}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(src: &str) -> Vec<(String, usize)> {
        crate_refs(&blank(src))
    }

    fn r(name: &str, line: usize) -> (String, usize) {
        (name.to_string(), line)
    }

    #[test]
    fn multi_line_use_group_yields_each_head() {
        let src = "use crate::{\n    a::B,\n    c::{d, e},\n    self,\n};\n";
        assert_eq!(refs(src), vec![r("a", 2), r("c", 3)]);
    }

    #[test]
    fn comments_and_literals_are_ignored() {
        let src = "// see crate::x\n/// crate::x\n/* crate::x /* nested */ crate::x */\n\
                   let s = \"crate::x\"; let t = r#\"crate::x\"#; let q = '\"'; let e = '\\'';\n\
                   fn f<'a>(v: &'a str) { crate::z::g() }\n";
        assert_eq!(refs(src), vec![r("z", 5)]);
    }

    #[test]
    fn inline_paths_count_but_not_macro_or_visibility_crate() {
        let src = "fn f() {\n    let v = crate::y::f();\n}\npub(crate) fn g() { $crate::w::h() }\n";
        assert_eq!(refs(src), vec![r("y", 2)]);
    }

    #[test]
    fn single_use_and_nested_path() {
        assert_eq!(
            refs("use crate::cache::key::CacheKey;"),
            vec![r("cache", 1)]
        );
    }

    #[test]
    fn cycles_are_the_mutually_reachable_groups() {
        let e = |a: &str, b: &str| ((a.to_string(), b.to_string()), String::new());
        let edges = BTreeMap::from([
            e("a", "b"),
            e("b", "c"),
            e("c", "a"),
            e("c", "d"),
            e("d", "e"),
        ]);
        let abc: BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
        assert_eq!(cycles(&edges), vec![abc]);
    }

    #[test]
    fn only_non_dev_vedge_dependencies_are_caught() {
        assert_eq!(
            vedge_dependency("[dependencies]\nbytes = \"1\"\nvedge = { path = \"..\" }\n"),
            Some(3)
        );
        assert_eq!(
            vedge_dependency("[dev-dependencies]\nvedge = { path = \"../..\" }\n"),
            None
        );
        assert_eq!(
            vedge_dependency("[dependencies.vedge]\npath = \"..\"\n"),
            Some(1)
        );
        assert_eq!(
            vedge_dependency("[dependencies]\nedge = { package = \"vedge\" }\n"),
            Some(2)
        );
        assert_eq!(
            vedge_dependency("[dependencies]\nvedge-storage = \"0.1\"\n"),
            None
        );
    }
}
