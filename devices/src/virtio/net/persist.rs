//! Saving and restoring virtio-net.
//!
//! The device saves its configuration and the features the driver accepted. Its queues and
//! activation belong to the transport ([`crate::virtio::mmio::MmioTransportState`]), which
//! re-activates the restored device. The tap holds no guest state: the VMM reopens it by name
//! (`state.config.host_dev_name`, see [`NetConstructorArgs::open_tap`]). A frame read from the
//! tap but not yet delivered is lost, as on a real link.

use cairn_snapshot::Persist;

use super::device::{Net, NetConfig, NetError};
use super::tap::{NetBackend, Tap};
use crate::virtio::VirtioDevice;

/// Plain-data virtio-net state.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetState {
    /// The device's configuration.
    pub config: NetConfig,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// What [`Net::restore`] needs: the reopened backend.
#[derive(Debug)]
pub struct NetConstructorArgs<B> {
    /// The backend (the tap named in the state).
    pub backend: B,
}

impl NetConstructorArgs<Tap> {
    /// Reopen the tap named in `state`.
    pub fn open_tap(state: &NetState) -> Result<Self, NetError> {
        let name = &state.config.host_dev_name;
        let backend = Tap::open(name).map_err(|e| NetError::OpenTap(name.clone(), e))?;
        Ok(Self { backend })
    }
}

impl<B: NetBackend> Persist<'_> for Net<B> {
    type State = NetState;
    type ConstructorArgs = NetConstructorArgs<B>;
    type Error = NetError;

    fn save(&self) -> Result<NetState, NetError> {
        Ok(NetState {
            config: self.config.clone(),
            acked_features: self.acked_features,
        })
    }

    fn restore(args: NetConstructorArgs<B>, state: &NetState) -> Result<Self, NetError> {
        state.config.validate()?;
        let mut net = Net::with_backend(state.config.clone(), args.backend)?;
        net.set_acked_features(state.acked_features);
        Ok(net)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    use super::super::device::tests::{config, mem, MockBackend};
    use super::*;
    use crate::virtio::{ActivateContext, IrqTrigger};

    fn args() -> NetConstructorArgs<MockBackend> {
        NetConstructorArgs {
            backend: MockBackend::default(),
        }
    }

    #[test]
    fn round_trip() {
        let mem = mem();
        let rxq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let txq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
        let mut net = Net::with_backend(config(), MockBackend::default()).unwrap();
        net.set_acked_features(u64::MAX);
        net.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
            queue_evts: vec![EventFd::new(0).unwrap(), EventFd::new(0).unwrap()],
            interrupt: Arc::new(IrqTrigger::new().unwrap()),
        })
        .unwrap();
        let state = net.save().unwrap();
        assert_eq!(state.acked_features, net.avail_features());

        // Through serde, as the VMM stores it.
        let bytes = serde_json::to_vec(&state).unwrap();
        let state: NetState = serde_json::from_slice(&bytes).unwrap();

        let restored = Net::restore(args(), &state).unwrap();
        // The transport re-activates it with the saved queues.
        assert!(!restored.is_activated());
        assert_eq!(restored.save().unwrap(), state);
        assert_eq!(restored.acked_features(), net.acked_features());
    }

    #[test]
    fn a_restored_device_advertises_the_mtu_it_is_given() {
        let mut c = config();
        c.mtu = Some(1400);
        let mut net = Net::with_backend(c, MockBackend::default()).unwrap();
        let mtu_bit = 1u64 << super::super::VIRTIO_NET_F_MTU;
        net.set_acked_features(net.avail_features());
        // The saved state does not carry the MTU (its layout predates it) ...
        let bytes = serde_json::to_vec(&net.save().unwrap()).unwrap();
        let mut state: NetState = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(state.config.mtu, None);
        assert_ne!(state.acked_features & mtu_bit, 0);
        // ... the VMM keeps it beside the state and sets it back before the restore.
        state.config.mtu = Some(1400);
        let restored = Net::restore(args(), &state).unwrap();
        assert_ne!(restored.avail_features() & mtu_bit, 0);
        assert_eq!(restored.acked_features(), net.acked_features());
        let mut mtu = [0u8; 2];
        restored.read_config(10, &mut mtu);
        assert_eq!(u16::from_le_bytes(mtu), 1400);
        let mut all = [0u8; 12];
        let mut before = [0u8; 12];
        restored.read_config(0, &mut all);
        net.read_config(0, &mut before);
        assert_eq!(
            all, before,
            "the same configuration space as before the snapshot"
        );
    }

    #[test]
    fn restore_rejects_a_bad_config() {
        let mut state = Net::with_backend(config(), MockBackend::default())
            .unwrap()
            .save()
            .unwrap();
        state.config.host_dev_name.clear();
        assert!(matches!(
            Net::restore(args(), &state),
            Err(NetError::InvalidConfig(_))
        ));
    }
}
