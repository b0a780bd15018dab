//! A lazily pulled sandbox (`cairn pull --lazy`): its memory layers arrive on first touch,
//! its disk blocks on first read.
//!
//! The pull fetches everything but the memory layers, the disk layers and the base disk image
//! of the head's chain, which it leaves sparse and lists in `lazy.json`
//! ([`cairn_store::lazy::LazyFiles`]). `cairn start` then runs `cairn __page-server NAME` beside
//! the VMM ([`run`]), outside the jail and with the bucket's credentials, and starts the VMM
//! with `--page-server` and `--block-server`: guest memory is anonymous, and every first touch
//! of a page is served from the layer files; every read of a disk range not fetched yet waits
//! for the server to fill it. The server fetches missing chunks (chunk cache, else bucket; each
//! checked against its name) and writes them in. In the background it fetches the rest; once
//! every chunk is in it removes `lazy.json`, and later starts use the files as usual. A memory
//! chunk that is missing or damaged stops the VMM (never a zero page), and the start fails
//! naming the sandbox, the checkpoint and the chunk; a disk chunk fails the guest's read with
//! an I/O error, and the reason, naming them, goes to `disk-fetch.err`, the server's log and
//! the VMM's (`cairn logs`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cairn_snapshot::checkpoint::CheckpointStore;
use cairn_store::lazy::{ChainSource, LazyFiles, LazySet, LAZY_FILE};
use cairn_store::page_server::{self, FaultStats};
use cairn_store::LocalStore;

use crate::fork::snap_err;
use crate::sandbox::{io_err, Home, Paths, SandboxError};

/// The page server's socket in the sandbox's directory.
pub const SOCKET: &str = "pages.sock";
/// The block server's socket (the same process), for the disks.
pub const BLOCK_SOCKET: &str = "blocks.sock";
/// The disk ranges it could not have, one reason a line.
pub const DISK_ERROR_FILE: &str = "disk-fetch.err";
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

/// Make every lazy file of the sandbox in `paths` whole now and end its lazy state, before an
/// operation that reads the files directly or changes them: a fork (it links them), a cold boot
/// (it reads the disk files), a checkpoint delete (it merges layers in place) or a restore of
/// the running sandbox (it maps them). Each missing chunk comes from the chunk cache or the
/// bucket and is checked against its name; chunks an earlier run recorded as here are not
/// fetched again. A page server serving the sandbox meanwhile is not disturbed: it writes the
/// same bytes, and nothing once the state has ended. Returns the bytes fetched from the bucket
/// (none for a sandbox that is not lazy).
pub fn fetch_rest(home: &Home, paths: &Paths, what: &str) -> Result<u64, SandboxError> {
    let Some(lazy) = LazyFiles::load(&paths.dir)? else {
        return Ok(0);
    };
    let context = |e: &dyn std::fmt::Display| {
        io_err(format!(
            "{} was pulled lazily; fetch the rest of its memory and disk before it is {what}",
            paths.dir.display()
        ))(std::io::Error::other(e.to_string()))
    };
    let remote = crate::store_sync::remote().map_err(|e| context(&e))?;
    let local = LocalStore::in_home(home.root());
    let set = LazySet::open(&paths.dir, &lazy, &remote, &local)?;
    set.complete().map_err(|e| context(&e))?;
    set.finish()?;
    local.trim_cache(cairn_store::local::cache_limit_from_env());
    Ok(set.stats.background_bytes_fetched.load(Ordering::Relaxed))
}

/// What of a lazy sandbox is lazy: (memory, disk).
fn lazy_kinds(lazy: &LazyFiles) -> (bool, bool) {
    let memory = lazy.files.iter().any(|f| is_memory_path(&f.path));
    (memory, lazy.files.iter().any(|f| !is_memory_path(&f.path)))
}

fn is_memory_path(path: &str) -> bool {
    path.rsplit('/').next() == Some(cairn_snapshot::checkpoint::MEM_LAYER_FILE)
}

