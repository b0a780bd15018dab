//! Checkpoint state of a virtio-balloon device. The queues and the activation belong to the
//! transport, which re-activates the restored device (re-arming the statistics timer).

use cairn_snapshot::Persist;
use serde::{Deserialize, Serialize};

use super::device::{Balloon, BalloonConfig, BalloonError};
use super::free_page::HintingState;
use super::stats::BalloonStats;
use super::PAGES_PER_MIB;
use crate::virtio::VirtioDevice;

/// Plain-data virtio-balloon state: what every balloon saves. Its encoding is that of
/// checkpoints taken before free page hinting and reporting existed, so do not change it; new
/// state goes into [`FreePageState`] (or a further struct beside it).
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

/// The state of a balloon with free page hinting or reporting on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreePageState {
    /// The hinting queue is offered.
    pub free_page_hinting: bool,
    /// The reporting queue is offered.
    pub free_page_reporting: bool,
    /// Where hinting stands.
    pub hinting: HintingState,
}

/// Everything a balloon saves: [`BalloonState`], plus [`FreePageState`] when hinting or
/// reporting is on (`None` otherwise, so such a balloon saves what it saved before they
/// existed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonFullState {
    /// What every balloon saves.
    pub base: BalloonState,
    /// Free page hinting and reporting.
    pub free_page: Option<FreePageState>,
}

impl Persist<'_> for Balloon {
    type State = BalloonFullState;
    type ConstructorArgs = ();
    type Error = BalloonError;

    fn save(&self) -> Result<BalloonFullState, BalloonError> {
        let cfg = self.config();
        let free_page =
            (cfg.free_page_hinting || cfg.free_page_reporting).then_some(FreePageState {
                free_page_hinting: cfg.free_page_hinting,
                free_page_reporting: cfg.free_page_reporting,
                hinting: self.hinting,
            });
        Ok(BalloonFullState {
            base: BalloonState {
                acked_features: self.acked_features,
                deflate_on_oom: cfg.deflate_on_oom,
                stats_polling_interval_s: cfg.stats_polling_interval_s,
                num_pages: self.num_pages,
                actual_pages: self.actual_pages,
                stats_desc_index: self.stats_desc_index,
                latest_stats: self.latest_stats,
            },
            free_page,
        })
    }

    fn restore(_args: (), full: &BalloonFullState) -> Result<Self, BalloonError> {
        let state = &full.base;
        let free_page = full.free_page.unwrap_or_default();
        let mut dev = Balloon::new(BalloonConfig {
            amount_mib: state.num_pages / PAGES_PER_MIB,
            deflate_on_oom: state.deflate_on_oom,
            stats_polling_interval_s: state.stats_polling_interval_s,
            free_page_hinting: free_page.free_page_hinting,
            free_page_reporting: free_page.free_page_reporting,
        })?;
        dev.set_acked_features(state.acked_features);
        dev.num_pages = state.num_pages;
        dev.actual_pages = state.actual_pages;
        dev.stats_desc_index = state.stats_desc_index;
        dev.latest_stats = state.latest_stats;
        dev.hinting = free_page.hinting;
        dev.end_hinting_on_activate = true;
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
            ..Default::default()
        })
        .unwrap();
        dev.set_acked_features(u64::MAX);
        dev.write_config(4, &700u32.to_le_bytes());
        dev.stats_desc_index = Some(9);
        dev.latest_stats.update(4, 1234);
        let state = dev.save().unwrap();
        assert_eq!(state.base.acked_features, dev.avail_features());
        assert_eq!(state.base.num_pages, 3 * 256);
        assert_eq!(state.base.actual_pages, 700);
        assert_eq!(
            state.free_page, None,
            "no hinting or reporting: nothing new"
        );
        let restored = Balloon::restore((), &state).unwrap();
        assert_eq!(restored.save().unwrap(), state);
        assert_eq!(restored.queue_max_sizes().len(), 3);
        assert!(!restored.is_activated());
        // The encoded form decodes back to the same state.
        let bytes = serde_json::to_vec(&state).unwrap();
        assert_eq!(
            serde_json::from_slice::<BalloonFullState>(&bytes).unwrap(),
            state
        );
    }

    #[test]
    fn persist_round_trip_with_hinting_and_reporting() {
        let mut dev = Balloon::new(BalloonConfig {
            amount_mib: 1,
            free_page_hinting: true,
            free_page_reporting: true,
            ..Default::default()
        })
        .unwrap();
        dev.set_acked_features(u64::MAX);
        dev.hinting = HintingState {
            host_cmd: 7,
            last_cmd_id: 7,
            guest_cmd: Some(0),
            acknowledge_on_stop: true,
        };
        let state = dev.save().unwrap();
        assert_eq!(
            state.free_page,
            Some(FreePageState {
                free_page_hinting: true,
                free_page_reporting: true,
                hinting: dev.hinting,
            })
        );
        let restored = Balloon::restore((), &state).unwrap();
        assert_eq!(restored.save().unwrap(), state);
        assert_eq!(restored.queue_max_sizes().len(), 4);
        assert_eq!(restored.config(), dev.config());
        let bytes = postcard::to_allocvec(&state).unwrap();
        assert_eq!(
            postcard::from_bytes::<BalloonFullState>(&bytes).unwrap(),
            state
        );
    }

    #[test]
    fn base_state_encoding_is_unchanged() {
        // The bytes a balloon without hinting or reporting writes inside a checkpoint (the
        // machine state encodes `BalloonState` alone for it) are those of the layout before
        // free page hinting and reporting: 7 fields, the last the 16 optional statistics.
        let state = BalloonState {
            acked_features: 1 << 32,
            deflate_on_oom: true,
            stats_polling_interval_s: 1,
            num_pages: 256,
            actual_pages: 2,
            stats_desc_index: None,
            latest_stats: BalloonStats::default(),
        };
        let bytes = postcard::to_allocvec(&state).unwrap();
        let mut expected = vec![0x80, 0x80, 0x80, 0x80, 0x10, 1, 1, 0x80, 0x02, 2, 0];
        expected.extend([0u8; 16]);
        assert_eq!(bytes, expected);
    }
}
