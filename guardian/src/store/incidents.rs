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

    /// Whether an incident of this container was recorded at or after `since_ms`.
    pub fn has_incident_for(&self, container_id: &str, since_ms: i64) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM incidents WHERE container_id = ?1 AND at_ms >= ?2)",
                params![container_id, since_ms],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }
}
