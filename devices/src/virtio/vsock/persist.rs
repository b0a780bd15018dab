//! Saving and restoring virtio-vsock.
//!
//! The device saves its configuration and the features the driver accepted; its queues and
//! activation belong to the transport ([`crate::virtio::mmio::MmioTransportState`]), which
//! re-activates the restored device. As in Firecracker, live connections are not saved: the
//! restored device listens again on its `uds_path` with no connection, and once the transport is
//! restored the VMM calls [`Vsock::send_transport_reset`] so the guest drops the connections it
//! still believes in.

use cairn_snapshot::Persist;

use super::device::{Vsock, VsockConfig, VsockError};
use crate::virtio::VirtioDevice;

/// Plain-data virtio-vsock state.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VsockState {
    /// The device's configuration.
    pub config: VsockConfig,
    /// Features the driver accepted.
    pub acked_features: u64,
}

impl Persist<'_> for Vsock {
    type State = VsockState;
    /// Nothing: the device opens its listening socket itself.
    type ConstructorArgs = ();
    type Error = VsockError;

    fn save(&self) -> Result<VsockState, VsockError> {
        Ok(VsockState {
            config: self.config.clone(),
            acked_features: self.acked_features,
        })
    }

    fn restore(_args: (), state: &VsockState) -> Result<Self, VsockError> {
        let mut vsock = Vsock::new(state.config.clone())?;
        vsock.set_acked_features(state.acked_features);
        Ok(vsock)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use virtio_queue::{Queue, QueueState};
    use vmm_sys_util::eventfd::EventFd;

    use super::super::device::tests::{mem, Driver};
    use super::super::packet::Op;
    use super::super::EVQ_INDEX;
    use super::*;
    use crate::virtio::{ActivateContext, QueueSnapshot};

    #[test]
    fn round_trip_inactive() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vsock::new(VsockConfig {
            guest_cid: 9,
            uds_path: dir.path().join("v.sock"),
        })
        .unwrap();
        let state = v.save().unwrap();
        drop(v);
        let restored = Vsock::restore((), &state).unwrap();
        assert!(!restored.is_activated());
        assert_eq!(restored.save().unwrap(), state);
    }

    #[test]
    fn round_trip_active_then_transport_reset() {
        let mem = mem();
        let dir = tempfile::tempdir().unwrap();
        let mut d = Driver::new(&mem, dir.path());
        d.add_rx_buffers(2, 4096);
        d.add_chain(EVQ_INDEX, &[(0x70_0000, 4, 2)]);
        // A live connection, which the snapshot does not keep.
        let mut path = d.uds.clone().into_os_string();
        path.push("_52");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        d.send(d.hdr(1000, 52, Op::Request), &[]);
        assert_eq!(d.vsock.connection_count(), 1);
        assert_eq!(d.recv()[0].0.op(), Some(Op::Response));

        let state = d.vsock.save().unwrap();
        assert_eq!(state.acked_features, d.vsock.avail_features());
        let bytes = serde_json::to_vec(&state).unwrap();
        let state: VsockState = serde_json::from_slice(&bytes).unwrap();
        // What the transport saves for the device.
        let queues: Vec<QueueSnapshot> =
            d.vsock.queues().iter().map(|q| q.state().into()).collect();

        // The socket path is still held by the live device.
        assert!(matches!(
            Vsock::restore((), &state),
            Err(VsockError::Listen(..))
        ));

        // As in a new process: the old device is gone, the restored one takes its place and the
        // transport re-activates it with the saved queues.
        let placeholder = Vsock::new(VsockConfig {
            guest_cid: 3,
            uds_path: dir.path().join("placeholder.sock"),
        })
        .unwrap();
        drop(std::mem::replace(&mut d.vsock, placeholder));
        d.vsock = Vsock::restore((), &state).unwrap();
        assert!(!d.vsock.is_activated());
        assert_eq!(d.vsock.save().unwrap(), state);
        d.vsock
            .activate(ActivateContext {
                mem: mem.clone(),
                queues: queues
                    .iter()
                    .map(|s| Queue::try_from(QueueState::from(*s)).unwrap())
                    .collect(),
                queue_evts: (0..3).map(|_| EventFd::new(0).unwrap()).collect(),
                interrupt: Arc::clone(&d.irq),
            })
            .unwrap();
        assert_eq!(d.vsock.connection_count(), 0);

        d.vsock.send_transport_reset().unwrap();
        assert_eq!(d.used(EVQ_INDEX), vec![(0x70_0000, 4)]);

        // The queues continue where they were: the next packet lands in the second rx buffer,
        // once the guest has handled the reset (kicked the event queue).
        d.send(d.hdr(1000, 53, Op::Request), &[]);
        assert!(d.recv().is_empty());
        assert!(d.vsock.process_event_queue());
        let got = d.recv();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.op(), Some(Op::Rst));
    }

    #[test]
    fn restore_rejects_a_bad_config() {
        let dir = tempfile::tempdir().unwrap();
        let state = VsockState {
            config: VsockConfig {
                guest_cid: 1,
                uds_path: dir.path().join("v.sock"),
            },
            acked_features: 0,
        };
        assert!(matches!(
            Vsock::restore((), &state),
            Err(VsockError::InvalidConfig(_))
        ));
    }
}
