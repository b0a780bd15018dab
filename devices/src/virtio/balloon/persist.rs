//! Checkpoint state of a virtio-balloon device. The queues and the activation belong to the
//! transport, which re-activates the restored device (re-arming the statistics timer).

use cairn_snapshot::Persist;
use serde::{Deserialize, Serialize};

use super::device::{Balloon, BalloonConfig, BalloonError};
use super::stats::BalloonStats;
use super::PAGES_PER_MIB;
use crate::virtio::VirtioDevice;

/// Plain-data virtio-balloon state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonState {
    /// Features the driver accepted.
    pub acked_features: u64,
    /// Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM.
    pub deflate_on_oom: bool,
    /// Statistics polling interval in seconds (0: no statistics queue).
    pub stats_polling_interval_s: u16,
    /// Target in 4 KiB pages.
    pub num_pages: u32,
    /// Pages the driver holds.
    pub actual_pages: u32,
    /// The statistics buffer the device holds, if any.
    pub stats_desc_index: Option<u16>,
    /// The latest statistics.
    pub latest_stats: BalloonStats,
}

impl Persist<'_> for Balloon {
    type State = BalloonState;
    type ConstructorArgs = ();
    type Error = BalloonError;

    fn save(&self) -> Result<BalloonState, BalloonError> {
        let cfg = self.config();
        Ok(BalloonState {
            acked_features: self.acked_features,
            deflate_on_oom: cfg.deflate_on_oom,
            stats_polling_interval_s: cfg.stats_polling_interval_s,
            num_pages: self.num_pages,
            actual_pages: self.actual_pages,
            stats_desc_index: self.stats_desc_index,
            latest_stats: self.latest_stats,
        })
    }

    fn restore(_args: (), state: &BalloonState) -> Result<Self, BalloonError> {
        let mut dev = Balloon::new(BalloonConfig {
            amount_mib: state.num_pages / PAGES_PER_MIB,
            deflate_on_oom: state.deflate_on_oom,
            stats_polling_interval_s: state.stats_polling_interval_s,
        })?;
        dev.set_acked_features(state.acked_features);
        dev.num_pages = state.num_pages;
        dev.actual_pages = state.actual_pages;
        dev.stats_desc_index = state.stats_desc_index;
        dev.latest_stats = state.latest_stats;
        Ok(dev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persist_round_trip() {
        let mut dev = Balloon::new(BalloonConfig {
            amount_mib: 3,
            deflate_on_oom: true,
            stats_polling_interval_s: 5,
        })
        .unwrap();
        dev.set_acked_features(u64::MAX);
        dev.write_config(4, &700u32.to_le_bytes());
        dev.stats_desc_index = Some(9);
        dev.latest_stats.update(4, 1234);
        let state = dev.save().unwrap();
        assert_eq!(state.acked_features, dev.avail_features());
        assert_eq!(state.num_pages, 3 * 256);
        assert_eq!(state.actual_pages, 700);
        let restored = Balloon::restore((), &state).unwrap();
        assert_eq!(restored.save().unwrap(), state);
        assert_eq!(restored.queue_max_sizes().len(), 3);
        assert!(!restored.is_activated());
        // The encoded form decodes back to the same state.
        let bytes = serde_json::to_vec(&state).unwrap();
        assert_eq!(
            serde_json::from_slice::<BalloonState>(&bytes).unwrap(),
            state
        );
    }
}
