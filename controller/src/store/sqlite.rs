//! The SQLite backend of [`Store`]: one file, WAL journal, every record a JSON document beside
//! the columns queries filter on.
//!
//! The database holds token digests and sealed secrets: the file and its `-wal`/`-shm`
//! companions are made mode 0600 at every open, whatever the umask and whatever mode an older
//! version left them with (SQLite gives the companions the main file's mode when it creates
//! them).
//!
//! Connections: one writer (SQLite serialises writers anyway; every transaction runs on it) and
//! a few read-only connections, so that with WAL a read never waits for a write transaction, nor
//! for another read. The store's interface is synchronous and called from async code: on the
//! multi-threaded runtime each call runs under `block_in_place`, so a worker thread waiting on
//! the disk hands its other tasks to another thread instead of stalling them.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    Begin, BeginCluster, ClusterRecord, ClusterState, EventRecord, Finish, JobRecord, NodeRecord,
    Progress, Store, StoreError, TokenRecord, UnixTime, VersionRecord, WorkflowRecord,
    WorkflowStatus,
};

/// The schema; `CREATE … IF NOT EXISTS`, so opening an existing store is a no-op.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS versions (
    id TEXT PRIMARY KEY, removed INTEGER NOT NULL DEFAULT 0, created INTEGER NOT NULL,
    data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clusters (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, created INTEGER NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    cluster_id TEXT NOT NULL, name TEXT NOT NULL, ordinal INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (cluster_id, name));
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, created INTEGER NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workflows (
    id TEXT PRIMARY KEY, cluster_id TEXT NOT NULL, status TEXT NOT NULL,
    created INTEGER NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS workflows_cluster ON workflows (cluster_id, created);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT NOT NULL, account_id TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (key, account_id));
CREATE TABLE IF NOT EXISTS secrets (
    cluster_id TEXT NOT NULL, name TEXT NOT NULL, sealed BLOB NOT NULL,
    PRIMARY KEY (cluster_id, name));