/// Before the VMM of a start: for a lazy sandbox, start its page server and return the VMM
/// arguments that use it (`--page-server SOCKET` when memory is lazy, `--block-server SOCKET`
/// when disk files are; the sockets as `vmm_dir` sees them); else none.
pub fn page_server_args(
    home: &Home,
    name: &str,
    paths: &Paths,
    vmm_dir: &Path,
    checkpoint: &str,
) -> Result<Vec<std::ffi::OsString>, SandboxError> {
    let Some(lazy) = LazyFiles::load(&paths.dir)? else {
        return Ok(vec![]);
    };
    let (memory, disk) = lazy_kinds(&lazy);
    // Its memory is in the bucket: without one the server could not fetch a page.
    cairn_store::StoreUrl::from_env()?.ok_or(cairn_store::StoreError::NotConfigured)?;
    let head = paths.dir.join(HEAD_FILE);
    fs::write(&head, checkpoint).map_err(io_err(format!("write {}", head.display())))?;
    let mut sockets = vec![];
    if memory {
        sockets.push(("--page-server", SOCKET));
    }
    if disk {
        sockets.push(("--block-server", BLOCK_SOCKET));
    }
    for (_, s) in &sockets {
        let _ = fs::remove_file(paths.dir.join(s));
    }
    let _ = fs::remove_file(paths.dir.join(ERROR_FILE));
    let _ = fs::remove_file(paths.dir.join(DISK_ERROR_FILE));
    crate::detached::spawn_cairn(
        home,
        "__page-server",
        name,
        &paths.dir.join(LOG),
        "the page server",
    )?;
    let t0 = Instant::now();
    while !sockets.iter().all(|(_, s)| paths.dir.join(s).exists()) {
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
    Ok(sockets
        .iter()
        .flat_map(|(flag, s)| [flag.into(), vmm_dir.join(s).into_os_string()])
        .collect())
}

/// A failed start of a lazy sandbox: the page server's reason, when it stopped the VMM, or the
/// first disk range it could not have.
pub fn explain(paths: &Paths, e: SandboxError) -> SandboxError {
    // A sandbox whose files are all here has no server: an error file left is an old one.
    if !is_lazy(paths) {
        return e;
    }
    let reason = |file| {
        fs::read_to_string(paths.dir.join(file))
            .ok()
            .and_then(|why| why.lines().next().map(str::to_string))
            .filter(|why| !why.trim().is_empty())
    };
    if let Some(why) = reason(ERROR_FILE) {
        return io_err(why)(std::io::Error::other(format!("the VM was stopped ({e})")));
    }
    match reason(DISK_ERROR_FILE) {
        Some(why) => io_err(why)(std::io::Error::other(format!(
            "the guest's disk read failed ({e})"
        ))),
        None => e,
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
            // The base disk image: where the pull put it, under the sandbox's directory.
            let path = f.path_under(&paths.dir)?;
            if !path.is_file() {
                return Err(io_err(format!("lazy file {}", path.display()))(
                    std::io::Error::other("not made by the pull"),
                ));
            }
            out.push(f);
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
    // A record of what is present belongs to the files it was written for, never to these.
    let stale = paths.dir.join(cairn_store::presence::PRESENT_FILE);
    match fs::remove_file(&stale) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_err(format!("remove {}", stale.display()))(e))
        }
        _ => {}
    }
    LazyFiles {
        sandbox: sandbox.to_string(),
        files: out,
    }
    .save(&paths.dir)?;
    Ok(())
}

/// Whether a pulled file is left for the page server: the memory layers, the disk layers and
/// the base disk image (the indexes, states and config files are fetched).
pub fn is_lazy_entry(entry: &cairn_store::manifest::FileEntry) -> bool {
    let file = entry.path.rsplit('/').next().unwrap_or_default();
    match &entry.checkpoint {
        Some(_) => {
            file == cairn_snapshot::checkpoint::MEM_LAYER_FILE
                || (file.starts_with("disk.") && file.ends_with(".layer"))
        }
        None => entry.path == crate::store_sync::DISK_IMAGE,
    }
}

#[derive(serde::Serialize)]
struct Stats<'a> {
    lazy_bytes: u64,
    memory_lazy_bytes: u64,
    disk_lazy_bytes: u64,
    faults: u64,
    bytes_copied: u64,
    fetch: &'a cairn_store::lazy::FetchStats,
    complete: bool,
}

