//! What a configuration reload (SIGHUP) changes: the budgets of the guarded groups before and
//! after, as a pure diff, so the daemon touches only the groups whose budget moved instead of
//! restoring everything and re-applying every memory.high.

use std::collections::BTreeMap;

use crate::model::Bytes;

/// One group whose budget a reload changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetChange {
    /// The guarded group's key (container id, or `cgroup:<path>`).
    pub key: String,
    pub before: Option<Bytes>,
    pub after: Option<Bytes>,
}

impl BudgetChange {
    /// The group lost its budget: what guardian holds changed there must be put back.
    pub fn released(&self) -> bool {
        self.before.is_some() && self.after.is_none()
    }
}

/// Budgets per group before and after a reload; groups absent from a map have none.
pub fn budget_changes(
    before: &BTreeMap<String, Bytes>,
    after: &BTreeMap<String, Bytes>,
) -> Vec<BudgetChange> {
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| {
            let (b, a) = (before.get(key).copied(), after.get(key).copied());
            (b != a).then(|| BudgetChange {
                key: key.clone(),
                before: b,
                after: a,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn budgets(entries: &[(&str, u64)]) -> BTreeMap<String, Bytes> {
        entries
            .iter()
            .map(|(k, mib)| (k.to_string(), Bytes(mib * MIB)))
            .collect()
    }

    #[test]
    fn an_unchanged_config_changes_nothing() {
        let b = budgets(&[("db", 512), ("web", 128)]);
        assert!(budget_changes(&b, &b).is_empty());
    }

    #[test]
    fn added_changed_and_removed_budgets_are_told_apart() {
        let before = budgets(&[("db", 512), ("web", 128), ("cache", 64)]);
        let after = budgets(&[("db", 1024), ("web", 128), ("worker", 256)]);
        let changes = budget_changes(&before, &after);
        let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["cache", "db", "worker"]);
        assert!(changes[0].released());
        assert_eq!(changes[1].after, Some(Bytes(1024 * MIB)));
        assert!(!changes[1].released());
        assert_eq!(
            (changes[2].before, changes[2].after),
            (None, Some(Bytes(256 * MIB)))
        );
    }
}
