//! The house's shape, checked: the modules of `src/` import one another
//! along one way only. Every folder of `src/` is a layer (`LAYERS`, top
//! first); a file may import from its own layer or from a lower one, never
//! from a higher one, and no files import each other in a circle, within a
//! folder or across folders. A child module never imports its folder's
//! `mod.rs`: the folder's front is on top of its own files.
//!
//! Imports are read as text: every `crate::…`, `super::…`, `self::…` path
//! (in `use` lines, with their `{…}` groups, and in code), paths through a
//! module the file declares, and `peerix::…` in the binary; comments,
//! strings and `#[cfg(test)]` items are left out. `cargo test --test
//! layers -- --nocapture` prints every import between files and the
//! counts.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers of `src/`, top first: a file's layer is that of the first
/// segment of its module path.
const LAYERS: &[&[&str]] = &[
    &["main"],
    &["config"],
    &["http"],
    &["substitute"],
    &["pull"],
    &["discovery"],
    &["peer"],
    &["store"],
    &["metrics"],
    &["nix"],
    &["base"],
];

#[test]
fn imports_run_down_the_layers_and_never_in_a_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = modules(&root);
    let known: BTreeSet<Vec<String>> = files.keys().cloned().collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, path) in &files {
        let text = fs::read_to_string(path).expect("read a source file");
        let code = without_tests(&strip_comments_and_strings(&text));
        let children = declared_modules(&code);
        for import in paths(&code) {
            let Some(target) = resolve(module, &children, &import, &known) else {
                continue;
            };
            if &target != module {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    let name = |m: &Vec<String>| files[m].strip_prefix(&root).unwrap().display().to_string();
    let mut up = Vec::new();
    let mut into_front = Vec::new();
    for (from, targets) in &edges {
        for to in targets {
            println!("{} -> {}", name(from), name(to));
            if layer(from) > layer(to) {
                up.push(format!("{} -> {}", name(from), name(to)));
            }
            if is_front(to, from) {
                into_front.push(format!("{} -> {}", name(from), name(to)));
            }
        }
    }
    let circles: Vec<Vec<String>> = strongly_connected(&edges)
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|c| c.iter().map(name).collect())
        .collect();
    let arrows: usize = edges.values().map(BTreeSet::len).sum();
    println!(
        "{} files, {arrows} imports between them, {} circles, {} imports up a layer, {} into a folder's front",
        files.len(),
        circles.len(),
        up.len(),
        into_front.len()
    );
    assert!(circles.is_empty(), "import circles: {circles:#?}");
    assert!(up.is_empty(), "imports that run up a layer: {up:#?}");
    assert!(
        into_front.is_empty(),
        "files that import their folder's mod.rs: {into_front:#?}"
    );
}

/// Every module file of `root`, by module path (`src/a/b.rs` is `[a, b]`,
/// `src/a/mod.rs` is `[a]`, the binary `src/main.rs` is `[main]`); the
/// build script, `lib.rs` (only the module list) and vendored code are
/// left out.
fn modules(root: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("list src").flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if path.is_dir() {
                if rel != Path::new("vendor") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs")
                || rel == Path::new("build.rs")
                || rel == Path::new("lib.rs")
            {
                continue;
            }
            let mut module: Vec<String> = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|l| l == "mod") {
                module.pop();
            }
            out.insert(module, path);
        }
    }
    out
}

/// Whether `target` is the front (`mod.rs`) of a folder that holds `from`.
fn is_front(target: &[String], from: &[String]) -> bool {
    from.len() > target.len() && from.starts_with(target)
}

fn layer(module: &[String]) -> usize {
    let top = module.first().map(String::as_str).unwrap_or("");
    (LAYERS.iter().position(|l| l.contains(&top)))
        .unwrap_or_else(|| panic!("src/{top} is in no layer: add it to LAYERS"))
}

