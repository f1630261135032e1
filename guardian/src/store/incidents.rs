//! OOM incidents: one row per kill, the whole post-mortem as JSON, committed in one statement
//! (a SIGKILL leaves it complete or absent).

use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};
use crate::model::Incident;

impl Store {
    /// Stores an incident; an incident with the same id is replaced (a later source completed it).
    pub fn put_incident(&self, i: &Incident) -> Result<(), StoreError> {
        let report = serde_json::to_string(i).expect("incidents always serialize");
        self.conn
            .execute(
                "INSERT OR REPLACE INTO incidents (id, at_ms, name, container_id, report)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    i.id,
                    i.at_ms,
                    i.name,
                    i.container.as_ref().map(|c| c.id.clone()),
                    report
                ],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Incidents at or after `since_ms`, oldest first.
    pub fn incidents(&self, since_ms: i64) -> Result<Vec<Incident>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT report FROM incidents WHERE at_ms >= ?1 ORDER BY at_ms, id")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![since_ms], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for text in rows {
            let text = text.map_err(|e| self.err(e))?;
            // A report written by a newer guardian with fields this one lacks is skipped.
            if let Ok(i) = serde_json::from_str(&text) {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// The newest kernel OOM incident of this container recorded at or after `since_ms`.
    pub fn latest_oom_incident_for(
        &self,
        container_id: &str,
        since_ms: i64,
    ) -> Result<Option<Incident>, StoreError> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT report FROM incidents WHERE container_id = ?1 AND at_ms >= ?2
                   AND coalesce(json_extract(report, '$.cause'), 'kernel_oom') = 'kernel_oom'
                 ORDER BY at_ms DESC, id DESC LIMIT 1",
                params![container_id, since_ms],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// The ids of every stored incident, oldest first: cheap, the reports stay unread.
    pub fn incident_ids(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM incidents ORDER BY at_ms, id")
            .map_err(|e| self.err(e))?;
        let ids = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e));
        ids
    }

    /// Deletes incidents recorded before `before_ms`, then the oldest beyond the newest
    /// `keep`; returns the ids deleted (their report files are the caller's).
    pub fn prune_incidents(&self, before_ms: i64, keep: usize) -> Result<Vec<String>, StoreError> {
        let ids: Vec<String> = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT id FROM incidents WHERE at_ms < ?1
                     UNION
                     SELECT id FROM (SELECT id FROM incidents ORDER BY at_ms DESC, id DESC LIMIT -1 OFFSET ?2)",
                )
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map(params![before_ms, keep as i64], |r| r.get::<_, String>(0))
                .map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
        };
        for id in &ids {
            self.conn
                .execute("DELETE FROM incidents WHERE id = ?1", params![id])
                .map_err(|e| self.err(e))?;
        }
        Ok(ids)
    }

    /// One incident by id, or by a unique prefix of it.
    pub fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT report FROM incidents WHERE id = ?1
                 UNION ALL
                 SELECT report FROM incidents WHERE id LIKE ?2 || '%'
                   AND (SELECT COUNT(*) FROM incidents WHERE id LIKE ?2 || '%') = 1
                 LIMIT 1",
                params![id, id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Whether a kernel OOM incident of this container was recorded at or after `since_ms`
    /// (other kinds — a warning, a throttled episode — do not count; rows from before incidents
    /// had a `cause` are kernel OOM kills).
    pub fn has_oom_incident_for(
        &self,
        container_id: &str,
        since_ms: i64,
    ) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM incidents WHERE container_id = ?1 AND at_ms >= ?2
                   AND coalesce(json_extract(report, '$.cause'), 'kernel_oom') = 'kernel_oom')",
                params![container_id, since_ms],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use crate::{model::Incident, store::Store};

    fn incident(n: i64) -> Incident {
        Incident {
            id: format!("2026110{n}T000000-web-{n}"),
            at_ms: n * 1000,
            name: "web".into(),
            ..Default::default()
        }
    }

    #[test]
    fn pruning_drops_the_old_then_keeps_the_newest_n() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for n in 1..=6 {
            store.put_incident(&incident(n)).unwrap();
        }
        // Older than 2 s: 1; then beyond the newest 3 of what is left: 2 and 3.
        let mut gone = store.prune_incidents(2000, 3).unwrap();
        gone.sort();
        assert_eq!(gone, [incident(1).id, incident(2).id, incident(3).id]);
        assert_eq!(
            store.incident_ids().unwrap(),
            [incident(4).id, incident(5).id, incident(6).id]
        );
        assert!(store.prune_incidents(0, 10).unwrap().is_empty());
    }
}
