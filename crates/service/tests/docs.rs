//! The documentation's links, checked without fetching anything:
//!
//! * every relative link in the README, ARCHITECTURE.md, CHANGELOG.md, the
//!   READMEs of `docker/` and `scripts/systemd/` and `docs/*.md` names a
//!   file (or directory) that exists;
//! * every `#anchor` of such a link (or of a link within the same file) is a
//!   heading of the markdown file it points into, by GitHub's slug rules;
//! * the README stays a front page: at most [`README_MAX_LINES`] lines.
//!
//! External `http(s)://` and `mailto:` links are not fetched (no network in
//! the tests). The scan is a small hand-written one rather than a markdown
//! parser crate: it needs only fenced code blocks, inline code spans, inline
//! links, reference definitions and ATX headings, which the files here use,
//! and a new dependency would buy nothing else. Each broken link is
//! reported with its file and line, all of them in one failure.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Component, Path, PathBuf};

/// The README is a front page; the rest lives in `docs/`.
const README_MAX_LINES: usize = 300;

/// The markdown files whose links are checked, besides `docs/*.md`.
const FILES: &[&str] = &[
    "README.md",
    "ARCHITECTURE.md",
    "CHANGELOG.md",
    "docker/README.md",
    "scripts/systemd/README.md",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every file to check, relative to the repository root.
fn checked_files(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = FILES.iter().map(PathBuf::from).collect();
    let docs = root.join("docs");
    let mut in_docs: Vec<PathBuf> = fs::read_dir(&docs)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", docs.display()))
        .map(|entry| entry.expect("a docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .map(|path| Path::new("docs").join(path.file_name().expect("a file name")))
        .collect();
    in_docs.sort();
    files.extend(in_docs);
    files
}

/// A link found in a markdown file: its 1-based line and its target.
#[derive(Debug, PartialEq, Eq)]
struct Link {
    line: usize,
    target: String,
}

/// The lines of a markdown file outside fenced code blocks, with their
/// 1-based numbers and with inline code spans blanked out.
fn prose_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fence: Option<(char, usize)> = None;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = trimmed.chars().next().filter(|c| *c == '`' || *c == '~');
        if let Some(c) = marker {
            let run = trimmed.chars().take_while(|x| *x == c).count();
            if run >= 3 {
                match fence {
                    None => {
                        fence = Some((c, run));
                        continue;
                    }
                    Some((open, len))
                        if open == c && run >= len && trimmed[run..].trim().is_empty() =>
                    {
                        fence = None;
                        continue;
                    }
                    Some(_) => {}
                }
            }
        }
        if fence.is_none() {
            out.push((index + 1, blank_code_spans(line)));
        }
    }
    out
}

/// The line with every inline code span (`` `...` ``, any number of
/// backticks) replaced by spaces, so that brackets inside code are no links.
fn blank_code_spans(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|c| **c == '`').count();
        // Find the closing run of the same length.
        let mut j = i + run;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let other = chars[j..].iter().take_while(|c| **c == '`').count();
                if other == run {
                    close = Some(j);
                    break;
                }
                j += other;
            } else {
                j += 1;
            }
        }
        if let Some(end) = close {
            out.extend(std::iter::repeat_n(' ', end + run - i));
            i = end + run;
        } else {
            // An unmatched run is literal text.
            out.extend(std::iter::repeat_n('`', run));
            i += run;
        }
    }
    out
}

/// The links of a markdown file: inline `[text](target "title")` (images
/// too) and reference definitions `[label]: target`.
fn links(text: &str) -> Vec<Link> {
    let mut found = Vec::new();
    for (line_no, line) in prose_lines(text) {
        // A reference definition: `[label]: target` at the start of a line.
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix('[') {
            if let Some(close) = rest.find("]:") {
                let target = rest[close + 2..].split_whitespace().next().unwrap_or("");
                if !target.is_empty() {
                    found.push(Link {
                        line: line_no,
                        target: target.trim_matches(['<', '>']).to_string(),
                    });
                    continue;
                }
            }
        }
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i + 1 < chars.len() {
            if chars[i] == ']' && chars[i + 1] == '(' {
                // The target runs to the matching ')', allowing balanced
                // parentheses inside it.
                let mut depth = 1;
                let mut j = i + 2;
                while j < chars.len() && depth > 0 {
                    match chars[j] {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    j += 1;
                }
                if depth == 0 {
                    let inner: String = chars[i + 2..j - 1].iter().collect();
                    let target = inner.split_whitespace().next().unwrap_or("");
                    found.push(Link {
                        line: line_no,
                        target: target.trim_matches(['<', '>']).to_string(),
                    });
                    i = j;
                    continue;
                }
            }
            i += 1;
        }
    }
    found
}

/// GitHub's anchor for a heading: the rendered text lowercased, every
/// character that is not a letter, a digit, a space, `-` or `_` dropped,
/// spaces turned into `-`. Markdown inside the heading (code spans, links,
/// emphasis) is reduced to its text first.
fn slug(heading: &str) -> String {
    let text = rendered_text(heading);
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// A heading's text as rendered: `[text](url)` becomes `text`; backticks,
/// `*` emphasis and the like vanish with the punctuation anyway.
fn rendered_text(heading: &str) -> String {
    let chars: Vec<char> = heading.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == ']' && chars.get(i + 1) == Some(&'(') {
            // Drop the link's target.
            let mut j = i + 2;
            while j < chars.len() && chars[j] != ')' {
                j += 1;
            }
            i = j + 1;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// The anchors of a markdown file's ATX headings, with GitHub's `-1`, `-2`
/// suffixes for repeated ones.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut fence: Option<(char, usize)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let marker = trimmed.chars().next().filter(|c| *c == '`' || *c == '~');
        if let Some(c) = marker {
            let run = trimmed.chars().take_while(|x| *x == c).count();
            if run >= 3 {
                match fence {
                    None => fence = Some((c, run)),
                    Some((open, len)) if open == c && run >= len => fence = None,
                    Some(_) => {}
                }
                continue;
            }
        }
        if fence.is_some() || line.len() - trimmed.len() > 3 {
            continue;
        }
        let level = trimmed.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&level) {
            continue;
        }
        let rest = &trimmed[level..];
        if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t')) {
            continue;
        }
        // A closing run of `#` is not part of the text.
        let text = rest.trim().trim_end_matches('#').trim_end();
        let base = slug(text);
        let count = seen.entry(base.clone()).or_insert(0);
        let anchor = if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        };
        *count += 1;
        out.insert(anchor);
    }
    out
}

