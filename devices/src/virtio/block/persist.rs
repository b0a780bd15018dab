//! Checkpoint state of a virtio-blk device.
//!
//! The device saves its configuration, the features the driver accepted and the disk size. Its
//! queue and activation belong to the transport ([`crate::virtio::mmio::MmioTransportState`]),
//! which re-activates the restored device. The disk's contents are the backend's business.

use cairn_snapshot::Persist;
use serde::{Deserialize, Serialize};

use super::backend::DiskBackend;
use super::device::{Block, BlockConfig, BlockError};

/// Plain-data virtio-blk state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// The drive configuration.
    pub config: BlockConfig,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// Size of the disk in bytes when saved; the restored backend must match.
    pub disk_len: u64,
}

/// What [`Block::restore`] needs: the disk, opened by the VMM (a [`super::RawFile`] on
/// `state.config.path`, or a layered checkpoint disk).
pub struct BlockConstructorArgs {
    /// The disk.
    pub backend: Box<dyn DiskBackend>,
}

impl std::fmt::Debug for BlockConstructorArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockConstructorArgs")
            .field("disk_len", &self.backend.len())
            .finish()
    }
}

impl Persist<'_> for Block {
    type State = BlockState;
    type ConstructorArgs = BlockConstructorArgs;
    type Error = BlockError;

    fn save(&self) -> Result<BlockState, BlockError> {
        Ok(BlockState {
            config: self.config.clone(),
            acked_features: self.acked_features,
            disk_len: self.disk_len,
        })
    }

    fn restore(args: BlockConstructorArgs, state: &BlockState) -> Result<Self, BlockError> {
        let found = args.backend.len();
        if found != state.disk_len {
            return Err(BlockError::DiskSizeChanged {
                expected: state.disk_len,
                found,
            });
        }
        let mut block = Block::new(state.config.clone(), args.backend)?;
        crate::virtio::VirtioDevice::set_acked_features(&mut block, state.acked_features);
        Ok(block)
    }
}
