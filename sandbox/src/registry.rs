//! The sandbox registry: one SQLite database under `CAIRN_HOME` with a row per sandbox.
//!
//! Rows record what the CLI last did; they are not trusted blindly. `cairn ls` checks each
//! recorded VMM (is the pid alive, does its socket answer) before reporting a state.

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The database could not be opened or queried.
    #[error("registry {path}")]
    Sql {
        /// The database file.
        path: PathBuf,
        /// The error.
        #[source]
        source: rusqlite::Error,
    },
    /// A sandbox of that name exists already.
    #[error("sandbox {0:?} already exists (hint: pick another name, or `cairn rm {0}` first)")]
    NameTaken(String),
    /// No sandbox of that name.
    #[error("sandbox {0:?} not found (hint: `cairn ls` lists sandboxes)")]
    NotFound(String),
}

/// What the CLI last recorded about a sandbox's VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Being created: the VMM is booting.
    Creating,
    /// A VMM is running.
    Running,
    /// Checkpointed and no VMM runs (`cairn stop`, or the idle watcher).
    Stopped,
    /// No VMM runs and there is no checkpoint to resume: the VMM died before the first one
    /// (found by `cairn doctor`). `cairn start` cold-boots it from its own disk.
    Cold,
}

impl State {
    /// The name stored in the database and shown by `cairn ls`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Creating => "creating",
            State::Running => "running",
            State::Stopped => "stopped",
            State::Cold => "cold",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "running" => State::Running,
            "stopped" => State::Stopped,
            "cold" => State::Cold,
            _ => State::Creating,
        }
    }
}

/// One sandbox's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Unique name.
    pub name: String,
    /// Last recorded state.
    pub state: State,
    /// The sandbox's directory (disk, config, sockets, checkpoints, console log).
    pub dir: PathBuf,
    /// The VMM's pid while running.
    pub pid: Option<u32>,
    /// The VMM's REST API socket.
    pub api_sock: PathBuf,
    /// The VMM's vsock Unix socket.
    pub vsock_sock: PathBuf,
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// Disk size in GiB (sparse).
    pub disk_gib: u64,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds of the last exec, cp or lifecycle change.
    pub last_activity: u64,
    /// The checkpoint the running VM descends from (or is stopped at).
    pub head_checkpoint: Option<String>,
    /// Seconds of quiet before the idle watcher stops the VMM; 0 = never.
    pub idle_timeout: u64,
}

/// Unix time in seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// The open registry.
#[derive(Debug)]
pub struct Registry {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sandboxes (
    name TEXT PRIMARY KEY NOT NULL,
    state TEXT NOT NULL,
    dir TEXT NOT NULL,
    pid INTEGER,
    api_sock TEXT NOT NULL,
    vsock_sock TEXT NOT NULL,
    cpus INTEGER NOT NULL,
    mem_mib INTEGER NOT NULL,
    disk_gib INTEGER NOT NULL,
    created INTEGER NOT NULL,
    last_activity INTEGER NOT NULL,
    head_checkpoint TEXT,
    idle_timeout INTEGER NOT NULL DEFAULT 0
);";

const COLUMNS: &str = "name, state, dir, pid, api_sock, vsock_sock, cpus, mem_mib, disk_gib, \
                       created, last_activity, head_checkpoint, idle_timeout";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Record> {
    let state: String = r.get(1)?;
    let dir: String = r.get(2)?;
    let api: String = r.get(4)?;
    let vsock: String = r.get(5)?;
    Ok(Record {
        name: r.get(0)?,
        state: State::parse(&state),
        dir: dir.into(),
        pid: r.get(3)?,
        api_sock: api.into(),
        vsock_sock: vsock.into(),
        cpus: r.get(6)?,
        mem_mib: r.get(7)?,
        disk_gib: r.get(8)?,
        created: r.get(9)?,
        last_activity: r.get(10)?,
        head_checkpoint: r.get(11)?,
        idle_timeout: r.get(12)?,
    })
}

/// A sandbox's network as the registry records it (`net_addr`, `net_mac`, `net_ns` columns,
/// NULL for a sandbox without network or from before networks existed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetColumns {
    /// The guest's IPv4 address.
    pub addr: String,
    /// The guest's MAC.
    pub mac: String,
    /// The network namespace's name.
    pub netns: String,
}

