//! rpc-driver's modules form a graph without cycles: a module names only modules below it in
//! the layering, never one that (directly or through others) names it back.
//!
//! The graph is read from the source: a file is a module (`lib.rs` the crate root, `a.rs` and
//! `a/mod.rs` the module `a`), and a module depends on another when its code names a path into
//! it, through `use` or inline, as `crate::…`, `super::…`, `self::…` or a child module's name.
//! A path is charged to the deepest module it reaches, so naming an item through a parent's
//! re-export (`crate::transport::TransportClient` instead of `crate::transport::client::…`) is
//! a dependency on the parent: a child that does so while its parent re-exports it is a cycle.
//! Test-only modules (`#[cfg(test)]`, `#[cfg(all(test, …))]`) are left out: tests may look at
//! anything. An inline module (`mod env { … }`) belongs to its file's module, but its own
//! `super::` and `self::` are read from inside it.
//!
//! This is a plain reading of the source, not a Rust parser; it knows the shapes this crate
//! uses and fails loudly on a path it cannot place.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// One module: its path (`["transport", "client"]`; empty for the crate root), its source with
/// comments and test-only inline modules removed, and the child modules it declares.
#[derive(Debug)]
struct Module {
    path: Vec<String>,
    source: String,
    children: BTreeSet<String>,
}

/// Whether an attribute (`#[cfg(test)]`, `#[cfg(all(test, not(loom)))]`) compiles its item for
/// tests only.
fn is_test_cfg(attr: &str) -> bool {
    let attr: String = attr.chars().filter(|c| !c.is_whitespace()).collect();
    attr == "#[cfg(test)]"
        || attr
            .strip_prefix("#[cfg(all(")
            .and_then(|r| r.strip_suffix("))]"))
            .is_some_and(|args| args.split(',').any(|a| a == "test"))
}

/// Reads the modules reachable from `src/lib.rs`, skipping test-only ones.
fn read_crate(src: &Path) -> Vec<Module> {
    let mut out = Vec::new();
    read_module(&src.join("lib.rs"), src, Vec::new(), &mut out);
    out
}

fn read_module(file: &Path, dir: &Path, path: Vec<String>, out: &mut Vec<Module>) {
    let raw = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let source = strip_test_blocks(&strip_comments(&raw));
    let mut children = BTreeSet::new();
    let mut declared = Vec::new();
    // `mod name;` declarations, with the attributes just above them.
    let lines: Vec<&str> = source.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim();
        let Some(rest) = t
            .strip_prefix("pub(crate) mod ")
            .or_else(|| t.strip_prefix("pub mod "))
            .or_else(|| t.strip_prefix("mod "))
        else {
            continue;
        };
        let Some(name) = rest.strip_suffix(';') else {
            continue; // an inline module: its code stays in this file's source
        };
        let mut attrs = Vec::new();
        let mut j = i;
        while j > 0 && lines[j - 1].trim().starts_with("#[") {
            j -= 1;
            attrs.push(lines[j].trim().to_string());
        }
        if attrs.iter().any(|a| is_test_cfg(a)) {
            continue;
        }
        let explicit = attrs.iter().find_map(|a| {
            a.strip_prefix("#[path = \"")
                .and_then(|p| p.strip_suffix("\"]"))
                .map(str::to_string)
        });
        children.insert(name.to_string());
        declared.push((name.to_string(), explicit));
    }
    // Where a child's file lives: beside `lib.rs`/`mod.rs`, or in a folder named for this file.
    let own_dir = if matches!(
        file.file_name().and_then(|n| n.to_str()),
        Some("lib.rs" | "mod.rs")
    ) {
        dir.to_path_buf()
    } else {
        dir.join(file.file_stem().unwrap())
    };
    out.push(Module {
        path: path.clone(),
        source,
        children,
    });
    for (name, explicit) in declared {
        let (child_file, child_dir): (PathBuf, PathBuf) = match explicit {
            Some(p) => {
                let f = own_dir.join(p);
                (f.clone(), own_dir.join(&name))
            }
            None if own_dir.join(format!("{name}.rs")).exists() => {
                (own_dir.join(format!("{name}.rs")), own_dir.clone())
            }
            None => (own_dir.join(&name).join("mod.rs"), own_dir.join(&name)),
        };
        let mut child_path = path.clone();
        child_path.push(name);
        read_module(&child_file, &child_dir, child_path, out);
    }
}

