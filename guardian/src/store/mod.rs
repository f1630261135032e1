//! The embedded store: one SQLite file in WAL mode under the state directory, so the daemon
//! needs no server and a SIGKILL at any moment leaves the last committed flush intact.

mod incidents;
mod journal;
pub mod lock;
mod migrations;

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::model::{Bytes, RunRecord, Sample};

/// Errors of the store; each says which file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the state directory {path}: {source}; pass --state-dir or run as root")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("store {path} has schema version {found}, newer than this guardian ({supported}); upgrade guardian")]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("no store at {0}: start `guardian daemon` first, or pass --state-dir")]
    Missing(PathBuf),
    #[error("{0} is another program's database, not guardian's store; move it away or pass another --state-dir")]
    Foreign(PathBuf),
}

impl StoreError {
    /// The file itself is unusable (corrupt, not SQLite, another program's database), as
    /// opposed to a permission problem or a newer schema, which moving it aside would not fix
    /// or would lose.
    pub fn is_unreadable_file(&self) -> bool {
        match self {
            StoreError::Foreign(_) => true,
            StoreError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
            ),
            _ => false,
        }
    }
}

/// A store file moved aside by [`Store::open_or_set_aside`].
#[derive(Debug)]
pub struct SetAside {
    pub from: PathBuf,
    pub to: PathBuf,
    /// The error that made it unusable.
    pub why: String,
}

/// Which runs to read.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub project: Option<String>,
    /// Only runs started at or after this (unix ms).
    pub since_ms: Option<i64>,
    /// Only the latest N runs of each (project, service) or container name.
    pub last_runs: Option<usize>,
}

/// The open store.
pub struct Store {
    path: PathBuf,
    conn: Connection,
}

impl Store {
    /// The database file inside a state directory.
    pub fn file(state_dir: &Path) -> PathBuf {
        state_dir.join("guardian.db")
    }

    /// Opens (creating and migrating as needed) the store in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::StateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = Self::file(state_dir);
        let conn = Connection::open(&path).map_err(|source| StoreError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let mut store = Self { path, conn };
        store.configure()?;
        store.check_ours()?;
        migrations::migrate(&mut store.conn).map_err(|e| match e {
            migrations::MigrateError::TooNew { found, supported } => StoreError::TooNew {
                path: store.path.clone(),
                found,
                supported,
            },
            migrations::MigrateError::Sqlite(source) => StoreError::Sqlite {
                path: store.path.clone(),
                source,
            },
        })?;
        Ok(store)
    }

