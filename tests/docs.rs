//! The documentation keeps up with the code: every flag `--help` lists is in the flags table
//! of docs/configuration.md with its environment variable (and nothing documented there is
//! missing from `--help`), and every relative link in the markdown files resolves to a file
//! and, for `#anchor`s, to a heading of that file.
//!
//! Self-contained (std only) on purpose: it reads files and runs `verve --help`, nothing else.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `verve --help`, stdout and stderr together, run without any `VERVE_*` variable of ours.
fn help_text() -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_verve"));
    command.arg("--help").stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VERVE_") {
            command.env_remove(key);
        }
    }
    let out = command.output().expect("run verve --help");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "verve --help failed:\n{text}");
    text
}

/// The `--flag`s `--help` lists, each with its `[env: VERVE_...]` variable if it names one.
///
/// An option's entry starts on a line indented at most 6 columns whose first character is
/// `-` (`  -h, --help`, `      --listen <LISTEN>`); its description follows on lines indented
/// further (clap's long help) or on the same line (its short help). Mentions of other flags
/// inside a description are never taken for entries.
fn help_flags(help: &str) -> BTreeMap<String, Option<String>> {
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if indent <= 6 && trimmed.starts_with('-') {
            // `--name`, cut before any `=<VALUE>`, `[`, `,` or other punctuation.
            current = trimmed
                .split_whitespace()
                .filter_map(|word| word.strip_prefix("--"))
                .map(|word| {
                    let name: String = word
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                        .collect();
                    format!("--{name}")
                })
                .find(|flag| flag.len() > 2);
            if let Some(flag) = &current {
                flags.insert(flag.clone(), None);
            }
        }
        if let (Some(flag), Some(at)) = (&current, line.find("[env: ")) {
            let name: String = line[at + "[env: ".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                flags.insert(flag.clone(), Some(name));
            }
        }
    }
    flags
}

/// The cells of a markdown table row (`| a | b |`), split at unescaped `|`.
fn cells(row: &str) -> Vec<String> {
    let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
    let mut out = Vec::new();
    let mut cell = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cell.push('|');
                chars.next();
            }
            '|' => out.push(std::mem::take(&mut cell).trim().to_string()),
            _ => cell.push(c),
        }
    }
    out.push(cell.trim().to_string());
    out
}

/// The text inside the first pair of backticks of a cell.
fn first_code(cell: &str) -> Option<&str> {
    let start = cell.find('`')? + 1;
    let len = cell[start..].find('`')?;
    Some(&cell[start..start + len])
}

/// docs/configuration.md's flags table (`| flag | env | default | meaning |`): flag -> env.
fn documented_flags(doc: &str) -> BTreeMap<String, String> {
    let lines: Vec<&str> = doc.lines().collect();
    let header = lines
        .iter()
        .position(|line| {
            line.trim_start().starts_with('|')
                && cells(line) == ["flag", "env", "default", "meaning"]
        })
        .expect("docs/configuration.md has a table headed | flag | env | default | meaning |");
    let mut flags = BTreeMap::new();
    for line in lines[header + 2..]
        .iter()
        .take_while(|line| line.trim_start().starts_with('|'))
    {
        let row = cells(line);
        assert!(
            row.len() >= 4,
            "a flags-table row with fewer than 4 cells: {line}"
        );
        let flag = first_code(&row[0])
            .filter(|flag| flag.starts_with("--"))
            .unwrap_or_else(|| panic!("a flags-table row without a `--flag` first: {line}"));
        let env = first_code(&row[1])
            .filter(|env| env.starts_with("VERVE_"))
            .unwrap_or_else(|| panic!("a flags-table row without a `VERVE_...` variable: {line}"));
        let previous = flags.insert(flag.to_string(), env.to_string());
        assert!(previous.is_none(), "{flag} has two rows in the flags table");
    }
    flags
}

