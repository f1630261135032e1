//! The enforcement tables: the journal of values to restore and the log of actions taken.
//! Every call commits at once: a journal entry must be on disk before the write it covers.

use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};
use crate::model::{ActionRecord, JournalEntry};

impl Store {
    /// The original value journaled for `file`, if guardian holds it changed.
    pub fn journal_original(&self, file: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT original FROM journal WHERE file = ?1",
                params![file],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Journals `file`'s original value; a second call for the same file keeps the first.
    pub fn journal_insert(&self, e: &JournalEntry) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO journal (file, original, subject, at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![e.file, e.original, e.subject, e.at_ms],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Drops `file` from the journal once its original is back (or its cgroup is gone).
    pub fn journal_remove(&self, file: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM journal WHERE file = ?1", params![file])
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Everything guardian holds changed, oldest first.
    pub fn journal(&self) -> Result<Vec<JournalEntry>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT file, original, subject, at_ms FROM journal ORDER BY at_ms, file")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(JournalEntry {
                    file: r.get(0)?,
                    original: r.get(1)?,
                    subject: r.get(2)?,
                    at_ms: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Records one action.
    pub fn record_action(&self, a: &ActionRecord) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO actions (at_ms, subject, name, action, file, before, after, step,
                    reason, trigger, reaction_us, write_us, dry_run)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    a.at_ms,
                    a.subject,
                    a.name,
                    a.action,
                    a.file,
                    a.before,
                    a.after,
                    a.step,
                    a.reason,
                    a.trigger,
                    a.reaction_us.map(|v| v as i64),
                    a.write_us.map(|v| v as i64),
                    a.dry_run
                ],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Actions at or after `since_ms`, oldest first, at most `limit` of the newest.
    pub fn actions(&self, since_ms: i64, limit: usize) -> Result<Vec<ActionRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT at_ms, subject, name, action, file, before, after, step, reason, trigger,
                    reaction_us, write_us, dry_run
                 FROM (SELECT * FROM actions WHERE at_ms >= ?1 ORDER BY id DESC LIMIT ?2)
                 ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![since_ms, limit as i64], |r| {
                Ok(ActionRecord {
                    at_ms: r.get(0)?,
                    subject: r.get(1)?,
                    name: r.get(2)?,
                    action: r.get(3)?,
                    file: r.get(4)?,
                    before: r.get(5)?,
                    after: r.get(6)?,
                    step: r.get(7)?,
                    reason: r.get(8)?,
                    trigger: r.get(9)?,
                    reaction_us: r.get::<_, Option<i64>>(10)?.map(|v| v.max(0) as u64),
                    write_us: r.get::<_, Option<i64>>(11)?.map(|v| v.max(0) as u64),
                    dry_run: r.get(12)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_keeps_the_first_original_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let entry = |original: &str| JournalEntry {
            file: "/sys/fs/cgroup/t/memory.high".into(),
            original: original.into(),
            subject: "cgroup:/t".into(),
            at_ms: 1,
        };
        store.journal_insert(&entry("max")).unwrap();
        store.journal_insert(&entry("67108864")).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.journal().unwrap(), vec![entry("max")]);
        assert_eq!(
            store
                .journal_original("/sys/fs/cgroup/t/memory.high")
                .unwrap()
                .as_deref(),
            Some("max")
        );
        store
            .journal_remove("/sys/fs/cgroup/t/memory.high")
            .unwrap();
        assert!(store.journal().unwrap().is_empty());
    }

    #[test]
    fn actions_read_back_newest_window_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..5 {
            store
                .record_action(&ActionRecord {
                    at_ms: i,
                    subject: "cgroup:/t".into(),
                    action: "set_high".into(),
                    step: Some(1),
                    reaction_us: Some(120),
                    ..Default::default()
                })
                .unwrap();
        }
        let got = store.actions(1, 3).unwrap();
        assert_eq!(got.iter().map(|a| a.at_ms).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!((got[0].step, got[0].reaction_us), (Some(1), Some(120)));
    }
}
