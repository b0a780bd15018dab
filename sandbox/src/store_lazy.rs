//! A lazily pulled sandbox (`cairn pull --lazy`): its memory layers arrive on first touch.
//!
//! The pull fetches everything but the memory layers of the head's chain, which it leaves
//! sparse and lists in `lazy.json` ([`cairn_store::lazy::LazyFiles`]). `cairn start` then runs
//! `cairn __page-server NAME` beside the VMM ([`run`]), outside the jail and with the bucket's
//! credentials, and starts the VMM with `--page-server`: guest memory is anonymous, and every
//! first touch of a page is served from the layer files, whose missing chunks the server
//! fetches (chunk cache, else bucket; each checked against its name) and writes in. In the
//! background it fetches the rest; once every chunk is in it removes `lazy.json`, and later
//! starts map the files as usual. A chunk that is missing or damaged stops the VMM (never a
//! zero page), and the start fails naming the sandbox, the checkpoint and the chunk.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cairn_snapshot::checkpoint::CheckpointStore;
use cairn_store::lazy::{ChainSource, LazyFiles, LAZY_FILE};
use cairn_store::page_server::{self, FaultStats};
use cairn_store::LocalStore;

use crate::fork::snap_err;
use crate::sandbox::{io_err, Home, Paths, SandboxError};

/// The page server's socket in the sandbox's directory.
pub const SOCKET: &str = "pages.sock";
/// Its log.
pub const LOG: &str = "page-server.log";
/// Why it last stopped a VMM (a page it could not produce).
pub const ERROR_FILE: &str = "page-server.err";
/// What it fetched and served (JSON, rewritten as it goes).
pub const STATS_FILE: &str = "page-server.json";
/// The checkpoint the start restores, whose memory chain it serves.
const HEAD_FILE: &str = "page-server.checkpoint";

/// How long the server waits for its VMM to connect.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a start waits for the server's socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether the sandbox in `paths` still has memory to fetch.
pub fn is_lazy(paths: &Paths) -> bool {
    paths.dir.join(LAZY_FILE).exists()
}

/// Refuse to copy the files of a sandbox whose memory is not all here (a push, a fork): they
/// would carry zeros where chunks are still in the bucket.
pub fn refuse_while_lazy(paths: &Paths, what: &str) -> Result<(), SandboxError> {
    if !is_lazy(paths) {
        return Ok(());
    }
    Err(io_err(format!(
        "{} was pulled lazily and part of its memory is not here yet, so it cannot be {what} (hint: `cairn start` it and let its page server finish, see {}; or `cairn pull` it without --lazy)",
        paths.dir.display(),
        paths.dir.join(LOG).display()
    ))(std::io::Error::other("lazy")))
}