/// The text with comments removed and string and char literals emptied.
fn strip_comments_and_strings(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) {
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            if b.get(i + 1 + hashes) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            let end = format!("\"{}", "#".repeat(hashes));
            let start = i + 2 + hashes;
            let len = text[start..].find(&end).unwrap_or(text.len() - start);
            out.push_str("\"\"");
            i = start + len + end.len();
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            i += 1;
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            out.push_str("' '");
            i += 3;
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') {
            while i + 1 < b.len() && b[i + 1] != b'\'' {
                i += 1;
            }
            out.push_str("' '");
            i += 2;
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The code without the items marked `#[cfg(test)]`.
fn without_tests(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let end = match (item.find('{'), item.find(';')) {
            (Some(open), semi) if semi.is_none_or(|s| open < s) => {
                let mut depth = 0;
                let mut end = item.len();
                for (k, c) in item[open..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = open + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (_, Some(semi)) => semi + 1,
            _ => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// The modules a file declares (`mod x;`, `pub mod x;`, `pub(crate) mod x;`).
fn declared_modules(code: &str) -> BTreeSet<String> {
    let words: Vec<&str> = code.split(|c: char| c.is_whitespace()).collect();
    (words.windows(2))
        .filter(|w| w[0] == "mod")
        .filter_map(|w| w[1].strip_suffix(';'))
        .map(str::to_owned)
        .collect()
}

/// Every path of the code that starts with `crate`, `super`, `self`,
/// `peerix` or another identifier followed by `::`, with `use` groups
/// expanded: each as its segments.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let b = code.as_bytes();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < b.len() {
        if is_ident(b[i]) && (i == 0 || !is_ident(b[i - 1]) && b[i - 1] != b':') {
            let (mut found, end) = path_at(code, i);
            if found.iter().any(|p| p.len() > 1) {
                out.append(&mut found);
            }
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// The path (or, for a `{…}` group, paths) that starts at byte `i`, and
/// where it ends.
fn path_at(code: &str, mut i: usize) -> (Vec<Vec<String>>, usize) {
    let b = code.as_bytes();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut segments = Vec::new();
    loop {
        let start = i;
        while i < b.len() && is_ident(b[i]) {
            i += 1;
        }
        if start == i {
            break;
        }
        segments.push(code[start..i].to_owned());
        let after = code[i..].trim_start();
        let skipped = code.len() - i - after.len();
        if !after.starts_with("::") {
            break;
        }
        i += skipped + 2;
        let after = code[i..].trim_start();
        i = code.len() - after.len();
        if after.starts_with('{') {
            let mut out = Vec::new();
            i += 1;
            loop {
                let rest = code[i..].trim_start_matches(|c: char| c.is_whitespace() || c == ',');
                i = code.len() - rest.len();
                if rest.starts_with('}') || rest.is_empty() {
                    return (out, i + 1);
                }
                let (inner, end) = path_at(code, i);
                for p in inner {
                    let mut whole = segments.clone();
                    whole.extend(p.into_iter().filter(|s| s != "self"));
                    out.push(whole);
                }
                // Skip an `as name` and anything else up to the next item.
                let rest = &code[end.min(code.len())..];
                let skip = rest.find([',', '}']).unwrap_or(rest.len());
                i = end + skip;
            }
        }
    }
    (vec![segments], i)
}

/// The module file an import of `path`, made in `module`, reaches: the
/// longest module prefix of the path made absolute; `None` for other
/// crates and for paths that are not imports.
fn resolve(
    module: &[String],
    children: &BTreeSet<String>,
    path: &[String],
    known: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let (mut base, rest): (Vec<String>, &[String]) = match path.first()?.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "peerix" if module == ["main"] => (Vec::new(), &path[1..]),
        "self" => (module.to_vec(), &path[1..]),
        "super" => {
            let mut base = module.to_vec();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            (base, rest)
        }
        first if children.contains(first) => (module.to_vec(), path),
        _ => return None,
    };
    let mut best = None;
    for segment in rest {
        base.push(segment.clone());
        if known.contains(&base) {
            best = Some(base.clone());
        }
    }
    best.or_else(|| {
        // `super::Name` or `crate::Name`: the module itself.
        let front: Vec<String> = base[..base.len().saturating_sub(rest.len())].to_vec();
        known.contains(&front).then_some(front)
    })
}

/// Tarjan's strongly connected components of the import graph.
fn strongly_connected(
    edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
) -> Vec<Vec<Vec<String>>> {
    struct State<'a> {
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Vec<String>) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}