/// The source without comments (line, block and doc comments) and without the contents of
/// string and char literals, so that neither can contribute paths.
fn strip_comments(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if b[i] == b'\n' {
                            out.push('\n');
                        }
                        i += 1;
                    }
                }
            }
            b'r' if b.get(i + 1) == Some(&b'"')
                || (b.get(i + 1) == Some(&b'#') && is_raw_string_start(&b[i + 1..])) =>
            {
                // A raw string: r"…" or r#"…"#.
                let mut hashes = 0;
                i += 1;
                while b[i] == b'#' {
                    hashes += 1;
                    i += 1;
                }
                i += 1; // the opening quote
                out.push_str("\"\"");
                loop {
                    if i >= b.len() {
                        break;
                    }
                    if b[i] == b'"'
                        && b[i + 1..]
                            .iter()
                            .take(hashes)
                            .filter(|&&c| c == b'#')
                            .count()
                            == hashes
                    {
                        i += 1 + hashes;
                        break;
                    }
                    if b[i] == b'\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    } else if b[i] == b'\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'\'' => {
                // A char literal ('x', '\n', '\'') or a lifetime ('a): skip only the former.
                if b.get(i + 1) == Some(&b'\\') {
                    let end = b[i + 2..]
                        .iter()
                        .position(|&c| c == b'\'')
                        .map(|p| i + 3 + p);
                    i = end.unwrap_or(i + 1);
                    out.push_str("' '");
                } else if b.get(i + 2) == Some(&b'\'') {
                    i += 3;
                    out.push_str("' '");
                } else {
                    out.push('\'');
                    i += 1;
                }
            }
            c => {
                // Copy one UTF-8 character whole.
                let len = utf8_len(c);
                out.push_str(&src[i..i + len]);
                i += len;
            }
        }
    }
    out
}

