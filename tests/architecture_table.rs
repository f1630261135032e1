//! docs/architecture.md's "Where to change what" table must stay true: every item it names
//! (`policy::staging::Stager::decide`) exists in the file that path leads to.

use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The file a module path names (`policy::staging` → src/policy/staging.rs or …/mod.rs), and
/// the item names after it.
fn resolve(path: &str) -> Option<(PathBuf, Vec<String>)> {
    let parts: Vec<&str> = path.split("::").collect();
    let mut dir = src();
    for (i, part) in parts.iter().enumerate() {
        let file = dir.join(format!("{part}.rs"));
        let module = dir.join(part).join("mod.rs");
        let rest = || {
            parts[i + 1..]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
        };
        if dir.join(part).is_dir() && !file.exists() {
            dir = dir.join(part);
            if i + 1 == parts.len() {
                return Some((module, Vec::new()));
            }
            continue;
        }
        if file.exists() {
            return Some((file, rest()));
        }
        return None;
    }
    None
}

/// Whether `name` is defined in `text` as a function, type, trait or constant.
fn defines(text: &str, name: &str) -> bool {
    ["fn", "struct", "enum", "trait", "const", "type"]
        .iter()
        .any(|kw| {
            text.match_indices(&format!("{kw} {name}")).any(|(i, m)| {
                let after = text[i + m.len()..].chars().next().unwrap_or(' ');
                !(after.is_alphanumeric() || after == '_')
            })
        })
}

#[test]
fn every_entry_of_where_to_change_what_names_an_item_that_exists() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/architecture.md"),
    )
    .unwrap();
    let table = doc
        .split("## Where to change what")
        .nth(1)
        .expect("docs/architecture.md has a \"Where to change what\" section");
    let table = table.split("\n## ").next().unwrap();
    let mut checked = 0;
    let mut missing = Vec::new();
    for row in table.lines().filter(|l| l.starts_with('|')) {
        let Some(target) = row.trim_end_matches('|').rsplit('|').next() else {
            continue;
        };
        for path in target.split('`').skip(1).step_by(2) {
            checked += 1;
            let Some((file, items)) = resolve(path) else {
                missing.push(format!("{path}: no such module"));
                continue;
            };
            let text = std::fs::read_to_string(&file).unwrap();
            for item in &items {
                if !defines(&text, item) {
                    missing.push(format!(
                        "{path}: `{item}` is not defined in {}",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(checked >= 20, "the table names only {checked} items");
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}