    /// Opens the store for the daemon; a file that is not a guardian store (corrupt, not
    /// SQLite, or another program's database) is moved aside to `guardian.db.unreadable-<unix
    /// seconds>` (with its -wal/-shm) and a new store started, so the daemon keeps working.
    /// What was moved is returned for the caller to say; the journal of original values it
    /// held is lost with it (the caller points at the cgroups that may still be changed).
    pub fn open_or_set_aside(state_dir: &Path) -> Result<(Self, Option<SetAside>), StoreError> {
        match Self::open(state_dir) {
            Ok(store) => Ok((store, None)),
            Err(e) if e.is_unreadable_file() => {
                let from = Self::file(state_dir);
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let to = state_dir.join(format!("guardian.db.unreadable-{secs}"));
                std::fs::rename(&from, &to).map_err(|source| StoreError::StateDir {
                    path: from.clone(),
                    source,
                })?;
                for suffix in ["-wal", "-shm"] {
                    let side = state_dir.join(format!("guardian.db{suffix}"));
                    if side.exists() {
                        let _ = std::fs::rename(
                            &side,
                            state_dir.join(format!("guardian.db.unreadable-{secs}{suffix}")),
                        );
                    }
                }
                let store = Self::open(state_dir)?;
                Ok((
                    store,
                    Some(SetAside {
                        from,
                        to,
                        why: e.to_string(),
                    }),
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// Opens an existing store for reading; `Missing` when the daemon never ran there.
    pub fn open_existing(state_dir: &Path) -> Result<Self, StoreError> {
        let path = Self::file(state_dir);
        if !path.exists() {
            return Err(StoreError::Missing(path));
        }
        Self::open(state_dir)
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// A database that holds tables but not guardian's (`runs`) belongs to another program.
    fn check_ours(&self) -> Result<(), StoreError> {
        let (tables, ours): (i64, i64) = self
            .conn
            .query_row(
                "SELECT count(*), count(*) FILTER (WHERE name = 'runs') FROM sqlite_master WHERE type = 'table'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.err(e))?;
        if tables > 0 && ours == 0 {
            return Err(StoreError::Foreign(self.path.clone()));
        }
        Ok(())
    }

    fn configure(&mut self) -> Result<(), StoreError> {
        // WAL: readers (status, profile) never block the daemon; synchronous=NORMAL is
        // durable across process crashes (SIGKILL), which is what the daemon must survive.
        self.conn
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000; PRAGMA foreign_keys=ON;",
            )
            .map_err(|e| self.err(e))
    }

    /// Writes runs and timeline samples in one transaction: all of a flush or none of it.
    pub fn flush(
        &mut self,
        runs: &[RunRecord],
        samples: &[(String, i64, Sample)],
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO runs (container_id, started_at_ms, name, image, project, service, ended_at_ms,
                        memory_limit, memory_reservation, peak, startup_peak, working_set_max,
                        working_set_sum, working_set_samples, anon_max, oom_kills, oom_killed, exit_code,
                        peak_unreclaimable)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)
                     ON CONFLICT (container_id, started_at_ms) DO UPDATE SET
                        name = excluded.name, image = excluded.image, project = excluded.project,
                        service = excluded.service, ended_at_ms = excluded.ended_at_ms,
                        memory_limit = excluded.memory_limit, memory_reservation = excluded.memory_reservation,
                        peak = max(runs.peak, excluded.peak),
                        startup_peak = max(runs.startup_peak, excluded.startup_peak),
                        working_set_max = max(runs.working_set_max, excluded.working_set_max),
                        working_set_sum = excluded.working_set_sum,
                        working_set_samples = excluded.working_set_samples,
                        anon_max = max(runs.anon_max, excluded.anon_max),
                        oom_kills = max(runs.oom_kills, excluded.oom_kills),
                        oom_killed = max(runs.oom_killed, excluded.oom_killed),
                        exit_code = excluded.exit_code,
                        peak_unreclaimable = max(coalesce(runs.peak_unreclaimable, excluded.peak_unreclaimable),
                            coalesce(excluded.peak_unreclaimable, runs.peak_unreclaimable))",
                )
                .map_err(err)?;
            for r in runs {
                upsert
                    .execute(params![
                        r.container_id,
                        r.started_at_ms,
                        r.name,
                        r.image,
                        r.project,
                        r.service,
                        r.ended_at_ms,
                        r.memory_limit.map(|b| b.0 as i64),
                        r.memory_reservation.map(|b| b.0 as i64),
                        r.peak.0 as i64,
                        r.startup_peak.0 as i64,
                        r.working_set_max.0 as i64,
                        r.working_set_sum as i64,
                        r.working_set_samples as i64,
                        r.anon_max.0 as i64,
                        r.oom_kills as i64,
                        r.oom_killed,
                        r.exit_code,
                        r.peak_unreclaimable.map(|b| b.0 as i64),
                    ])
                    .map_err(err)?;
            }
            let mut sample = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO samples (run_id, at_ms, usage, working_set, anon)
                     SELECT id, ?3, ?4, ?5, ?6 FROM runs WHERE container_id = ?1 AND started_at_ms = ?2",
                )
                .map_err(err)?;
            for (container_id, started_at_ms, s) in samples {
                sample
                    .execute(params![
                        container_id,
                        started_at_ms,
                        s.at_ms,
                        s.usage.0 as i64,
                        s.working_set.0 as i64,
                        s.anon.0 as i64
                    ])
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Drops timeline samples older than `before_ms` (the runs' summaries stay).
    pub fn prune_samples(&mut self, before_ms: i64) -> Result<usize, StoreError> {
        self.conn
            .execute("DELETE FROM samples WHERE at_ms < ?1", params![before_ms])
            .map_err(|e| self.err(e))
    }

    /// The stored timeline of one run: `(unix ms, working set)` in time order (points older
    /// than `timeline_retention` are pruned).
    pub fn working_set_timeline(
        &self,
        container_id: &str,
        started_at_ms: i64,
    ) -> Result<Vec<(i64, Bytes)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT s.at_ms, s.working_set FROM samples s JOIN runs r ON s.run_id = r.id
                 WHERE r.container_id = ?1 AND r.started_at_ms = ?2 ORDER BY s.at_ms",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![container_id, started_at_ms], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    Bytes(row.get::<_, i64>(1)?.max(0) as u64),
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Runs matching `filter`, newest first.
    pub fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT container_id, started_at_ms, name, image, project, service, ended_at_ms,
                    memory_limit, memory_reservation, peak, startup_peak, working_set_max,
                    working_set_sum, working_set_samples, anon_max, oom_kills, oom_killed, exit_code,
                    peak_unreclaimable
                 FROM runs
                 WHERE (?1 IS NULL OR project = ?1) AND (?2 IS NULL OR started_at_ms >= ?2)
                 ORDER BY started_at_ms DESC",
            )
            .map_err(|e| self.err(e))?;
        let bytes = |v: i64| Bytes(v.max(0) as u64);
        let rows = stmt
            .query_map(params![filter.project, filter.since_ms], |row| {
                Ok(RunRecord {
                    container_id: row.get(0)?,
                    started_at_ms: row.get(1)?,
                    name: row.get(2)?,
                    image: row.get(3)?,
                    project: row.get(4)?,
                    service: row.get(5)?,
                    ended_at_ms: row.get(6)?,
                    memory_limit: row.get::<_, Option<i64>>(7)?.map(bytes),
                    memory_reservation: row.get::<_, Option<i64>>(8)?.map(bytes),
                    peak: bytes(row.get(9)?),
                    startup_peak: bytes(row.get(10)?),
                    working_set_max: bytes(row.get(11)?),
                    working_set_sum: row.get::<_, i64>(12)?.max(0) as u64,
                    working_set_samples: row.get::<_, i64>(13)?.max(0) as u64,
                    anon_max: bytes(row.get(14)?),
                    oom_kills: row.get::<_, i64>(15)?.max(0) as u64,
                    oom_killed: row.get(16)?,
                    exit_code: row.get(17)?,
                    peak_unreclaimable: row.get::<_, Option<i64>>(18)?.map(bytes),
                })
            })
            .map_err(|e| self.err(e))?;
        let mut runs: Vec<RunRecord> = rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?;
        if let Some(n) = filter.last_runs {
            let mut seen: std::collections::HashMap<String, usize> = Default::default();
            runs.retain(|r| {
                let count = seen.entry(r.display_name()).or_default();
                *count += 1;
                *count <= n
            });
        }
        Ok(runs)
    }

    /// The schema version on disk.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .optional()
            .map(|v| v.unwrap_or(0))
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, service: &str, started: i64, peak: u64) -> RunRecord {
        RunRecord {
            container_id: id.into(),
            name: format!("ci-{service}-1"),
            image: "img".into(),
            project: Some("ci".into()),
            service: Some(service.into()),
            started_at_ms: started,
            peak: Bytes(peak),
            ..Default::default()
        }
    }

    #[test]
    fn flushes_merge_peaks_and_keep_samples_per_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), migrations::LATEST);
        let sample = Sample {
            at_ms: 5,
            usage: Bytes(10),
            working_set: Bytes(8),
            anon: Bytes(7),
        };
        store
            .flush(&[run("a", "db", 1, 100)], &[("a".into(), 1, sample)])
            .unwrap();
        // A later flush with a lower peak (a fresh in-memory record) never lowers it.
        store.flush(&[run("a", "db", 1, 50)], &[]).unwrap();
        let runs = store.runs(&RunFilter::default()).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].peak, Bytes(100));
        let stored: (i64, i64) = store
            .conn
            .query_row("SELECT at_ms, usage FROM samples", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(stored, (sample.at_ms, sample.usage.0 as i64));
        assert_eq!(store.prune_samples(6).unwrap(), 1);
    }

    #[test]
    fn filters_by_project_time_and_last_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store
            .flush(
                &[
                    run("a", "db", 1, 1),
                    run("b", "db", 2, 2),
                    run("c", "web", 3, 3),
                ],
                &[],
            )
            .unwrap();
        let last = store
            .runs(&RunFilter {
                last_runs: Some(1),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            last.iter()
                .map(|r| r.container_id.as_str())
                .collect::<Vec<_>>(),
            ["c", "b"]
        );
        let since = store
            .runs(&RunFilter {
                since_ms: Some(2),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(since.len(), 2);
        let other = store
            .runs(&RunFilter {
                project: Some("x".into()),
                ..Default::default()
            })
            .unwrap();
        assert!(other.is_empty());
    }

    #[test]
    fn the_unreclaimable_peak_is_never_lowered_nor_forgotten_by_a_later_flush() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let with = |v: Option<u64>| RunRecord {
            peak_unreclaimable: v.map(Bytes),
            ..run("a", "db", 1, 100)
        };
        store.flush(&[with(Some(30))], &[]).unwrap();
        store.flush(&[with(Some(20))], &[]).unwrap();
        store.flush(&[with(None)], &[]).unwrap();
        let runs = store.runs(&RunFilter::default()).unwrap();
        assert_eq!(runs[0].peak_unreclaimable, Some(Bytes(30)));
        store.flush(&[with(Some(40))], &[]).unwrap();
        let runs = store.runs(&RunFilter::default()).unwrap();
        assert_eq!(runs[0].peak_unreclaimable, Some(Bytes(40)));
    }

    #[test]
    fn runs_recorded_before_the_unreclaimable_peak_read_as_unmeasured() {
        let dir = tempfile::tempdir().unwrap();
        {
            // A version 3 store with one run, as guardian wrote it before.
            let mut conn = Connection::open(Store::file(dir.path())).unwrap();
            let tx = conn.transaction().unwrap();
            for sql in &migrations::MIGRATIONS[..3] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 3).unwrap();
            tx.execute(
                "INSERT INTO runs (container_id, started_at_ms, name, image, peak) VALUES ('a', 1, 'n', 'i', 207)",
                [],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), migrations::LATEST);
        let run = &store.runs(&RunFilter::default()).unwrap()[0];
        assert_eq!((run.peak, run.peak_unreclaimable), (Bytes(207), None));
        assert_eq!(run.sizing_peak(), Bytes(207));
    }

    #[test]
    fn reopening_keeps_what_was_flushed() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path())
            .unwrap()
            .flush(&[run("a", "db", 1, 42)], &[])
            .unwrap();
        let store = Store::open_existing(dir.path()).unwrap();
        assert_eq!(
            store.runs(&RunFilter::default()).unwrap()[0].peak,
            Bytes(42)
        );
    }

    #[test]
    fn a_missing_store_says_to_start_the_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let err = Store::open_existing(dir.path()).err().unwrap();
        assert!(err.to_string().contains("start `guardian daemon` first"));
    }

    #[test]
    fn a_corrupt_store_is_moved_aside_and_a_new_one_started() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(Store::file(dir.path()), vec![0x5a_u8; 8192]).unwrap();
        let e = Store::open(dir.path()).err().unwrap();
        assert!(e.is_unreadable_file(), "{e}");
        let (store, aside) = Store::open_or_set_aside(dir.path()).unwrap();
        let aside = aside.expect("moved aside");
        assert_eq!(
            std::fs::read(&aside.to).unwrap(),
            vec![0x5a_u8; 8192],
            "kept, not deleted"
        );
        assert!(aside
            .to
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("guardian.db.unreadable-"));
        assert!(store.journal().unwrap().is_empty());
    }

    #[test]
    fn another_programs_database_is_foreign_and_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(Store::file(dir.path())).unwrap();
        conn.execute_batch("CREATE TABLE moz_places (id INTEGER PRIMARY KEY, url TEXT); INSERT INTO moz_places (url) VALUES ('x');").unwrap();
        drop(conn);
        let e = Store::open(dir.path()).err().unwrap();
        assert!(matches!(e, StoreError::Foreign(_)), "{e}");
        let (_, aside) = Store::open_or_set_aside(dir.path()).unwrap();
        let kept = Connection::open(aside.unwrap().to).unwrap();
        let n: i64 = kept
            .query_row("SELECT count(*) FROM moz_places", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn a_good_store_is_never_moved() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let (_, aside) = Store::open_or_set_aside(dir.path()).unwrap();
        assert!(aside.is_none());
    }
}
