//! ARCHITECTURE.md names code (`service::settle`, `lane::Lane`,
//! `domain::mark_paid`): each such path must still exist, so that the map
//! cannot silently point at something renamed or gone.
//!
//! A path is checked when it is written in backticks as `a::b::c`: with a
//! workspace crate's name first (`payment_client::Config`), or, inside the
//! section of a crate (the heading naming `crates/order-timeout-worker`), relative to
//! that crate (`sweep::Sweeper`). Paths into other crates (`axum::serve`)
//! are not ours to check. The check reads the sources rather than asking
//! the compiler: each segment is a module of the one before (declared with
//! `mod` and present as a file), or an item declared or re-exported there
//! (`pub fn`, `pub struct`, ..., `pub use ...`); what follows an item (a
//! method, a variant) must be declared somewhere in that crate.

use std::fs;
use std::path::{Path, PathBuf};

/// The workspace's crates: the name in code and the directory.
const CRATES: &[(&str, &str)] = &[
    ("broker", "broker"),
    ("domain", "domain"),
    ("payment_client", "payment-client"),
    ("service", "service"),
    ("order_producer", "order-producer"),
    ("order_timeout_worker", "order-timeout-worker"),
    ("wechatpay_sim", "wechatpay-sim"),
];

/// Crates from outside the workspace that ARCHITECTURE.md names paths in.
const OUTSIDE: &[&str] = &[
    "amiquip",
    "axum",
    "chrono",
    "clap",
    "diesel",
    "flate2",
    "hyper",
    "log",
    "openssl",
    "prometheus_client",
    "secrecy",
    "serde",
    "serde_json",
    "std",
    "tempfile",
    "tokio",
    "tower",
    "tower_http",
    "ureq",
    "url",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// Every `a::b` path in backticks, with its line and the crate directory of
/// the section it is in (if any).
fn named_paths(text: &str) -> Vec<(usize, String, Option<&'static str>)> {
    let mut section = None;
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            section = CRATES
                .iter()
                .find(|(_, dir)| line.contains(&format!("`crates/{dir}`")))
                .map(|(_, dir)| *dir);
        }
        for (n, span) in line.split('`').enumerate() {
            // Odd pieces are inside backticks.
            if n % 2 == 0 {
                continue;
            }
            let path = span.trim_end_matches("()");
            let segments: Vec<&str> = path.split("::").collect();
            if segments.len() >= 2 && segments.iter().all(|s| is_ident(s)) {
                found.push((i + 1, path.to_owned(), section));
            }
        }
    }
    found
}

/// The file of module `name` declared in `file`, if it has one.
fn submodule(file: &Path, name: &str) -> Option<PathBuf> {
    let text = fs::read_to_string(file).ok()?;
    let declared = text.lines().any(|l| {
        let l = l.trim_start();
        let l = l.strip_prefix("pub ").unwrap_or(l);
        let l = l.strip_prefix("pub(crate) ").unwrap_or(l);
        l.strip_prefix("mod ")
            .is_some_and(|rest| rest.trim_end_matches([';', ' ', '{']) == name)
    });
    if !declared {
        return None;
    }
    let stem = file.file_stem()?.to_str()?;
    let dir = if matches!(stem, "lib" | "main" | "mod") {
        file.parent()?.to_path_buf()
    } else {
        file.with_extension("")
    };
    [
        dir.join(format!("{name}.rs")),
        dir.join(name).join("mod.rs"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// True when `name` is declared (or re-exported) as an item of `file`.
fn declares(file: &Path, name: &str) -> bool {
    let Ok(text) = fs::read_to_string(file) else {
        return false;
    };
    let words = |s: &str| -> Vec<String> {
        s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map(str::to_owned)
            .collect()
    };
    // A declaration: `pub fn name`, `pub struct name<..>`, ...
    let kinds = [
        "fn", "struct", "enum", "const", "static", "type", "trait", "mod",
    ];
    for line in text.lines() {
        let w = words(line.trim_start());
        if let Some(k) = w.iter().position(|x| kinds.contains(&x.as_str())) {
            if line.trim_start().starts_with("pub") && w.get(k + 1).is_some_and(|x| x == name) {
                return true;
            }
        }
    }
    // A re-export: `pub use a::{b, name};`, possibly over several lines.
    text.split("pub use ").skip(1).any(|rest| {
        words(rest.split(';').next().unwrap_or(""))
            .iter()
            .any(|w| w == name)
    })
}

fn crate_sources(dir: &Path) -> String {
    let mut all = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                all.push_str(&fs::read_to_string(&p).unwrap());
            }
        }
    }
    all
}

/// Whether `segments` resolve inside the crate whose sources are in `src`.
fn resolves(src: &Path, segments: &[&str]) -> bool {
    let mut module = src.join("lib.rs");
    for (i, seg) in segments.iter().enumerate() {
        if let Some(sub) = submodule(&module, seg) {
            module = sub;
            continue;
        }
        if !declares(&module, seg) {
            return false;
        }
        // An item: what follows (a method, a variant, a field) must be
        // declared somewhere in the crate (or the crate it re-exports).
        let rest = &segments[i + 1..];
        if rest.is_empty() {
            return true;
        }
        let sources = crate_sources(src.parent().unwrap().parent().unwrap());
        return rest.iter().all(|name| {
            sources.contains(&format!("fn {name}"))
                || sources.contains(&format!("{name},"))
                || sources.contains(&format!("{name} {{"))
                || sources.contains(&format!("{name}("))
                || sources.contains(&format!("{name}: "))
        });
    }
    true
}

/// The broken paths of `text`, each with its line.
fn broken(root: &Path, text: &str) -> Vec<String> {
    let mut bad = Vec::new();
    for (line, path, section) in named_paths(text) {
        let segments: Vec<&str> = path.split("::").collect();
        let (dir, rest) = match CRATES.iter().find(|(name, _)| *name == segments[0]) {
            Some((_, dir)) => (*dir, &segments[1..]),
            // Relative to the section's crate, unless it starts with an
            // outside crate's name.
            None => match section {
                Some(_) if OUTSIDE.contains(&segments[0]) => continue,
                Some(dir) => (dir, &segments[..]),
                None => continue,
            },
        };
        let src = root.join("crates").join(dir).join("src");
        if !resolves(&src, rest) {
            bad.push(format!(
                "ARCHITECTURE.md:{line}: `{path}` (crates/{dir}) does not resolve"
            ));
        }
    }
    bad
}

#[test]
fn every_path_architecture_names_exists() {
    let root = repo_root();
    let text = fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let named = named_paths(&text);
    // The check must have something to check.
    assert!(named.len() > 10, "{named:?}");
    let bad = broken(&root, &text);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn a_renamed_path_is_reported() {
    let root = repo_root();
    let text = "### `crates/order-timeout-worker`\n\n`consumer::Worker` and `service::settle::Settler::settle` and `domain::no_such_fn`; `axum::serve`\n";
    let bad = broken(&root, text);
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(bad[0].contains("`consumer::Worker`"), "{bad:?}");
    assert!(bad[1].contains("`domain::no_such_fn`"), "{bad:?}");
}