/// `base/rel`, with `.` and `..` resolved lexically (the files need not
/// exist).
fn join(base: &Path, rel: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for part in base.join(rel).components() {
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

/// Every broken link of the files, as `file:line: target: why`.
fn broken_links(root: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut broken = Vec::new();
    let mut anchor_cache: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let path = root.join(file);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                broken.push(format!("{}: cannot be read: {e}", file.display()));
                continue;
            }
        };
        let dir = file.parent().unwrap_or(Path::new(""));
        for link in links(&text) {
            let target = link.target.as_str();
            let lower = target.to_ascii_lowercase();
            if target.is_empty()
                || lower.starts_with("http://")
                || lower.starts_with("https://")
                || lower.starts_with("mailto:")
            {
                continue;
            }
            let (file_part, anchor) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target, None),
            };
            let linked = if file_part.is_empty() {
                file.clone()
            } else {
                join(dir, file_part)
            };
            let where_ = format!("{}:{}: {target}", file.display(), link.line);
            if !root.join(&linked).exists() {
                broken.push(format!("{where_}: {} does not exist", linked.display()));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if linked.extension().is_none_or(|ext| ext != "md") {
                broken.push(format!(
                    "{where_}: an anchor into {}, which is not markdown",
                    linked.display()
                ));
                continue;
            }
            let known = anchor_cache.entry(linked.clone()).or_insert_with(|| {
                anchors(&fs::read_to_string(root.join(&linked)).unwrap_or_default())
            });
            if !known.contains(anchor) {
                broken.push(format!(
                    "{where_}: no heading #{anchor} in {}",
                    linked.display()
                ));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let root = repo_root();
    let files = checked_files(&root);
    let broken = broken_links(&root, &files);
    assert!(
        broken.is_empty(),
        "{} broken link(s) in the documentation; fix the link or the heading:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn the_readme_is_a_front_page() {
    let readme = repo_root().join("README.md");
    let text = fs::read_to_string(&readme).expect("README.md is readable");
    let lines = text.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, more than {README_MAX_LINES}: move the detail into docs/ and link it"
    );
}

#[test]
fn slugs_follow_github() {
    assert_eq!(
        slug("Quick start: the two commands"),
        "quick-start-the-two-commands"
    );
    assert_eq!(
        slug("What is going on: `status`"),
        "what-is-going-on-status"
    );
    assert_eq!(
        slug("Troubleshooting `406 PRECONDITION_FAILED`"),
        "troubleshooting-406-precondition_failed"
    );
    assert_eq!(slug("[Unreleased]"), "unreleased");
    assert_eq!(slug("[0.1.0] - 2026-11-29"), "010---2026-11-29");
    assert_eq!(
        slug("The recheck after `ORDER_NOT_EXIST`"),
        "the-recheck-after-order_not_exist"
    );
    assert_eq!(slug("See [the docs](docs/x.md) now"), "see-the-docs-now");
    let repeated = anchors("# A\n## Notes\n## Notes\n```\n# not a heading\n```\n");
    assert_eq!(
        repeated.into_iter().collect::<Vec<_>>(),
        ["a", "notes", "notes-1"].map(String::from).to_vec()
    );
}

#[test]
fn links_in_code_are_not_links() {
    let text = "see [a](a.md) and `[b](b.md)`\n```\n[c](c.md)\n```\n[d]: d.md\n![e](img/e.png \"title\")\n";
    let targets: Vec<String> = links(text)
        .into_iter()
        .map(|l| format!("{}:{}", l.line, l.target))
        .collect();
    assert_eq!(targets, ["1:a.md", "5:d.md", "6:img/e.png"]);
}

#[test]
fn a_broken_link_is_reported_with_file_and_line() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let dir = scratch.path();
    fs::create_dir_all(dir.join("docs")).expect("temp dir");
    fs::write(dir.join("README.md"), "# Top\n\n[ok](docs/a.md#part-one)\n[gone](docs/missing.md)\n[bad anchor](docs/a.md#nope)\n[self](#top)\n[web](https://example.com/x)\n").expect("write");
    fs::write(
        dir.join("docs/a.md"),
        "# A\n\n## Part one\n[back](../README.md#top) [wrong](#part-two)\n",
    )
    .expect("write");
    let broken = broken_links(
        dir,
        &[PathBuf::from("README.md"), PathBuf::from("docs/a.md")],
    );
    assert_eq!(
        broken,
        [
            "README.md:4: docs/missing.md: docs/missing.md does not exist",
            "README.md:5: docs/a.md#nope: no heading #nope in docs/a.md",
            "docs/a.md:4: #part-two: no heading #part-two in docs/a.md",
        ]
    );
}
