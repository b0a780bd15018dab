//! Turning a file or directory into a tree stream and back (see [`crate::proto::TreeMsg`]).
//! Used by the agent for `Get`/`Put` and by the client for `put`/`get`.

use crate::proto::{join_relative, EntryKind, TreeMsg, CHUNK};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Counts of what a tree transfer moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Regular files.
    pub files: u64,
    /// Directories, the root included.
    pub dirs: u64,
    /// File content bytes.
    pub bytes: u64,
    /// Entries left out because they are neither files nor directories.
    pub skipped: u64,
}

/// Why a tree could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A local file system operation failed.
    #[error("{op} {path}")]
    Fs {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The root is neither a file nor a directory.
    #[error("{0} is neither a regular file nor a directory")]
    Unsupported(PathBuf),
    /// The stream broke the tree-stream rules.
    #[error("bad tree stream: {0}")]
    Protocol(String),
    /// Sending a message failed.
    #[error("sending tree stream")]
    Send(#[source] Box<dyn std::error::Error + Send + Sync>),
}

fn fs_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TreeError + 'a {
    move |source| TreeError::Fs {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Streams the file or directory at `root` through `emit`, ending with `TreeMsg::End`.
/// Directories are walked depth-first with an explicit stack; symlinks below the root are not
/// followed (they are counted as skipped); the root itself is followed.
pub fn send_tree<E>(root: &Path, mut emit: E) -> Result<TransferStats, TreeError>
where
    E: FnMut(TreeMsg) -> Result<(), Box<dyn std::error::Error + Send + Sync>>,
{
    let mut emit = |m| emit(m).map_err(TreeError::Send);
    let mut stats = TransferStats::default();
    let meta = fs::metadata(root).map_err(fs_err("stat", root))?;
    let mut stack: Vec<(PathBuf, String, fs::Metadata)> =
        vec![(root.to_path_buf(), String::new(), meta)];
    let mut buf = vec![0u8; CHUNK];
    while let Some((path, rel, meta)) = stack.pop() {
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_file() {
            let size = meta.len();
            emit(TreeMsg::Entry {
                path: rel,
                kind: EntryKind::File,
                mode,
                size,
            })?;
            let file = File::open(&path).map_err(fs_err("open", &path))?;
            let mut file = file.take(size);
            let mut sent = 0u64;
            loop {
                let n = file.read(&mut buf).map_err(fs_err("read", &path))?;
                if n == 0 {
                    break;
                }
                emit(TreeMsg::Data(buf[..n].to_vec()))?;
                sent += n as u64;
            }
            if sent != size {
                return Err(TreeError::Fs {
                    op: "read",
                    path,
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while being sent",
                    ),
                });
            }
            stats.files += 1;
            stats.bytes += size;
        } else if meta.is_dir() {
            emit(TreeMsg::Entry {
                path: rel.clone(),
                kind: EntryKind::Dir,
                mode,
                size: 0,
            })?;
            stats.dirs += 1;
            let mut children = Vec::new();
            for entry in fs::read_dir(&path).map_err(fs_err("list", &path))? {
                let entry = entry.map_err(fs_err("list", &path))?;
                let child = entry.path();
                let meta = fs::symlink_metadata(&child).map_err(fs_err("stat", &child))?;
                if !(meta.is_file() || meta.is_dir()) {
                    stats.skipped += 1;
                    continue;
                }
                let name = entry.file_name().into_string().map_err(|_| {
                    TreeError::Protocol(format!("{} is not valid UTF-8", child.display()))
                })?;
                let child_rel = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                children.push((child, child_rel, meta));
            }
            // Reverse order so that entries pop off the stack in name order.
            children.sort_by(|a, b| b.1.cmp(&a.1));
            stack.extend(children);
        } else {
            return Err(TreeError::Unsupported(path));
        }
    }
    emit(TreeMsg::End {
        skipped: stats.skipped,
    })?;
    Ok(stats)
}

/// Writes a tree stream under a destination path, one message at a time.
///
/// Parents of the destination are created. Existing files are overwritten and existing
/// directories merged into. Directory modes are applied at the end, so that a read-only
/// directory can still be filled.
#[derive(Debug)]
pub struct TreeWriter {
    root: PathBuf,
    root_kind: Option<EntryKind>,
    /// The file being written and the bytes it still expects.
    current: Option<(File, PathBuf, u64)>,
    dirs: Vec<(PathBuf, u32)>,
    stats: TransferStats,
    /// Permission bits kept from the stream's modes.
    keep: u32,
}

/// The bits a tree copied out of a guest keeps on the host: the permission bits (no setuid,
/// setgid or sticky bit: a guest must not plant privileges on the host), less the umask.
pub fn host_mode_mask() -> u32 {
    0o777 & !current_umask()
}

/// This process's umask, from `/proc/self/status` (reading it with `umask(2)` would change it
/// for a moment under other threads); 0o022 when unknown.
fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

impl TreeWriter {
    /// A writer that will create the tree at `root`, keeping every mode bit (inside the guest).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        TreeWriter {
            root: root.into(),
            root_kind: None,
            current: None,
            dirs: Vec::new(),
            stats: TransferStats::default(),
            keep: 0o7777,
        }
    }

    /// A writer for the host: modes lose setuid, setgid and sticky bits and honour the umask
    /// ([`host_mode_mask`]).
    pub fn for_host(root: impl Into<PathBuf>) -> Self {
        TreeWriter {
            keep: host_mode_mask(),
            ..Self::new(root)
        }
    }

    /// Applies one message. Returns the statistics once `End` has been applied.
    pub fn apply(&mut self, msg: TreeMsg) -> Result<Option<TransferStats>, TreeError> {
        match msg {
            TreeMsg::Entry {
                path,
                kind,
                mode,
                size,
            } => {
                self.finish_file()?;
                let target = match (self.root_kind, path.is_empty()) {
                    (None, true) => {
                        self.root_kind = Some(kind);
                        if let Some(parent) =
                            self.root.parent().filter(|p| !p.as_os_str().is_empty())
                        {
                            fs::create_dir_all(parent)
                                .map_err(fs_err("create directory", parent))?;
                        }
                        self.root.clone()
                    }
                    (Some(EntryKind::Dir), false) => {
                        join_relative(&self.root, &path).map_err(TreeError::Protocol)?
                    }
                    (None, false) => {
                        return Err(TreeError::Protocol(
                            "the first entry must be the root".into(),
                        ))
                    }
                    (Some(_), true) => {
                        return Err(TreeError::Protocol("a second root entry".into()))
                    }
                    (Some(EntryKind::File), false) => {
                        return Err(TreeError::Protocol("entries after a file root".into()))
                    }
                };
                let mode = mode & self.keep;
                match kind {
                    EntryKind::Dir => {
                        match fs::create_dir(&target) {
                            Err(e)
                                if e.kind() == io::ErrorKind::AlreadyExists && target.is_dir() => {}
                            r => r.map_err(fs_err("create directory", &target))?,
                        }
                        self.dirs.push((target, mode));
                        self.stats.dirs += 1;
                    }
                    EntryKind::File => {
                        let file = OpenOptions::new()
                            .write(true)
                            .create(true)
                            .truncate(true)
                            .mode(mode)
                            .open(&target)
                            .map_err(fs_err("create", &target))?;
                        file.set_permissions(fs::Permissions::from_mode(mode))
                            .map_err(fs_err("chmod", &target))?;
                        self.stats.files += 1;
                        self.current = Some((file, target, size));
                    }
                }
                Ok(None)
            }
            TreeMsg::Data(data) => {
                let Some((file, path, left)) = self.current.as_mut() else {
                    return Err(TreeError::Protocol("data outside a file".into()));
                };
                if data.len() as u64 > *left {
                    return Err(TreeError::Protocol(format!(
                        "more data than {} declared",
                        path.display()
                    )));
                }
                file.write_all(&data).map_err(fs_err("write", path))?;
                *left -= data.len() as u64;
                self.stats.bytes += data.len() as u64;
                Ok(None)
            }
            TreeMsg::End { skipped } => {
                self.finish_file()?;
                if self.root_kind.is_none() {
                    return Err(TreeError::Protocol("empty tree stream".into()));
                }
                for (path, mode) in self.dirs.drain(..).rev() {
                    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                        .map_err(fs_err("chmod", &path))?;
                }
                self.stats.skipped = skipped;
                Ok(Some(self.stats))
            }
        }
    }

    fn finish_file(&mut self) -> Result<(), TreeError> {
        if let Some((_, path, left)) = self.current.take() {
            if left != 0 {
                return Err(TreeError::Protocol(format!(
                    "{} is {left} bytes short",
                    path.display()
                )));
            }
        }
        Ok(())
    }
}
