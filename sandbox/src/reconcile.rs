//! The VMM's checkpoint store is the truth about which checkpoints exist and which is the head
//! (the VMM writes it when it commits a checkpoint or restores one); the registry follows it.
//! A `cairn checkpoint create` killed after the VMM committed leaves the row one behind: `start`,
//! `ls` and `doctor` bring it forward with [`follow_store`].

use cairn_snapshot::checkpoint::CheckpointStore;

use crate::registry::{Record, Registry};
use crate::sandbox::{Paths, SandboxError};

/// The head the sandbox's checkpoint store records, if it names a complete checkpoint.
pub fn store_head(paths: &Paths) -> Option<String> {
    if !paths.checkpoints.is_dir() {
        return None;
    }
    CheckpointStore::open(&paths.checkpoints).ok()?.head()
}

/// Make `r`'s recorded head follow its store's. Returns the store's head when the row was behind
/// (and has been updated), else None.
pub fn follow_store(
    reg: &mut Registry,
    r: &Record,
    paths: &Paths,
) -> Result<Option<String>, SandboxError> {
    match store_head(paths) {
        Some(h) if r.head_checkpoint.as_deref() != Some(h.as_str()) => {
            reg.set_head(&r.name, Some(&h))?;
            Ok(Some(h))
        }
        _ => Ok(None),
    }
}