/// Before the VMM of a start: for a lazy sandbox, start its page server and return the VMM
/// arguments that use it (`--page-server SOCKET`, the socket as `vmm_dir` sees it); else none.
pub fn page_server_args(
    home: &Home,
    name: &str,
    paths: &Paths,
    vmm_dir: &Path,
    checkpoint: &str,
) -> Result<Vec<std::ffi::OsString>, SandboxError> {
    if !is_lazy(paths) {
        return Ok(vec![]);
    }
    // Its memory is in the bucket: without one the server could not fetch a page.
    cairn_store::StoreUrl::from_env()?.ok_or(cairn_store::StoreError::NotConfigured)?;
    let head = paths.dir.join(HEAD_FILE);
    fs::write(&head, checkpoint).map_err(io_err(format!("write {}", head.display())))?;
    let socket = paths.dir.join(SOCKET);
    let _ = fs::remove_file(&socket);
    let _ = fs::remove_file(paths.dir.join(ERROR_FILE));
    crate::detached::spawn_cairn(
        home,
        "__page-server",
        name,
        &paths.dir.join(LOG),
        "the page server",
    )?;
    let t0 = Instant::now();
    while !socket.exists() {
        if t0.elapsed() > SOCKET_TIMEOUT {
            return Err(io_err(format!(
                "start the page server of {name} (see {})",
                paths.dir.join(LOG).display()
            ))(std::io::Error::other(
                "its socket did not appear",
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(vec![
        "--page-server".into(),
        vmm_dir.join(SOCKET).into_os_string(),
    ])
}

/// A failed start of a lazy sandbox: the page server's reason, when it stopped the VMM.
pub fn explain(paths: &Paths, e: SandboxError) -> SandboxError {
    match fs::read_to_string(paths.dir.join(ERROR_FILE)) {
        Ok(why) if !why.trim().is_empty() => io_err(why.trim().to_string())(std::io::Error::other(
            format!("the VM was stopped ({e})"),
        )),
        _ => e,
    }
}

/// After a lazy pull made the sandbox in `paths`: record which of its files are lazy. `files`
/// are the manifest's entries, their paths relative to the pushing sandbox's directory.
pub fn record(
    paths: &Paths,
    sandbox: &str,
    files: Vec<cairn_store::manifest::FileEntry>,
) -> Result<(), SandboxError> {
    let store = CheckpointStore::open(&paths.checkpoints)
        .map_err(snap_err(format!("open {}", paths.checkpoints.display())))?;
    let mut out = Vec::with_capacity(files.len());
    for mut f in files {
        let (Some(ckpt), Some(file)) = (f.checkpoint.clone(), f.path.rsplit('/').next()) else {
            continue;
        };
        let path = store
            .dir_of(&ckpt)
            .map_err(snap_err(format!("checkpoint {ckpt:?}")))?
            .join(file);
        let rel = path.strip_prefix(&paths.dir).map_err(|_| {
            io_err(format!(
                "{} is outside {}",
                path.display(),
                paths.dir.display()
            ))(std::io::Error::other("layout"))
        })?;
        f.path = rel.to_string_lossy().into_owned();
        out.push(f);
    }
    LazyFiles {
        sandbox: sandbox.to_string(),
        files: out,
    }
    .save(&paths.dir)?;
    Ok(())
}

/// Whether a pulled file is left for the page server: the memory layers.
pub fn is_lazy_entry(entry: &cairn_store::manifest::FileEntry) -> bool {
    entry.checkpoint.is_some()
        && entry.path.rsplit('/').next() == Some(cairn_snapshot::checkpoint::MEM_LAYER_FILE)
}

#[derive(serde::Serialize)]
struct Stats<'a> {
    lazy_bytes: u64,
    faults: u64,
    bytes_copied: u64,
    fetch: &'a cairn_store::lazy::FetchStats,
    complete: bool,
}

fn write_stats(
    paths: &Paths,
    lazy: &LazyFiles,
    faults: &FaultStats,
    source: &ChainSource<'_>,
    complete: bool,
) {
    let stats = Stats {
        lazy_bytes: lazy.data_bytes(),
        faults: faults.faults.load(Ordering::Relaxed),
        bytes_copied: faults.bytes_copied.load(Ordering::Relaxed),
        fetch: &source.stats,
        complete,
    };
    if let Ok(json) = serde_json::to_vec(&stats) {
        let tmp = paths.dir.join(format!("{STATS_FILE}.tmp"));
        if fs::write(&tmp, json).is_ok() {
            let _ = fs::rename(&tmp, paths.dir.join(STATS_FILE));
        }
    }
}

/// `cairn __page-server NAME`: serve the VMM of a start of lazy sandbox `name`, fetch the rest
/// of its memory in the background, and remove `lazy.json` once all of it is in.
pub fn run(home: &Home, name: &str) -> Result<(), SandboxError> {
    let paths = home.paths(name);
    let Some(lazy) = LazyFiles::load(&paths.dir)? else {
        return Ok(());
    };
    let head_file = paths.dir.join(HEAD_FILE);
    let head =
        fs::read_to_string(&head_file).map_err(io_err(format!("read {}", head_file.display())))?;
    let head = head.trim();
    let store = CheckpointStore::open(&paths.checkpoints)
        .map_err(snap_err(format!("open {}", paths.checkpoints.display())))?;
    let layers = store
        .memory_layers(head)
        .map_err(snap_err(format!("checkpoint {head:?}")))?;
    let remote = crate::store_sync::remote()?;
    let local = LocalStore::in_home(home.root());
    let source = ChainSource::open(&paths.dir, &layers, &lazy, &remote, &local)?;
    let socket = paths.dir.join(SOCKET);
    let listener = bind(&socket)?;
    let accepted = accept_within(&listener, ACCEPT_TIMEOUT);
    let _ = fs::remove_file(&socket);
    let mut served = accepted.map_err(io_err(format!("{name}: no VMM connected")))?;
    eprintln!(
        "page server: serving {} MiB of {name}'s memory (checkpoint {head}, {} MiB to fetch)",
        served.memory_bytes() >> 20,
        lazy.data_bytes() >> 20
    );
    let faults = FaultStats::default();
    let done = AtomicBool::new(false);
    let background = std::env::var("CAIRN_STORE_LAZY_BACKGROUND").as_deref() != Ok("0");
    let (served_result, completed) = std::thread::scope(|s| {
        let completion = s.spawn(|| {
            if !background {
                return None;
            }
            // Let the restore and the guest's first steps have the bucket first.
            std::thread::sleep(Duration::from_secs(1));
            Some(source.complete())
        });
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                write_stats(&paths, &lazy, &faults, &source, false);
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        let r = served.run(&source, &faults);
        if let Err(why) = &r {
            let why = format!("page server of sandbox {name:?}, checkpoint {head:?}: {why}");
            eprintln!("{why}; stopping the VM");
            let _ = fs::write(paths.dir.join(ERROR_FILE), format!("{why}\n"));
            if let Some(pid) = served.peer_pid() {
                // SAFETY: kill(2) with a pid and a signal; no memory is involved.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let completed = completion.join().ok().flatten();
        done.store(true, Ordering::Relaxed);
        (r, completed)
    });
    let complete = matches!(completed, Some(Ok(()))) && served_result.is_ok();
    write_stats(&paths, &lazy, &faults, &source, complete);
    local.trim_cache(cairn_store::local::cache_limit_from_env());
    match completed {
        Some(Ok(())) if served_result.is_ok() => {
            fs::remove_file(paths.dir.join(LAZY_FILE))
                .map_err(io_err(format!("remove {LAZY_FILE} of {name}")))?;
            eprintln!("page server: {name}'s memory is all here");
        }
        Some(Err(e)) => eprintln!("page server: fetching the rest of {name}'s memory: {e}"),
        _ => {}
    }
    Ok(())
}

fn bind(socket: &Path) -> Result<UnixListener, SandboxError> {
    let _ = fs::remove_file(socket);
    let tmp: PathBuf = socket.with_extension("sock.tmp");
    let _ = fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io_err(format!("bind {}", tmp.display())))?;
    // A jailed VMM runs as the jail's user.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o666))
        .map_err(io_err(format!("chmod {}", tmp.display())))?;
    // Appears whole: a start waits for this name.
    fs::rename(&tmp, socket).map_err(io_err(format!("rename {}", socket.display())))?;
    Ok(listener)
}

fn accept_within(
    listener: &UnixListener,
    timeout: Duration,
) -> std::io::Result<page_server::Served> {
    let mut fd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(listener),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd of ours.
    let rc = unsafe { libc::poll(&mut fd, 1, timeout.as_millis() as i32) };
    if rc <= 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("none within {} s", timeout.as_secs()),
        ));
    }
    page_server::accept(listener)
}