CREATE TABLE IF NOT EXISTS tokens (
    digest TEXT PRIMARY KEY, cluster_id TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, cluster_id TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_cluster ON events (cluster_id, seq);
";

/// Read-only connections beside the writer.
const READERS: usize = 4;

/// A [`Store`] in one SQLite file (or in memory, for tests).
#[derive(Debug)]
pub struct SqliteStore {
    /// Every write and every transaction.
    conn: Mutex<Connection>,
    /// Reads outside transactions (none in memory: there the writer reads too).
    readers: Vec<Mutex<Connection>>,
    /// Where the next reader search starts.
    next_reader: AtomicUsize,
}

/// Runs `f`, which blocks on SQLite, without stalling the async tasks of this worker thread.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        // A current-thread runtime (tests) cannot hand its tasks over: run in place.
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn query(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Query { operation, source }
}

fn to_json(value: &impl Serialize) -> String {
    // Our records are plain structs of strings, numbers and enums: serialising cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

fn from_json<T: DeserializeOwned>(
    kind: &'static str,
    id: &str,
    data: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(data).map_err(|source| StoreError::Corrupt {
        kind,
        id: id.to_string(),
        source,
    })
}

fn workflow_status(status: WorkflowStatus) -> &'static str {
    match status {
        WorkflowStatus::Running => "running",
        WorkflowStatus::Succeeded => "succeeded",
        WorkflowStatus::Failed => "failed",
        WorkflowStatus::Cancelled => "cancelled",
    }
}

/// Creates `path` mode 0600 if it is missing, and makes it and the `-wal`/`-shm` files beside
/// it 0600 when they exist.
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let mut companions = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        companions.push(name.into());
    }
    for file in companions {
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

// === impl SqliteStore ===

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`.
    ///
    /// # Errors
    /// The file cannot be opened or the schema cannot be created.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let open = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let private = |source| StoreError::Private {
            path: path.display().to_string(),
            source,
        };
        make_private(path).map_err(private)?;
        let conn = Connection::open(path).map_err(open)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open)?;
        make_private(path).map_err(private)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open)?;
        conn.execute_batch(SCHEMA).map_err(open)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(open)?;
            reader
                .busy_timeout(std::time::Duration::from_secs(5))
                .map_err(open)?;
            readers.push(Mutex::new(reader));
        }
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            readers,
            next_reader: AtomicUsize::new(0),
        })
    }

    /// A store in memory (tests).
    ///
    /// # Errors
    /// SQLite cannot create the schema.
    pub fn in_memory() -> Result<SqliteStore, StoreError> {
        let open = |source| StoreError::Open {
            path: ":memory:".into(),
            source,
        };
        let conn = Connection::open_in_memory().map_err(open)?;
        conn.execute_batch(SCHEMA).map_err(open)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            readers: Vec::new(),
            next_reader: AtomicUsize::new(0),
        })
    }

    /// Replaces every sealed secret by `reseal(cluster_id, name, sealed)` in one transaction
    /// (the sealing key's rotation): either all are re-sealed or none is. Returns how many.
    ///
    /// # Errors
    /// The first error of `reseal` (nothing is changed), or a store failure.
    pub fn reseal_secrets<E: From<StoreError>>(
        &self,
        mut reseal: impl FnMut(&str, &str, &[u8]) -> Result<Vec<u8>, E>,
    ) -> Result<usize, E> {
        self.write(|conn| {
            let tx = conn.transaction().map_err(query("begin re-seal"))?;
            let rows: Vec<(String, String, Vec<u8>)> = {
                let mut statement = tx
                    .prepare("SELECT cluster_id, name, sealed FROM secrets")
                    .map_err(query("read secrets"))?;
                let rows = statement
                    .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                    .map_err(query("read secrets"))?;
                rows.collect::<Result<_, _>>()
                    .map_err(query("read secrets"))?
            };
            for (cluster_id, name, sealed) in &rows {
                let fresh = reseal(cluster_id, name, sealed)?;
                tx.execute(
                    "UPDATE secrets SET sealed = ?3 WHERE cluster_id = ?1 AND name = ?2",
                    params![cluster_id, name, fresh],
                )
                .map_err(query("write secret"))?;
            }
            tx.commit().map_err(query("commit re-seal"))?;
            Ok(rows.len())
        })
    }

    /// Runs `f` on the writer.
    fn write<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        blocking(|| {
            // Statements are atomic in SQLite; a panic elsewhere cannot leave one half-done.
            let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        })
    }

    /// Runs `f` on a free reader (the writer when there are none).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> T) -> T {
        if self.readers.is_empty() {
            return self.write(|conn| f(conn));
        }
        blocking(|| {
            let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
            let n = self.readers.len();
            let free = (0..n).find_map(|i| self.readers[(start + i) % n].try_lock().ok());
            let conn: MutexGuard<'_, Connection> = match free {
                Some(conn) => conn,
                None => self.readers[start % n]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            };
            f(&conn)
        })
    }

    fn documents<T: DeserializeOwned>(
        &self,
        kind: &'static str,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<T>, StoreError> {
        let rows = self.read(|conn| -> Result<Vec<(String, String)>, StoreError> {
            let mut statement = conn.prepare_cached(sql).map_err(query("prepare"))?;
            let rows = statement
                .query_map(args, |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })
                .map_err(query("list"))?;
            rows.collect::<Result<_, _>>().map_err(query("list"))
        })?;
        rows.iter()
            .map(|(id, data)| from_json(kind, id, data))
            .collect()
    }

    fn document<T: DeserializeOwned>(
        &self,
        kind: &'static str,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<Option<T>, StoreError> {
        Ok(self.documents(kind, sql, args)?.into_iter().next())
    }
}

fn write_cluster(conn: &Connection, cluster: &ClusterRecord) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO clusters (id, state, created, data) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET state = excluded.state, data = excluded.data",
        params![
            cluster.id,
            cluster.state.as_str(),
            cluster.created,
            to_json(cluster)
        ],
    )
    .map_err(query("write cluster"))?;
    Ok(())
}

/// Writes a cluster's record but keeps its stored state: state moves only by
/// [`Store::set_cluster_state`]'s compare-and-set.
fn write_cluster_keeping_state(
    conn: &Connection,
    cluster: &ClusterRecord,
) -> Result<(), StoreError> {
    let state: Option<String> = conn
        .query_row(
            "SELECT state FROM clusters WHERE id = ?1",
            [&cluster.id],
            |row| row.get(0),
        )
        .optional()
        .map_err(query("read cluster state"))?;
    let mut record = cluster.clone();
    if let Some(state) = state.as_deref().and_then(ClusterState::parse) {
        record.state = state;
    }
    write_cluster(conn, &record)
}

/// Moves a cluster `from` → `to` inside a transaction; false when it is not in `from`.
fn move_cluster(
    conn: &Connection,
    id: &str,
    from: ClusterState,
    to: ClusterState,
    failure: Option<&str>,
) -> Result<bool, StoreError> {
    let data: Option<String> = conn
        .query_row(
            "SELECT data FROM clusters WHERE id = ?1 AND state = ?2",
            params![id, from.as_str()],
            |row| row.get(0),
        )
        .optional()
        .map_err(query("read cluster"))?;
    let Some(data) = data else {
        return Ok(false);
    };
    let mut cluster: ClusterRecord = from_json("cluster", id, &data)?;
    cluster.state = to;
    cluster.failure = failure.map(str::to_string);
    write_cluster(conn, &cluster)?;
    Ok(true)
}

fn write_job(conn: &Connection, job: &JobRecord) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO jobs (id, created, data) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET data = excluded.data",
        params![job.id, job.created, to_json(job)],
    )
    .map_err(query("write job"))?;
    Ok(())
}

/// True when the workflow `id` is recorded as running.
fn workflow_running(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    let status: Option<String> = conn
        .query_row("SELECT status FROM workflows WHERE id = ?1", [id], |row| {
            row.get(0)
        })
        .optional()
        .map_err(query("read workflow status"))?;
    Ok(status.as_deref() == Some(workflow_status(WorkflowStatus::Running)))
}

fn write_node(conn: &Connection, node: &NodeRecord) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO nodes (cluster_id, name, ordinal, data) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (cluster_id, name) DO UPDATE SET ordinal = excluded.ordinal,
         data = excluded.data",
        params![node.cluster_id, node.name, node.ordinal, to_json(node)],
    )
    .map_err(query("write node"))?;
    Ok(())
}

fn write_workflow(conn: &Connection, workflow: &WorkflowRecord) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO workflows (id, cluster_id, status, created, data) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, data = excluded.data",
        params![
            workflow.id,
            workflow.cluster_id,
            workflow_status(workflow.status),
            workflow.created,
            to_json(workflow)
        ],
    )
    .map_err(query("write workflow"))?;
    Ok(())
}

impl Store for SqliteStore {
    fn insert_version(&self, version: &VersionRecord) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute(
                "INSERT INTO versions (id, created, data) VALUES (?1, ?2, ?3)",
                params![version.id, version.created, to_json(version)],
            )
        })
        .map_err(query("insert version"))?;
        Ok(())
    }

    fn update_version(&self, version: &VersionRecord) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute(
                "UPDATE versions SET data = ?2 WHERE id = ?1",
                params![version.id, to_json(version)],
            )
        })
        .map_err(query("update version"))?;
        Ok(())
    }

    fn version(&self, id: &str) -> Result<Option<VersionRecord>, StoreError> {
        self.document(
            "version",
            "SELECT id, data FROM versions WHERE id = ?1 AND removed = 0",
            [id],
        )
    }

    fn versions(&self) -> Result<Vec<VersionRecord>, StoreError> {
        self.documents(
            "version",
            "SELECT id, data FROM versions WHERE removed = 0 ORDER BY created, id",
            [],
        )
    }

    fn remove_version(&self, id: &str) -> Result<(), StoreError> {
        self.write(|conn| conn.execute("UPDATE versions SET removed = 1 WHERE id = ?1", [id]))
            .map_err(query("remove version"))?;
        Ok(())
    }

    fn insert_cluster(&self, cluster: &ClusterRecord) -> Result<(), StoreError> {
        self.write(|conn| write_cluster(conn, cluster))
    }

    fn update_cluster(&self, cluster: &ClusterRecord) -> Result<(), StoreError> {
        self.write(|conn| write_cluster_keeping_state(conn, cluster))
    }

    fn set_cluster_state(
        &self,
        id: &str,
        from: ClusterState,
        to: ClusterState,
        failure: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.write(|conn| {
            let tx = conn.transaction().map_err(query("begin"))?;
            if !move_cluster(&tx, id, from, to, failure)? {
                return Ok(false);
            }
            tx.commit().map_err(query("commit"))?;
            Ok(true)
        })
    }

    fn cluster(&self, id: &str) -> Result<Option<ClusterRecord>, StoreError> {
        self.document(
            "cluster",
            "SELECT id, data FROM clusters WHERE id = ?1",
            [id],
        )
    }

    fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        self.documents(
            "cluster",
            "SELECT id, data FROM clusters WHERE state != 'Destroyed' ORDER BY created, id",
            [],
        )
    }

    fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        self.write(|conn| write_node(conn, node))
    }

    fn nodes(&self, cluster_id: &str) -> Result<Vec<NodeRecord>, StoreError> {
        self.documents(
            "node",
            "SELECT name, data FROM nodes WHERE cluster_id = ?1 ORDER BY ordinal, name",
            [cluster_id],
        )
    }

    fn delete_node(&self, cluster_id: &str, name: &str) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute(
                "DELETE FROM nodes WHERE cluster_id = ?1 AND name = ?2",
                [cluster_id, name],
            )
        })
        .map_err(query("delete node"))?;
        Ok(())
    }

    fn put_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        self.write(|conn| write_job(conn, job))
    }

    fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.document("job", "SELECT id, data FROM jobs WHERE id = ?1", [id])
    }

    fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.documents(
            "job",
            "SELECT id, data FROM jobs ORDER BY created DESC, id",
            [],
        )
    }

    fn prune_jobs(&self, completed_before: UnixTime) -> Result<usize, StoreError> {
        self.write(|conn| {
            conn.execute(
                "DELETE FROM jobs WHERE json_extract(data, '$.status') != 'Pending'
                 AND json_extract(data, '$.completed') < ?1",
                [completed_before],
            )
        })
        .map_err(query("prune jobs"))
    }

    fn insert_workflow(&self, workflow: &WorkflowRecord) -> Result<(), StoreError> {
        self.write(|conn| write_workflow(conn, workflow))
    }

    fn save_progress(&self, progress: Progress<'_>) -> Result<bool, StoreError> {
        self.write(|conn| {
            let tx = conn.transaction().map_err(query("begin"))?;
            if !workflow_running(&tx, &progress.workflow.id)? {
                return Ok(false);
            }
            write_workflow(&tx, progress.workflow)?;
            if let Some(cluster) = progress.cluster {
                write_cluster_keeping_state(&tx, cluster)?;
            }
            for node in progress.nodes {
                write_node(&tx, node)?;
            }
            tx.commit().map_err(query("commit progress"))?;
            Ok(true)
        })
    }

    fn begin_operation(&self, begin: Begin<'_>) -> Result<bool, StoreError> {
        self.write(|conn| {
            let tx = conn.transaction().map_err(query("begin"))?;
            match begin.cluster {
                BeginCluster::New(cluster) => write_cluster(&tx, cluster)?,
                BeginCluster::Transition { id, from, to } => {
                    if !move_cluster(&tx, id, from, to, None)? {
                        return Ok(false);
                    }
                }
            }
            if let Some((workflow_id, job)) = begin.cancels {
                let data: Option<String> = tx
                    .query_row(
                        "SELECT data FROM workflows WHERE id = ?1 AND status = 'running'",
                        [workflow_id],
                        |row| row.get(0),
                    )
                    .optional()
                    .map_err(query("read workflow"))?;
                let Some(data) = data else {
                    return Ok(false);
                };
                let mut cancelled: WorkflowRecord = from_json("workflow", workflow_id, &data)?;
                cancelled.status = WorkflowStatus::Cancelled;
                write_workflow(&tx, &cancelled)?;
                write_job(&tx, job)?;
            }
            let cluster_id = &begin.workflow.cluster_id;
            for (name, sealed) in begin.secrets {
                tx.execute(
                    "INSERT INTO secrets (cluster_id, name, sealed) VALUES (?1, ?2, ?3)
                     ON CONFLICT (cluster_id, name) DO UPDATE SET sealed = excluded.sealed",
                    params![cluster_id, name, sealed],
                )
                .map_err(query("write secret"))?;
            }
            write_job(&tx, begin.job)?;
            write_workflow(&tx, begin.workflow)?;
            tx.commit().map_err(query("commit operation start"))?;
            Ok(true)
        })
    }

    fn finish_operation(&self, finish: Finish<'_>) -> Result<bool, StoreError> {
        self.write(|conn| {
            let tx = conn.transaction().map_err(query("begin"))?;
            if !workflow_running(&tx, &finish.workflow.id)? {
                return Ok(false);
            }
            if !move_cluster(
                &tx,
                &finish.workflow.cluster_id,
                finish.from,
                finish.to,
                finish.failure,
            )? {
                return Ok(false);
            }
            write_workflow(&tx, finish.workflow)?;
            write_job(&tx, finish.job)?;
            tx.commit().map_err(query("commit operation end"))?;
            Ok(true)
        })
    }

    fn workflow(&self, id: &str) -> Result<Option<WorkflowRecord>, StoreError> {
        self.document(
            "workflow",
            "SELECT id, data FROM workflows WHERE id = ?1",
            [id],
        )
    }

    fn running_workflows(&self) -> Result<Vec<WorkflowRecord>, StoreError> {
        self.documents(
            "workflow",
            "SELECT id, data FROM workflows WHERE status = 'running' ORDER BY created, id",
            [],
        )
    }

    fn latest_workflow(&self, cluster_id: &str) -> Result<Option<WorkflowRecord>, StoreError> {
        self.document(
            "workflow",
            "SELECT id, data FROM workflows WHERE cluster_id = ?1 ORDER BY created DESC, rowid DESC
             LIMIT 1",
            [cluster_id],
        )
    }

    fn workflows(&self, cluster_id: &str) -> Result<Vec<WorkflowRecord>, StoreError> {
        self.documents(
            "workflow",
            "SELECT id, data FROM workflows WHERE cluster_id = ?1 ORDER BY created, rowid",
            [cluster_id],
        )
    }

    fn setting(&self, key: &str, account_id: Option<&str>) -> Result<Option<String>, StoreError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT value FROM settings WHERE key = ?1 AND account_id = ?2",
                [key, account_id.unwrap_or("")],
                |row| row.get(0),
            )
            .optional()
        })
        .map_err(query("read setting"))
    }

    fn set_setting(
        &self,
        key: &str,
        account_id: Option<&str>,
        value: &str,
    ) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute(
                "INSERT INTO settings (key, account_id, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key, account_id) DO UPDATE SET value = excluded.value",
                [key, account_id.unwrap_or(""), value],
            )
        })
        .map_err(query("write setting"))?;
        Ok(())
    }

    fn put_secret(&self, cluster_id: &str, name: &str, sealed: &[u8]) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute(
                "INSERT INTO secrets (cluster_id, name, sealed) VALUES (?1, ?2, ?3)
                 ON CONFLICT (cluster_id, name) DO UPDATE SET sealed = excluded.sealed",
                params![cluster_id, name, sealed],
            )
        })
        .map_err(query("write secret"))?;
        Ok(())
    }

    fn secret(&self, cluster_id: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT sealed FROM secrets WHERE cluster_id = ?1 AND name = ?2",
                [cluster_id, name],
                |row| row.get(0),
            )
            .optional()
        })
        .map_err(query("read secret"))
    }

    fn delete_secrets(&self, cluster_id: &str) -> Result<(), StoreError> {
        self.write(|conn| conn.execute("DELETE FROM secrets WHERE cluster_id = ?1", [cluster_id]))
            .map_err(query("delete secrets"))?;
        Ok(())
    }

    fn put_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.execute(
                "INSERT INTO tokens (digest, cluster_id, data) VALUES (?1, ?2, ?3)
                 ON CONFLICT (digest) DO UPDATE SET data = excluded.data",
                params![token.digest, token.cluster_id, to_json(token)],
            )
        })
        .map_err(query("write token"))?;
        Ok(())
    }

    fn token(&self, digest: &str) -> Result<Option<TokenRecord>, StoreError> {
        let data: Option<String> = self
            .read(|conn| {
                conn.query_row(
                    "SELECT data FROM tokens WHERE digest = ?1",
                    [digest],
                    |row| row.get(0),
                )
                .optional()
            })
            .map_err(query("read token"))?;
        data.map(|data| from_json("token", digest, &data))
            .transpose()
    }

    fn take_token(
        &self,
        digest: &str,
        key_sha256: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.write(|conn| {
            let tx = conn.transaction().map_err(query("begin"))?;
            let data: Option<String> = tx
                .query_row(
                    "SELECT data FROM tokens WHERE digest = ?1",
                    [digest],
                    |row| row.get(0),
                )
                .optional()
                .map_err(query("read token"))?;
            let Some(data) = data else {
                return Ok(None);
            };
            let before: TokenRecord = from_json("token", digest, &data)?;
            if !before.used {
                let mut after = before.clone();
                after.used = true;
                after.key_sha256 = Some(key_sha256.to_string());
                tx.execute(
                    "UPDATE tokens SET data = ?2 WHERE digest = ?1",
                    params![digest, to_json(&after)],
                )
                .map_err(query("use token"))?;
            }
            tx.commit().map_err(query("commit"))?;
            Ok(Some(before))
        })
    }

    fn delete_tokens(&self, cluster_id: &str) -> Result<(), StoreError> {
        self.write(|conn| conn.execute("DELETE FROM tokens WHERE cluster_id = ?1", [cluster_id]))
            .map_err(query("delete tokens"))?;
        Ok(())
    }

    fn put_event(&self, event: &EventRecord) -> Result<(), StoreError> {
        let keep = i64::try_from(super::MAX_EVENTS).unwrap_or(i64::MAX);
        self.write(|conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO events (cluster_id, data) VALUES (?1, ?2)",
                params![event.cluster_id, to_json(event)],
            )?;
            tx.execute(
                "DELETE FROM events WHERE cluster_id = ?1 AND seq NOT IN
                 (SELECT seq FROM events WHERE cluster_id = ?1 ORDER BY seq DESC LIMIT ?2)",
                params![event.cluster_id, keep],
            )?;
            tx.commit()
        })
        .map_err(query("write event"))?;
        Ok(())
    }

    fn events(&self, cluster_id: &str) -> Result<Vec<EventRecord>, StoreError> {
        let rows: Vec<String> = self
            .read(|conn| {
                let mut statement =
                    conn.prepare("SELECT data FROM events WHERE cluster_id = ?1 ORDER BY seq")?;
                let rows = statement.query_map([cluster_id], |row| row.get(0))?;
                rows.collect::<Result<Vec<String>, _>>()
            })
            .map_err(query("read events"))?;
        rows.iter()
            .map(|data| from_json("event", cluster_id, data))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NodeRole, Step, StepStatus, WorkflowKind};

    fn cluster(id: &str) -> ClusterRecord {
        ClusterRecord::for_tests(id, ClusterState::Created, 1, 1)
    }

    #[test]
    fn cluster_state_moves_only_from_the_expected_state() {
        let store = SqliteStore::in_memory().expect("store");
        store.insert_cluster(&cluster("c1")).expect("insert");
        assert!(
            store
                .set_cluster_state("c1", ClusterState::Created, ClusterState::Starting, None)
                .expect("cas")
        );
        assert!(
            !store
                .set_cluster_state("c1", ClusterState::Created, ClusterState::Error, None)
                .expect("cas")
        );
        // A record update never moves the state behind the compare-and-set's back.
        let mut stale = cluster("c1");
        stale.name = "renamed".into();
        store.update_cluster(&stale).expect("update");
        let stored = store.cluster("c1").expect("read").expect("exists");
        assert_eq!(stored.state, ClusterState::Starting);
        assert_eq!(stored.name, "renamed");
    }

    #[test]
    fn progress_is_written_together_and_running_workflows_are_found() {
        let store = SqliteStore::in_memory().expect("store");
        store.insert_cluster(&cluster("c1")).expect("insert");
        let mut workflow = WorkflowRecord {
            id: "w1".into(),
            kind: WorkflowKind::Create,
            cluster_id: "c1".into(),
            job_id: "j1".into(),
            status: WorkflowStatus::Running,
            steps: Vec::new(),
            deadline: 100,
            created: 1,
            params: crate::store::WorkflowParams::None,
            failure: None,
            rules_tagged: true,
        };
        store.insert_workflow(&workflow).expect("insert");
        workflow.start_step(Step::DeployNodes);
        workflow.finish_step(Step::DeployNodes, StepStatus::Done, "2 VMs");
        let node = NodeRecord {
            cluster_id: "c1".into(),
            name: "c-control-1".into(),
            role: NodeRole::Control,
            ordinal: 0,
            vm_id: Some("vm1".into()),
            ip: None,
            joined: false,
            kubernetes_version: None,
            added_by: None,
        };
        let mut changed = cluster("c1");
        changed.network_id = Some("n1".into());
        store
            .save_progress(Progress {
                workflow: &workflow,
                cluster: Some(&changed),
                nodes: std::slice::from_ref(&node),
            })
            .expect("progress");
        let running = store.running_workflows().expect("list");
        assert_eq!(running.len(), 1);
        assert!(running[0].is_done(Step::DeployNodes));
        assert_eq!(store.workflows("c1").expect("history"), running);
        assert!(store.workflows("c2").expect("history").is_empty());
        assert_eq!(store.nodes("c1").expect("nodes"), vec![node]);
        assert_eq!(
            store
                .cluster("c1")
                .expect("read")
                .expect("exists")
                .network_id,
            Some("n1".into())
        );
    }

    #[test]
    fn a_token_is_taken_once() {
        let store = SqliteStore::in_memory().expect("store");
        let token = TokenRecord {
            digest: "d1".into(),
            cluster_id: "c1".into(),
            node_name: "n1".into(),
            role: "worker".into(),
            expires: 10,
            used: false,
            key_sha256: None,
        };
        store.put_token(&token).expect("put");
        assert_eq!(store.token("d1").expect("read"), Some(token.clone()));
        assert_eq!(
            store.take_token("d1", "k1").expect("take"),
            Some(token.clone())
        );
        let taken = store.take_token("d1", "k2").expect("take").expect("exists");
        assert!(taken.used);
        assert_eq!(taken.key_sha256.as_deref(), Some("k1"));
        store.delete_tokens("c1").expect("delete");
        assert_eq!(store.take_token("d1", "k1").expect("take"), None);
    }

    #[test]
    fn the_database_and_its_wal_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt as _;

        use nix::sys::stat::{Mode, umask};
        // The umask is the process's; 022 is every distribution's default: set it explicitly.
        let old = umask(Mode::from_bits_truncate(0o022));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.db");
        // A database an older controller left world-readable is tightened at open, too.
        std::fs::write(&path, b"").expect("create");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let store = SqliteStore::open(&path).expect("open");
        store.insert_cluster(&cluster("c1")).expect("write");
        umask(old);
        for name in ["state.db", "state.db-wal", "state.db-shm"] {
            let file = dir.path().join(name);
            let mode = std::fs::metadata(&file).expect(name).permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
        }
    }

    #[test]
    fn reads_do_not_wait_for_a_write_transaction() {
        let dir = tempfile::tempdir().expect("dir");
        let store =
            std::sync::Arc::new(SqliteStore::open(&dir.path().join("state.db")).expect("open"));
        store.insert_cluster(&cluster("c1")).expect("insert");
        // A write transaction under way on the writer, holding it.
        let writer = store.conn.lock().expect("writer");
        writer
            .execute_batch(
                "BEGIN IMMEDIATE; UPDATE clusters SET state = 'Running',
                 data = json_set(data, '$.state', 'Running') WHERE id = 'c1';",
            )
            .expect("begin");
        let (tx, rx) = std::sync::mpsc::channel();
        let readers: Vec<_> = (0..16)
            .map(|_| {
                let (store, tx) = (store.clone(), tx.clone());
                std::thread::spawn(move || {
                    let seen = store.cluster("c1").expect("read").expect("exists");
                    let _ = tx.send(seen.state);
                })
            })
            .collect();
        // Every read completes while the transaction is open, and sees the committed state.
        for _ in 0..16 {
            let state = rx
                .recv_timeout(std::time::Duration::from_secs(30))
                .expect("a read waited for the writer");
            assert_eq!(state, ClusterState::Created);
        }
        for reader in readers {
            reader.join().expect("reader");
        }
        writer.execute_batch("COMMIT").expect("commit");
        drop(writer);
        // Once committed, every reader sees it.
        for _ in 0..8 {
            let seen = store.cluster("c1").expect("read").expect("exists");
            assert_eq!(seen.state, ClusterState::Running);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_call_waiting_on_the_disk_does_not_stall_other_tasks() {
        let store = std::sync::Arc::new(SqliteStore::in_memory().expect("store"));
        // Something holds the writer (a long transaction).
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let (held_tx, held_rx) = tokio::sync::oneshot::channel();
        let holder = {
            let store = store.clone();
            std::thread::spawn(move || {
                let _writer = store.conn.lock().expect("writer");
                let _ = held_tx.send(());
                let _ = hold_rx.recv();
            })
        };
        held_rx.await.expect("held");
        // As many writes as there are worker threads wait for it, on the workers.
        let writes: Vec<_> = (0..2)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.insert_cluster(&cluster(&format!("w{i}"))) })
            })
            .collect();
        // Other tasks still run: without handing the workers over, none would be left. (The
        // test's own thread is not a worker; it waits with a bound so a stall fails, not hangs.)
        let (ping_tx, ping_rx) = std::sync::mpsc::channel();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            let _ = ping_tx.send(42);
        });
        let ping = ping_rx.recv_timeout(std::time::Duration::from_secs(30));
        hold_tx.send(()).expect("release");
        assert_eq!(ping, Ok(42), "a task stalled behind the store");
        holder.join().expect("holder");
        for write in writes {
            write.await.expect("task").expect("write");
        }
        assert_eq!(store.clusters().expect("list").len(), 2);
    }
}