/// Adds the network columns to a registry made before they existed (older rows read NULL).
fn add_net_columns(conn: &Connection) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('sandboxes')")?;
    let cols: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for c in ["net_addr", "net_mac", "net_ns"] {
        if !cols.iter().any(|x| x == c) {
            // A concurrent open may have added it meanwhile.
            match conn.execute_batch(&format!("ALTER TABLE sandboxes ADD COLUMN {c} TEXT")) {
                Err(e) if e.to_string().contains("duplicate column") => {}
                other => other?,
            }
        }
    }
    Ok(())
}

fn sql_err(path: &Path) -> impl Fn(rusqlite::Error) -> RegistryError + '_ {
    move |source| RegistryError::Sql {
        path: path.to_path_buf(),
        source,
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl Registry {
    /// Opens (creating if needed) `<home>/registry.db`.
    pub fn open(home: &Path) -> Result<Registry, RegistryError> {
        let path = home.join("registry.db");
        let err = |source| RegistryError::Sql {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(err)?;
        // Concurrent CLI calls wait for each other's short transactions instead of failing.
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        // Write-ahead logging: a commit is one append and (at `synchronous=FULL`, the default
        // kept for every real change) one fsync of the log, and readers do not block the
        // writer. Should the switch fail (another process holds the database this instant),
        // the rollback journal stays, which is as safe, and a later open switches.
        let _ = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0));
        conn.execute_batch(SCHEMA).map_err(err)?;
        add_net_columns(&conn).map_err(err)?;
        Ok(Registry { conn, path })
    }

    // Write transactions are IMMEDIATE: they take the write lock up front, so a concurrent
    // writer waits (busy timeout) instead of failing on a read-to-write upgrade.

    /// Adds a new sandbox; fails with [`RegistryError::NameTaken`] if the name is in use.
    pub fn insert(&mut self, r: &Record) -> Result<(), RegistryError> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err(&path))?;
        let exists: Option<String> = tx
            .query_row(
                "SELECT name FROM sandboxes WHERE name = ?1",
                [&r.name],
                |row| row.get(0),
            )
            .optional()
            .map_err(sql_err(&path))?;
        if exists.is_some() {
            return Err(RegistryError::NameTaken(r.name.clone()));
        }
        tx.execute(
            &format!(
                "INSERT INTO sandboxes ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ),
            params![
                r.name,
                r.state.as_str(),
                path_str(&r.dir),
                r.pid,
                path_str(&r.api_sock),
                path_str(&r.vsock_sock),
                r.cpus,
                r.mem_mib,
                r.disk_gib,
                r.created,
                r.last_activity,
                r.head_checkpoint,
                r.idle_timeout,
            ],
        )
        .map_err(sql_err(&path))?;
        tx.commit().map_err(sql_err(&path))
    }

    /// The row for `name`.
    pub fn get(&self, name: &str) -> Result<Record, RegistryError> {
        let path = self.path.as_path();
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM sandboxes WHERE name = ?1"),
                [name],
                from_row,
            )
            .optional()
            .map_err(sql_err(path))?
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))
    }

    /// Every row, by name.
    pub fn list(&self) -> Result<Vec<Record>, RegistryError> {
        let path = self.path.as_path();
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM sandboxes ORDER BY name"))
            .map_err(sql_err(path))?;
        let rows = stmt
            .query_map([], from_row)
            .map_err(sql_err(path))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql_err(path));
        rows
    }

    /// Records a state change (and the VMM's pid, `None` when none runs) in one transaction.
    pub fn set_state(
        &mut self,
        name: &str,
        state: State,
        pid: Option<u32>,
    ) -> Result<(), RegistryError> {
        self.update(name, |tx| {
            tx.execute(
                "UPDATE sandboxes SET state = ?2, pid = ?3, last_activity = ?4 WHERE name = ?1",
                params![name, state.as_str(), pid, now()],
            )
        })
    }

    /// Records a VMM restored from checkpoint `head` as running, and the sandbox as used now,
    /// in one transaction (one commit on a wake's path instead of three).
    pub fn set_running_from(
        &mut self,
        name: &str,
        pid: u32,
        head: &str,
    ) -> Result<(), RegistryError> {
        self.update(name, |tx| {
            tx.execute(
                "UPDATE sandboxes SET state = ?2, pid = ?3, head_checkpoint = ?4, last_activity = ?5 WHERE name = ?1",
                params![name, State::Running.as_str(), pid, head, now()],
            )
        })
    }

    /// Records the checkpoint the VM now descends from.
    pub fn set_head(&mut self, name: &str, head: Option<&str>) -> Result<(), RegistryError> {
        self.update(name, |tx| {
            tx.execute(
                "UPDATE sandboxes SET head_checkpoint = ?2 WHERE name = ?1",
                params![name, head],
            )
        })
    }

    /// Marks the sandbox as used now (the idle watcher measures quiet from here). Already
    /// marked this second: nothing is written. The write is not synced (`synchronous=NORMAL`
    /// in WAL mode: no fsync, which is tens of ms on a busy disk, on every exec's path): a
    /// power loss may forget the last touches, never corrupt the database, and the next real
    /// change's fsync makes them durable too.
    pub fn touch(&mut self, name: &str) -> Result<(), RegistryError> {
        let path = self.path.clone();
        self.conn
            .execute_batch("PRAGMA synchronous=NORMAL")
            .map_err(sql_err(&path))?;
        let r = self.touch_row(name);
        let back = self.conn.execute_batch("PRAGMA synchronous=FULL");
        r?;
        back.map_err(sql_err(&path))
    }

    fn touch_row(&mut self, name: &str) -> Result<(), RegistryError> {
        self.update(name, |tx| {
            let n = tx.execute(
                "UPDATE sandboxes SET last_activity = ?2 WHERE name = ?1 AND last_activity <> ?2",
                params![name, now()],
            )?;
            if n > 0 {
                return Ok(n);
            }
            tx.query_row(
                "SELECT COUNT(*) FROM sandboxes WHERE name = ?1",
                [name],
                |row| row.get::<_, i64>(0),
            )
            .map(|c| c as usize)
        })
    }

    /// Deletes the row.
    pub fn remove(&mut self, name: &str) -> Result<(), RegistryError> {
        self.update(name, |tx| {
            tx.execute("DELETE FROM sandboxes WHERE name = ?1", [name])
        })
    }

    /// Records the sandbox's network (guest address, MAC, namespace), or none.
    pub fn set_net(&mut self, name: &str, net: Option<&NetColumns>) -> Result<(), RegistryError> {
        let (a, m, n) = match net {
            Some(c) => (Some(&c.addr), Some(&c.mac), Some(&c.netns)),
            None => (None, None, None),
        };
        self.update(name, |tx| {
            tx.execute(
                "UPDATE sandboxes SET net_addr = ?2, net_mac = ?3, net_ns = ?4 WHERE name = ?1",
                params![name, a, m, n],
            )
        })
    }

    /// Every sandbox's network: (name, columns) for rows that have one.
    pub fn nets(&self) -> Result<Vec<(String, NetColumns)>, RegistryError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT name, net_addr, net_mac, net_ns FROM sandboxes \
                 WHERE net_addr IS NOT NULL ORDER BY name",
            )
            .map_err(sql_err(&self.path))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    NetColumns {
                        addr: r.get(1)?,
                        mac: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                        netns: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                    },
                ))
            })
            .map_err(sql_err(&self.path))?;
        rows.collect::<Result<_, _>>().map_err(sql_err(&self.path))
    }

    fn update(
        &mut self,
        name: &str,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<usize>,
    ) -> Result<(), RegistryError> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err(&path))?;
        let n = f(&tx).map_err(sql_err(&path))?;
        if n == 0 {
            return Err(RegistryError::NotFound(name.to_string()));
        }
        tx.commit().map_err(sql_err(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> Record {
        Record {
            name: name.into(),
            state: State::Creating,
            dir: format!("/x/{name}").into(),
            pid: None,
            api_sock: "/x/api.sock".into(),
            vsock_sock: "/x/vsock.sock".into(),
            cpus: 2,
            mem_mib: 512,
            disk_gib: 100,
            created: 1,
            last_activity: 1,
            head_checkpoint: None,
            idle_timeout: 30,
        }
    }

    #[test]
    fn insert_get_list_update_remove() {
        let home = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(home.path()).unwrap();
        reg.insert(&record("b")).unwrap();
        reg.insert(&record("a")).unwrap();
        assert_eq!(reg.get("a").unwrap(), record("a"));
        let names: Vec<_> = reg.list().unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["a", "b"]);

        reg.set_state("a", State::Running, Some(42)).unwrap();
        reg.set_head("a", Some("c1")).unwrap();
        let a = reg.get("a").unwrap();
        assert_eq!((a.state, a.pid), (State::Running, Some(42)));
        assert_eq!(a.head_checkpoint.as_deref(), Some("c1"));
        assert!(a.last_activity >= now() - 5);

        reg.set_state("b", State::Stopped, None).unwrap();
        reg.set_running_from("b", 7, "c2").unwrap();
        let b = reg.get("b").unwrap();
        assert_eq!((b.state, b.pid), (State::Running, Some(7)));
        assert_eq!(b.head_checkpoint.as_deref(), Some("c2"));
        assert!(b.last_activity >= now() - 5);

        reg.remove("a").unwrap();
        assert!(matches!(reg.get("a"), Err(RegistryError::NotFound(_))));
        assert!(matches!(
            reg.set_running_from("a", 1, "c1"),
            Err(RegistryError::NotFound(_))
        ));
        assert!(matches!(
            reg.set_state("a", State::Stopped, None),
            Err(RegistryError::NotFound(_))
        ));
    }

    #[test]
    fn the_registry_is_in_wal_mode_and_a_touch_leaves_full_sync_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        reg.insert(&record("a")).unwrap();
        let mode: String = reg
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        reg.touch("a").unwrap();
        assert!(reg.touch("nope").is_err());
        let sync: i64 = reg
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "FULL again after a touch");
        // Another connection sees the touched row.
        assert_eq!(Registry::open(dir.path()).unwrap().list().unwrap().len(), 1);
    }

    #[test]
    fn touch_twice_in_a_second_is_fine_and_a_missing_row_is_not_found() {
        let home = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(home.path()).unwrap();
        reg.insert(&record("t")).unwrap();
        reg.touch("t").unwrap();
        reg.touch("t").unwrap();
        assert!(reg.get("t").unwrap().last_activity >= now() - 1);
        assert!(matches!(reg.touch("gone"), Err(RegistryError::NotFound(_))));
    }

    #[test]
    fn name_taken_is_refused_and_persisted_across_opens() {
        let home = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(home.path()).unwrap();
        reg.insert(&record("a")).unwrap();
        let err = reg.insert(&record("a")).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        drop(reg);
        let reg = Registry::open(home.path()).unwrap();
        assert_eq!(reg.list().unwrap().len(), 1);
    }

    #[test]
    fn concurrent_writers_do_not_fail() {
        let home = tempfile::tempdir().unwrap();
        Registry::open(home.path()).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let p = home.path().to_path_buf();
                std::thread::spawn(move || {
                    let mut reg = Registry::open(&p).unwrap();
                    reg.insert(&record(&format!("s{i}"))).unwrap();
                    for _ in 0..10 {
                        reg.touch(&format!("s{i}")).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let reg = Registry::open(home.path()).unwrap();
        assert_eq!(reg.list().unwrap().len(), 8);
    }

    #[test]
    fn an_old_registry_gains_the_network_columns() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("registry.db")).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
        }
        let mut reg = Registry::open(dir.path()).unwrap();
        reg.insert(&record("old")).unwrap();
        assert!(reg.nets().unwrap().is_empty());
        let net = NetColumns {
            addr: "10.213.0.2".into(),
            mac: "02:ca:0a:d5:00:02".into(),
            netns: "cairn-abcd12345678".into(),
        };
        reg.set_net("old", Some(&net)).unwrap();
        drop(reg);
        let mut reg = Registry::open(dir.path()).unwrap();
        assert_eq!(reg.nets().unwrap(), vec![("old".to_string(), net)]);
        assert_eq!(reg.get("old").unwrap().name, "old");
        reg.set_net("old", None).unwrap();
        assert!(reg.nets().unwrap().is_empty());
    }
}
