//! Schema versions, applied in order and recorded in SQLite's `user_version`.

use rusqlite::Connection;

/// Each entry moves the schema from version `index` to `index + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: runs (one per container lifetime) and their downsampled timelines.
    "CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        container_id TEXT NOT NULL,
        started_at_ms INTEGER NOT NULL,
        name TEXT NOT NULL,
        image TEXT NOT NULL,
        project TEXT,
        service TEXT,
        ended_at_ms INTEGER,
        memory_limit INTEGER,
        memory_reservation INTEGER,
        peak INTEGER NOT NULL DEFAULT 0,
        startup_peak INTEGER NOT NULL DEFAULT 0,
        working_set_max INTEGER NOT NULL DEFAULT 0,
        working_set_sum INTEGER NOT NULL DEFAULT 0,
        working_set_samples INTEGER NOT NULL DEFAULT 0,
        anon_max INTEGER NOT NULL DEFAULT 0,
        oom_kills INTEGER NOT NULL DEFAULT 0,
        oom_killed INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER,
        UNIQUE (container_id, started_at_ms)
    );
    CREATE INDEX runs_by_service ON runs (project, service, started_at_ms);
    CREATE TABLE samples (
        run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        at_ms INTEGER NOT NULL,
        usage INTEGER NOT NULL,
        working_set INTEGER NOT NULL,
        anon INTEGER NOT NULL,
        PRIMARY KEY (run_id, at_ms)
    ) WITHOUT ROWID;
    CREATE INDEX samples_by_time ON samples (at_ms);",
    // 2: enforcement: the journal of values to restore, and every action taken.
    "CREATE TABLE journal (
        file TEXT PRIMARY KEY,
        original TEXT NOT NULL,
        subject TEXT NOT NULL,
        at_ms INTEGER NOT NULL
    );
    CREATE TABLE actions (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        subject TEXT NOT NULL,
        name TEXT NOT NULL,
        action TEXT NOT NULL,
        file TEXT NOT NULL,
        before TEXT NOT NULL,
        after TEXT NOT NULL,
        step INTEGER,
        reason TEXT NOT NULL,
        trigger TEXT NOT NULL,
        reaction_us INTEGER,
        write_us INTEGER,
        dry_run INTEGER NOT NULL
    );
    CREATE INDEX actions_by_time ON actions (at_ms);",
    // 3: OOM incidents, each the full post-mortem as JSON.
    "CREATE TABLE incidents (
        id TEXT PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        name TEXT NOT NULL,
        container_id TEXT,
        report TEXT NOT NULL
    );
    CREATE INDEX incidents_by_time ON incidents (at_ms);",
    // 4: each run's unreclaimable peak (anon, shmem, mapped file, kernel memory); NULL for runs
    // recorded before, which are sized from their high-water mark.
    "ALTER TABLE runs ADD COLUMN peak_unreclaimable INTEGER;",
];

/// The schema version this guardian writes.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

#[derive(Debug)]
pub enum MigrateError {
    TooNew { found: i64, supported: i64 },
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        MigrateError::Sqlite(e)
    }
}

/// Brings the schema to [`LATEST`], one transaction per step.
pub fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > LATEST {
        return Err(MigrateError::TooNew {
            found: current,
            supported: LATEST,
        });
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}