fn write_stats(
    paths: &Paths,
    lazy: &LazyFiles,
    faults: &FaultStats,
    set: &LazySet<'_>,
    complete: bool,
) {
    let memory_lazy_bytes = set.data_bytes(|p| is_memory_path(&p.to_string_lossy()));
    let stats = Stats {
        lazy_bytes: lazy.data_bytes(),
        memory_lazy_bytes,
        disk_lazy_bytes: lazy.data_bytes() - memory_lazy_bytes,
        faults: faults.faults.load(Ordering::Relaxed),
        bytes_copied: faults.bytes_copied.load(Ordering::Relaxed),
        fetch: &set.stats,
        complete,
    };
    if let Ok(json) = serde_json::to_vec(&stats) {
        let tmp = paths.dir.join(format!("{STATS_FILE}.tmp"));
        if fs::write(&tmp, json).is_ok() {
            let _ = fs::rename(&tmp, paths.dir.join(STATS_FILE));
        }
    }
}

/// `cairn __page-server NAME`: serve the VMM of a start of lazy sandbox `name` (its memory on
/// `pages.sock`, its disks on `blocks.sock`), fetch the rest of its files in the background,
/// and remove `lazy.json` once all of them are in.
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
    let set = LazySet::open(&paths.dir, &lazy, &remote, &local)?;
    let source = ChainSource::open(&set, &layers)?;
    let (memory, disk) = lazy_kinds(&lazy);
    // Both sockets before either accepts: the start waits for every socket it passes.
    let disk_listener = match disk {
        true => Some(bind(&paths.dir.join(BLOCK_SOCKET))?),
        false => None,
    };
    let memory_listener = match memory {
        true => Some(bind(&paths.dir.join(SOCKET))?),
        false => None,
    };
    let context = format!("sandbox {name:?}, checkpoint {head:?}");
    eprintln!(
        "page server: {context}: {} MiB of memory and {} MiB of disk to fetch",
        set.data_bytes(|p| is_memory_path(&p.to_string_lossy())) >> 20,
        set.data_bytes(|p| !is_memory_path(&p.to_string_lossy())) >> 20
    );
    let faults = FaultStats::default();
    let connected = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let background = std::env::var("CAIRN_STORE_LAZY_BACKGROUND").as_deref() != Ok("0");
    let cache_limit = cairn_store::local::cache_limit_from_env();
    let (served_result, completed) = std::thread::scope(|s| {
        let completion = s.spawn(|| {
            let t0 = Instant::now();
            while !connected.load(Ordering::Relaxed) {
                if !background || done.load(Ordering::Relaxed) || t0.elapsed() > ACCEPT_TIMEOUT {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // Let the restore and the guest's first steps have the bucket first.
            std::thread::sleep(Duration::from_secs(1));
            Some(set.complete())
        });
        s.spawn(|| {
            let mut ticks = 0u32;
            while !done.load(Ordering::Relaxed) {
                write_stats(&paths, &lazy, &faults, &set, false);
                ticks += 1;
                // What is here is remembered for the next start (files synced first).
                if ticks % 4 == 0 {
                    if let Err(e) = set.flush_presence() {
                        eprintln!("page server: record what is here: {e}");
                    }
                }
                // The chunk cache keeps its limit while a large disk streams in.
                if ticks % 20 == 0 {
                    local.trim_cache(cache_limit);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        let disks = disk_listener.map(|listener| {
            let (set, context, paths, connected) = (&set, &context, &paths, &connected);
            s.spawn(move || serve_disks(&listener, set, context, paths, connected))
        });
        let r = match memory_listener {
            Some(listener) => {
                serve_memory(&listener, &source, &faults, &context, &paths, &connected)
            }
            None => Ok(()),
        };
        let disk_result = disks.map(|d| {
            d.join()
                .unwrap_or_else(|_| Err("the block server panicked".to_string()))
        });
        let r = r.and(disk_result.unwrap_or(Ok(())));
        done.store(true, Ordering::Relaxed);
        let completed = completion.join().ok().flatten();
        (r, completed)
    });
    let complete = matches!(completed, Some(Ok(()))) && served_result.is_ok();
    if let Err(e) = set.flush_presence() {
        eprintln!("page server: record what is here: {e}");
    }
    write_stats(&paths, &lazy, &faults, &set, complete);
    local.trim_cache(cache_limit);
    if let Err(e) = &served_result {
        eprintln!("page server: {name}: {e}");
    }
    match completed {
        Some(Ok(())) if served_result.is_ok() => {
            set.finish()?;
            eprintln!("page server: {name}'s memory and disk are all here");
        }
        Some(Err(e)) => eprintln!("page server: fetching the rest of {name}'s files: {e}"),
        _ => {}
    }
    Ok(())
}

/// Serve the VMM's memory faults until it goes; a page that cannot be had stops it.
fn serve_memory(
    listener: &UnixListener,
    source: &ChainSource<'_, '_>,
    faults: &FaultStats,
    context: &str,
    paths: &Paths,
    connected: &AtomicBool,
) -> Result<(), String> {
    let accepted = within(listener, ACCEPT_TIMEOUT).and_then(|()| page_server::accept(listener));
    let _ = fs::remove_file(paths.dir.join(SOCKET));
    let mut served = accepted.map_err(|e| format!("no VMM connected for memory: {e}"))?;
    connected.store(true, Ordering::Relaxed);
    eprintln!(
        "page server: serving {} MiB of memory",
        served.memory_bytes() >> 20
    );
    let r = served.run(source, faults);
    if let Err(why) = &r {
        let why = format!("page server of {context}: {why}");
        eprintln!("{why}; stopping the VM");
        let _ = fs::write(paths.dir.join(ERROR_FILE), format!("{why}\n"));
        if let Some(pid) = served.peer_pid() {
            // SAFETY: kill(2) with a pid and a signal; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    r
}

/// Serve the VMM's disk reads until it goes; a range that cannot be had is refused to it (the
/// guest gets an I/O error) and recorded in [`DISK_ERROR_FILE`].
fn serve_disks(
    listener: &UnixListener,
    set: &LazySet<'_>,
    context: &str,
    paths: &Paths,
    connected: &AtomicBool,
) -> Result<(), String> {
    let accepted = within(listener, ACCEPT_TIMEOUT).and_then(|()| listener.accept());
    let _ = fs::remove_file(paths.dir.join(BLOCK_SOCKET));
    let (stream, _) = accepted.map_err(|e| format!("no VMM connected for disks: {e}"))?;
    connected.store(true, Ordering::Relaxed);
    eprintln!("page server: serving disk reads");
    let on_error = |why: &str| {
        eprintln!("block server: {why}");
        let line = format!("{why}\n");
        let appended = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(paths.dir.join(DISK_ERROR_FILE))
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
        if let Err(e) = appended {
            eprintln!("block server: record the error: {e}");
        }
    };
    cairn_store::disk_server::serve(stream, set, &format!("disk of {context}"), &on_error)
        .map_err(|e| format!("the disk connection: {e}"))
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

/// Wait until `listener` has a connection to accept.
fn within(listener: &UnixListener, timeout: Duration) -> std::io::Result<()> {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_store::manifest::FileEntry;

    fn entry(path: &str, checkpoint: Option<&str>) -> FileEntry {
        FileEntry {
            path: path.into(),
            checkpoint: checkpoint.map(Into::into),
            mode: 0o644,
            content: Default::default(),
        }
    }

    #[test]
    fn memory_disk_layers_and_the_base_image_are_lazy_the_rest_is_fetched() {
        let lazy = [
            entry("checkpoints/c1/mem.layer", Some("c1")),
            entry("checkpoints/c1/disk.rootfs.layer", Some("c1")),
            entry("disk.img", None),
        ];
        let eager = [
            entry("checkpoints/c1/mem.layer.index", Some("c1")),
            entry("checkpoints/c1/disk.rootfs.layer.index", Some("c1")),
            entry("checkpoints/c1/state", Some("c1")),
            entry("checkpoints/c1/meta.json", Some("c1")),
            entry("vm.json", None),
            entry("net.json", None),
        ];
        assert!(lazy.iter().all(is_lazy_entry));
        assert!(!eager.iter().any(is_lazy_entry));
        let kinds = |files: &[FileEntry]| {
            lazy_kinds(&LazyFiles {
                sandbox: "s".into(),
                files: files.to_vec(),
            })
        };
        assert_eq!(kinds(&lazy), (true, true));
        // A lazy.json from before disks were lazy: memory alone, no block server.
        assert_eq!(kinds(&lazy[..1]), (true, false));
        assert_eq!(kinds(&lazy[1..]), (false, true));
    }
}
