//! The crate's one error type. Each variant is named after the step or check that failed.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while writing, reading or combining checkpoint files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// I/O failed: {op} `{path}`
    #[error("I/O failed: {op} `{path}`")]
    Io {
        /// What was being done (open, write, rename, ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be decoded.
    #[error("corrupt or unreadable file `{path}`")]
    InFile {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        #[source]
        source: Box<Error>,
    },
    /// The data ends before the structure it should hold.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes needed.
        need: u64,
        /// Bytes present.
        have: u64,
    },
    /// The magic number does not name the expected kind of file.
    #[error("bad magic: expected {expected:02x?}, found {found:02x?}")]
    BadMagic {
        /// Magic of the expected file kind.
        expected: [u8; 8],
        /// Magic found in the file.
        found: [u8; 8],
    },
    /// The format version is not one this build reads.
    #[error("unsupported format version {found} (this build reads {supported})")]
    UnsupportedVersion {
        /// Version in the file.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// The kind field does not match the expected kind.
    #[error("wrong file kind: expected {expected}, found {found}")]
    WrongKind {
        /// Expected kind code.
        expected: u16,
        /// Kind code in the file.
        found: u16,
    },
    /// A header field that must be zero is not.
    #[error("reserved header field is {0:#x}, expected 0")]
    Reserved(u32),
    /// The declared payload is larger than the caller allows.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// Declared payload length.
        len: u64,
        /// The caller's limit.
        max: u64,
    },
    /// The declared length does not match the data present.
    #[error("length mismatch: header declares {declared} bytes, {actual} present")]
    LengthMismatch {
        /// Length from the header.
        declared: u64,
        /// Length actually present.
        actual: u64,
    },
    /// The stored CRC64 does not match the contents.
    #[error("checksum mismatch: stored {stored:#018x}, computed {computed:#018x}")]
    Checksum {
        /// CRC stored in the file.
        stored: u64,
        /// CRC computed over the contents.
        computed: u64,
    },
    /// postcard could not encode a state.
    #[error("encoding state failed")]
    Encode(#[source] postcard::Error),
    /// postcard could not decode a state.
    #[error("decoding state failed")]
    Decode(#[source] postcard::Error),
    /// JSON metadata could not be encoded or decoded.
    #[error("checkpoint metadata (JSON) is invalid")]
    Json(#[source] serde_json::Error),
    /// An index (page or block) is structurally invalid.
    #[error("invalid index: {0}")]
    InvalidIndex(String),
    /// Layers that must describe the same memory or disk disagree on its size or geometry.
    #[error("layer geometry mismatch: {0}")]
    Geometry(String),
    /// A guest-memory slice or disk access is out of range.
    #[error("out of range: offset {offset} + length {len} exceeds size {size}")]
    OutOfRange {
        /// Start of the access.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// Size of the memory or disk.
        size: u64,
    },
    /// A disk block's data does not match the CRC in its layer's index.
    #[error("block {block} of disk layer `{path}` fails its checksum")]
    BlockChecksum {
        /// The layer's data file.
        path: PathBuf,
        /// Block number.
        block: u64,
    },
    /// A range of a disk file could not be made present by its fetcher (a lazily pulled disk).
    #[error("`{path}`: {detail}")]
    Fetch {
        /// The base image or layer.
        path: PathBuf,
        /// Why (the fetcher's words: the sandbox, checkpoint and chunk).
        detail: String,
    },
    /// A memory layer's data does not match the checksum its index holds for one chunk.
    #[error("chunk {chunk} of memory layer `{path}` fails its checksum (the file was changed or damaged)")]
    LayerChecksum {
        /// The layer file.
        path: PathBuf,
        /// Chunk number ([`crate::memory::CHUNK_PAGES`] pages each).
        chunk: u64,
    },
    /// A file of a checkpoint is not the one the checkpoint was committed with (swapped or changed).
    #[error("`{path}` is not the file checkpoint {checkpoint:?} was committed with (swapped or changed)")]
    NotBound {
        /// The file.
        path: PathBuf,
        /// The checkpoint.
        checkpoint: String,
    },
    /// A checkpoint name is not allowed.
    #[error("invalid checkpoint name {0:?}: use 1-64 of [A-Za-z0-9._-], not starting with '.'")]
    InvalidName(String),
    /// No checkpoint has this name.
    #[error("no checkpoint named {0:?}")]
    NoSuchCheckpoint(String),
    /// A checkpoint with this name already exists.
    #[error("checkpoint {0:?} already exists")]
    CheckpointExists(String),
    /// The parent links do not form a chain ending at a base.
    #[error("broken checkpoint chain at {0:?}")]
    BrokenChain(String),
    /// The checkpoint metadata is inconsistent.
    #[error("invalid checkpoint metadata: {0}")]
    InvalidMeta(String),
}

impl Error {
    /// Wrap an `io::Error` with what was being done and where.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Attach the file a decode error came from.
    pub fn in_file(self, path: impl Into<PathBuf>) -> Self {
        Error::InFile {
            path: path.into(),
            source: Box::new(self),
        }
    }
}