#[test]
fn every_flag_is_documented() {
    let help = help_text();
    let listed = help_flags(&help);
    assert!(
        listed.len() >= 20,
        "found only {} flags in --help; did its format change?\n{help}",
        listed.len()
    );
    let doc_path = repo().join("docs/configuration.md");
    let documented = documented_flags(&read(&doc_path));
    let exempt = ["--help", "--version"];
    let mut problems = Vec::new();
    for (flag, env) in &listed {
        if exempt.contains(&flag.as_str()) {
            continue;
        }
        let Some(env) = env else {
            problems.push(format!(
                "{flag}: --help names no [env: ...] variable for it"
            ));
            continue;
        };
        match documented.get(flag) {
            None => problems.push(format!("{flag} ({env}) is not in the flags table")),
            Some(doc_env) if doc_env != env => problems.push(format!(
                "{flag}: the flags table says `{doc_env}`, --help says {env}"
            )),
            Some(_) => {}
        }
    }
    for flag in documented.keys() {
        // The Kafka flags belong to the `kafka` feature; a build without it need not list them.
        let optional = !cfg!(feature = "kafka") && flag.starts_with("--kafka-");
        if !listed.contains_key(flag) && !optional {
            problems.push(format!("{flag} is in the flags table but not in --help"));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md and --help disagree:\n  {}\n--help was:\n{help}",
        problems.join("\n  ")
    );
}

/// The markdown files whose links are checked.
fn markdown_files() -> Vec<PathBuf> {
    let root = repo();
    let mut files = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .expect("read docs/")
        .map(|entry| entry.expect("read an entry of docs/").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    assert!(!docs.is_empty(), "docs/ holds no .md file");
    files.extend(docs);
    let mut deploy: Vec<PathBuf> = fs::read_dir(root.join("deploy"))
        .expect("read deploy/")
        .map(|entry| {
            entry
                .expect("read an entry of deploy/")
                .path()
                .join("README.md")
        })
        .filter(|path| path.is_file())
        .collect();
    deploy.sort();
    files.extend(deploy);
    files
}

/// The lines outside fenced code blocks, with their 1-based line numbers.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut fence: Option<&str> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let open = fence;
        match open {
            None if trimmed.starts_with("```") || trimmed.starts_with("~~~") => {
                fence = Some(&trimmed[..3]);
            }
            None => out.push((i + 1, line)),
            Some(marker) => {
                if trimmed.starts_with(marker) {
                    fence = None;
                }
            }
        }
    }
    out
}

/// GitHub's anchor for a heading: lower-cased; letters (any script), digits, `-` and `_`
/// kept, spaces made `-`, everything else dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every heading's anchor in a markdown text; a repeated slug gets `-1`, `-2`, ...
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose(text) {
        let hashes = line.len() - line.trim_start_matches('#').len();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let heading = line[hashes..].trim_end().trim_end_matches('#').trim_end();
        let base = slug(heading);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 { base } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// `(line, target)` of every markdown link `[text](target)` outside code fences (the text
/// may span lines). Targets with spaces or backticks are not links.
fn links(text: &str) -> Vec<(usize, String)> {
    let lines = prose(text);
    let joined: String = lines.iter().map(|(_, l)| *l).collect::<Vec<_>>().join("\n");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = joined[from..].find("](") {
        let at = from + found;
        from = at + 2;
        let rest = &joined[from..];
        let Some(end) = rest.find(')') else { break };
        let target = &rest[..end];
        if target.is_empty() || target.contains(char::is_whitespace) || target.contains('`') {
            continue;
        }
        let line_index = joined[..at].matches('\n').count();
        out.push((lines[line_index].0, target.to_string()));
    }
    out
}

#[test]
fn relative_links_resolve() {
    let root = repo();
    let mut checked = 0;
    let mut broken = Vec::new();
    for file in markdown_files() {
        let text = read(&file);
        let dir = file
            .parent()
            .expect("a markdown file has a parent directory");
        let shown = file
            .strip_prefix(root.as_path())
            .unwrap_or(&file)
            .display()
            .to_string();
        for (line, target) in links(&text) {
            if ["http://", "https://", "mailto:"]
                .iter()
                .any(|scheme| target.starts_with(scheme))
            {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let dest = if path.is_empty() {
                file.clone()
            } else {
                dir.join(path)
            };
            let place = format!("{shown}:{line}: ({target})");
            if !dest.exists() {
                broken.push(format!("{place}: {} does not exist", dest.display()));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if !dest.is_file() || dest.extension().is_none_or(|ext| ext != "md") {
                broken.push(format!(
                    "{place}: an #anchor into something not a markdown file"
                ));
                continue;
            }
            if !anchors(&read(&dest)).contains(anchor) {
                broken.push(format!(
                    "{place}: {} has no heading whose anchor is #{anchor}",
                    dest.display()
                ));
            }
        }
    }
    assert!(
        checked >= 20,
        "only {checked} relative links found; is the link scan broken?"
    );
    assert!(
        broken.is_empty(),
        "broken relative links:\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn the_slug_rule_is_githubs() {
    assert_eq!(slug("Fleet mode (Redis)"), "fleet-mode-redis");
    assert_eq!(
        slug("The accept path's latency under each fault"),
        "the-accept-paths-latency-under-each-fault"
    );
    assert_eq!(
        slug("High availability: Redis Cluster and Sentinel"),
        "high-availability-redis-cluster-and-sentinel"
    );
    assert_eq!(
        slug("Approx mode (`--count approx`)"),
        "approx-mode---count-approx"
    );
    let twice = anchors("# A\n\n```\n# not a heading\n```\n\n## A\n### b_c é\n");
    let expected: BTreeSet<String> = ["a", "a-1", "b_c-é"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(twice, expected);
    let found = links("[x](a.md#b) and [multi\nline](#c)\n```\n[no](d.md)\n```\n`[code](e f)`\n");
    assert_eq!(found, [(1, "a.md#b".to_string()), (2, "#c".to_string())]);
}
