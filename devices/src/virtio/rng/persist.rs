//! Checkpoint state of a virtio-rng device: only the accepted features. The queue and the
//! activation belong to the transport, which re-activates the restored device.

use cairn_snapshot::Persist;
use serde::{Deserialize, Serialize};

use super::device::{Rng, RngError};
use crate::virtio::VirtioDevice;

/// Plain-data virtio-rng state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// Features the driver accepted.
    pub acked_features: u64,
}

impl Persist<'_> for Rng {
    type State = RngState;
    type ConstructorArgs = ();
    type Error = RngError;

    fn save(&self) -> Result<RngState, RngError> {
        Ok(RngState {
            acked_features: self.acked_features,
        })
    }

    fn restore(_args: (), state: &RngState) -> Result<Self, RngError> {
        let mut rng = Rng::new()?;
        rng.set_acked_features(state.acked_features);
        Ok(rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persist_round_trip() {
        let mut rng = Rng::new().unwrap();
        rng.set_acked_features(u64::MAX);
        let state = rng.save().unwrap();
        assert_eq!(state.acked_features, rng.avail_features());
        let restored = Rng::restore((), &state).unwrap();
        assert_eq!(restored.save().unwrap(), state);
        assert!(!restored.is_activated());
    }
}