fn is_raw_string_start(b: &[u8]) -> bool {
    let hashes = b.iter().take_while(|&&c| c == b'#').count();
    b.get(hashes) == Some(&b'"')
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// Removes inline test-only `mod name { … }` blocks (`#[cfg(test)]`, `#[cfg(all(test, …))]`;
/// their `super::` is the file itself).
fn strip_test_blocks(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(at) = rest.find("#[cfg(") {
        out.push_str(&rest[..at]);
        let attr_len = rest[at..].find(']').map_or(rest.len() - at, |e| e + 1);
        let attr = &rest[at..at + attr_len];
        let after = &rest[at + attr_len..];
        if !is_test_cfg(attr) {
            out.push_str(attr);
            rest = after;
            continue;
        }
        let trimmed = after.trim_start();
        let is_inline_mod = ["mod ", "pub(crate) mod ", "pub mod "].iter().any(|p| {
            trimmed
                .strip_prefix(p)
                .map(|r| {
                    let r = r.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_');
                    r.trim_start().starts_with('{')
                })
                .unwrap_or(false)
        });
        if !is_inline_mod {
            out.push_str(attr);
            rest = after;
            continue;
        }
        let open = after.find('{').expect("an inline module has a body");
        let mut depth = 0usize;
        let mut end = after.len();
        for (k, c) in after[open..].char_indices() {
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
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// A file's code by scope: the file module's own (`[]`) and each inline module's (`["env"]`
/// for `mod env { … }`), each without the bodies of the modules inside it.
fn inline_scopes(source: &str) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    collect_scopes(source, Vec::new(), &mut out);
    out
}

fn collect_scopes(src: &str, scope: Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    let mut own = String::new();
    let mut rest = src;
    while let Some((at, name, open)) = find_inline_mod(rest) {
        own.push_str(&rest[..at]);
        let close = matching_brace(rest, open);
        let mut inner = scope.clone();
        inner.push(name);
        collect_scopes(&rest[open + 1..close], inner, out);
        rest = &rest[close + 1..];
    }
    own.push_str(rest);
    out.push((scope, own));
}

/// The next inline module, `mod name {`: where `mod` starts, its name, and where its `{` is.
fn find_inline_mod(src: &str) -> Option<(usize, String, usize)> {
    let b = src.as_bytes();
    let mut from = 0;
    while let Some(p) = src[from..].find("mod ") {
        let at = from + p;
        from = at + 4;
        if at > 0 && is_ident_char(b[at - 1]) {
            continue;
        }
        let name_start = src[at + 4..].trim_start();
        let name_len = name_start.bytes().take_while(|&c| is_ident_char(c)).count();
        if name_len == 0 {
            continue;
        }
        let after_name = &name_start[name_len..];
        let body = after_name.trim_start();
        if body.starts_with('{') {
            let open = src.len() - body.len();
            return Some((at, name_start[..name_len].to_string(), open));
        }
    }
    None
}

/// The `}` that closes the `{` at `open`.
fn matching_brace(src: &str, open: usize) -> usize {
    let mut depth = 0usize;
    for (k, c) in src[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return open + k;
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced braces in an inline module")
}

/// Every path the module's code names, as written: `use` trees expanded (`use a::{b, c::d}`
/// gives `a::b` and `a::c::d`), and inline paths (`crate::a::B::new`).
fn named_paths(source: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    // `use` items, including `pub use` and `pub(crate) use`.
    let mut rest = source;
    while let Some(at) = find_use(rest) {
        let tree_start = &rest[at..];
        let end = tree_start.find(';').expect("a use item ends with ';'");
        let tree = normalize_use_tree(&tree_start[..end]);
        expand_use_tree(&tree, &[], &mut paths);
        rest = &tree_start[end..];
    }
    // Inline paths: every maximal `ident::ident::…` run.
    let b = source.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if is_ident_start(b[i]) && (i == 0 || !is_ident_char(b[i - 1]) && b[i - 1] != b':') {
            let start = i;
            let mut segments = Vec::new();
            loop {
                let s = i;
                while i < b.len() && is_ident_char(b[i]) {
                    i += 1;
                }
                segments.push(source[s..i].to_string());
                if b.get(i) == Some(&b':')
                    && b.get(i + 1) == Some(&b':')
                    && b.get(i + 2).is_some_and(|&c| is_ident_start(c))
                {
                    i += 2;
                } else {
                    break;
                }
            }
            if segments.len() > 1 {
                paths.push(segments);
            }
            if i == start {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    paths
}

/// The offset just past the `use` keyword of the next `use` item, if any.
fn find_use(src: &str) -> Option<usize> {
    let b = src.as_bytes();
    let mut from = 0;
    while let Some(p) = src[from..].find("use ") {
        let at = from + p;
        let before_ok = at == 0 || matches!(b[at - 1], b' ' | b'\n' | b'\t' | b'{' | b')' | b';');
        if before_ok {
            return Some(at + 4);
        }
        from = at + 4;
    }
    None
}

/// A use tree on one line, spaces kept only where they separate words (`a::b as c`).
fn normalize_use_tree(tree: &str) -> String {
    let words: Vec<&str> = tree.split_whitespace().collect();
    let mut out = words.join(" ");
    for sep in ["::", "{", "}", ","] {
        out = out
            .replace(&format!(" {sep}"), sep)
            .replace(&format!("{sep} "), sep);
    }
    out
}

fn expand_use_tree(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    // Split at the first top-level `{`.
    match tree.find('{') {
        None => {
            let mut path = prefix.to_vec();
            // `a::b as c` names `a::b`.
            let tree = tree.split(" as ").next().unwrap_or(tree);
            path.extend(
                tree.split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            );
            if !path.is_empty() {
                out.push(path);
            }
        }
        Some(open) => {
            let head = &tree[..open];
            let close = tree.rfind('}').expect("balanced braces in a use tree");
            let inner = &tree[open + 1..close];
            let mut base = prefix.to_vec();
            base.extend(
                head.split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            );
            let mut depth = 0;
            let mut start = 0;
            let bytes = inner.as_bytes();
            for k in 0..=bytes.len() {
                let at_end = k == bytes.len();
                if !at_end {
                    match bytes[k] {
                        b'{' => depth += 1,
                        b'}' => depth -= 1,
                        _ => {}
                    }
                }
                if at_end || (bytes[k] == b',' && depth == 0) {
                    let part = &inner[start..k];
                    if !part.is_empty() {
                        if part == "self" {
                            out.push(base.clone());
                        } else {
                            expand_use_tree(part, &base, out);
                        }
                    }
                    start = k + 1;
                }
            }
        }
    }
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The module a path lands in, seen from module `from`, or `None` for paths outside the crate
/// (`std::…`, `rpc_proto::…`, local items such as `Self::new`).
fn resolve(
    from: &[String],
    path: &[String],
    modules: &BTreeMap<Vec<String>, BTreeSet<String>>,
) -> Option<Vec<String>> {
    let mut at: Vec<String>;
    let mut segments = path.iter().peekable();
    match segments.peek().map(|s| s.as_str()) {
        Some("crate") => {
            at = Vec::new();
            segments.next();
        }
        Some("super") | Some("self") => {
            at = from.to_vec();
            while let Some(s) = segments.peek() {
                match s.as_str() {
                    "super" => {
                        at.pop();
                    }
                    "self" => {}
                    _ => break,
                }
                segments.next();
            }
        }
        Some(first) if modules.get(from).is_some_and(|c| c.contains(first)) => {
            at = from.to_vec();
        }
        _ => return None,
    }
    // Descend while the next segment is a child module.
    for seg in segments {
        match modules.get(&at) {
            Some(children) if children.contains(seg.as_str()) => at.push(seg.clone()),
            _ => break,
        }
    }
    Some(at)
}

/// The dependency graph: module -> modules it names (itself excluded).
fn graph(modules: &[Module]) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let tree: BTreeMap<Vec<String>, BTreeSet<String>> = modules
        .iter()
        .map(|m| (m.path.clone(), m.children.clone()))
        .collect();
    let mut edges = BTreeMap::new();
    for m in modules {
        let mut deps = BTreeSet::new();
        for (scope, code) in inline_scopes(&m.source) {
            // An inline module's `super::` and `self::` are read from inside it.
            let mut from = m.path.clone();
            from.extend(scope);
            for path in named_paths(&code) {
                if let Some(mut target) = resolve(&from, &path, &tree) {
                    // A path into an inline module stays in its file's module.
                    while !tree.contains_key(&target) {
                        target.pop();
                    }
                    // Declaring a child (`mod a;`) is not naming it; naming it is.
                    if target != m.path {
                        deps.insert(target);
                    }
                }
            }
        }
        edges.insert(m.path.clone(), deps);
    }
    edges
}

/// The strongly connected components with more than one module (Tarjan's algorithm).
fn cycles(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    struct State<'a> {
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a [String], usize>,
        low: BTreeMap<&'a [String], usize>,
        stack: Vec<&'a [String]>,
        on_stack: BTreeSet<&'a [String]>,
        next: usize,
        found: Vec<Vec<Vec<String>>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a [String]) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        let edges = s.edges;
        for w in edges.get(v).into_iter().flatten() {
            let w = w.as_slice();
            if !edges.contains_key(w) {
                continue;
            }
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                component.push(w.to_vec());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_slice()) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn name(path: &[String]) -> String {
    if path.is_empty() {
        "crate".into()
    } else {
        format!("crate::{}", path.join("::"))
    }
}

/// The edges inside a cycle, to say what to cut.
fn describe(
    component: &[Vec<String>],
    edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
) -> String {
    let members: BTreeSet<&Vec<String>> = component.iter().collect();
    let mut out = String::new();
    for from in component {
        for to in &edges[from] {
            if members.contains(to) {
                out.push_str(&format!("    {} -> {}\n", name(from), name(to)));
            }
        }
    }
    out
}

#[test]
fn rpc_driver_modules_have_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = read_crate(&src);
    assert!(modules.len() > 10, "read only {} modules", modules.len());
    let edges = graph(&modules);
    let found = cycles(&edges);
    let report: String = found
        .iter()
        .map(|c| format!("cycle among {} modules:\n{}", c.len(), describe(c, &edges)))
        .collect();
    assert!(
        found.is_empty(),
        "rpc-driver's modules import each other in a cycle:\n{report}"
    );
}

/// The checker itself finds a cycle made through a parent's re-export, and none in a layered
/// tree: proof that the test above can fail.
#[test]
fn the_checker_finds_a_cycle_through_a_parent_reexport() {
    let module = |path: &[&str], source: &str, children: &[&str]| Module {
        path: path.iter().map(|s| s.to_string()).collect(),
        source: strip_test_blocks(&strip_comments(source)),
        children: children.iter().map(|s| s.to_string()).collect(),
    };
    let layered = [
        module(&[], "mod a; mod b; pub use a::A;", &["a", "b"]),
        module(&["a"], "use crate::b::B; pub struct A(B);", &[]),
        module(
            &["b"],
            "// uses crate::a::A in a comment only\npub struct B;",
            &[],
        ),
    ];
    assert!(cycles(&graph(&layered)).is_empty());

    let cyclic = [
        module(&[], "mod net;", &["net"]),
        module(
            &["net"],
            "mod conn; mod handler;\npub use conn::Conn;\npub use handler::Handler;",
            &["conn", "handler"],
        ),
        module(
            &["net", "conn"],
            "use super::handler::Handler; pub struct Conn;",
            &[],
        ),
        // Names `Conn` through the parent's re-export: net -> handler -> net, and conn, which
        // names the handler, is caught in the same knot.
        module(
            &["net", "handler"],
            "pub trait Handler { fn f(&self, c: &crate::net::Conn); }",
            &[],
        ),
    ];
    let found = cycles(&graph(&cyclic));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0],
        vec![
            vec!["net".to_string()],
            vec!["net".to_string(), "conn".to_string()],
            vec!["net".to_string(), "handler".to_string()],
        ]
    );

    // A test-only block's `use super::*` is not a dependency.
    let with_tests = [
        module(&[], "mod a; mod b;", &["a", "b"]),
        module(&["a"], "use crate::b::B;", &[]),
        module(
            &["b"],
            "pub struct B;\n#[cfg(test)]\nmod tests { use crate::a::*; }",
            &[],
        ),
    ];
    assert!(cycles(&graph(&with_tests)).is_empty());

    // `#[cfg(all(test, …))]` is test-only too, and an inline module's `super::` is its file:
    // neither `a::tests` nor `a::imp` names the crate root, which names `a`.
    let scoped = [
        module(&[], "mod a; mod b; pub use a::A;", &["a", "b"]),
        module(
            &["a"],
            "pub struct A; fn helper() {}\n\
             #[cfg(not(loom))]\nmod imp { use super::helper; use crate::b::B; }\n\
             #[cfg(all(test, not(loom)))]\nmod tests { use super::super::*; }",
            &[],
        ),
        module(&["b"], "pub struct B;", &[]),
    ];
    let edges = graph(&scoped);
    assert!(cycles(&edges).is_empty(), "{edges:?}");
    // ... while what the inline module names elsewhere is still the file's dependency.
    assert!(edges[&vec!["a".to_string()]].contains(&vec!["b".to_string()]));
    let inline_cycle = [
        module(&[], "mod a; mod b;", &["a", "b"]),
        module(&["a"], "pub struct A; mod imp { use crate::b::B; }", &[]),
        module(&["b"], "pub struct B(crate::a::A);", &[]),
    ];
    assert_eq!(cycles(&graph(&inline_cycle)).len(), 1);
}

#[test]
fn use_trees_expand_to_paths() {
    let mut out = Vec::new();
    let tree = normalize_use_tree("super::{\n    a::{B, C as D},\n    d, self,\n}");
    expand_use_tree(&tree, &[], &mut out);
    let got: Vec<String> = out.iter().map(|p| p.join("::")).collect();
    assert_eq!(got, ["super::a::B", "super::a::C", "super::d", "super"]);
}
