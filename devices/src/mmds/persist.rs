//! What of MMDS a snapshot keeps: its settings and, per interface, its stack's address. The data
//! store is not saved (as in Firecracker): a restored VM's store is the new process's, filled
//! through the API or `--metadata`. Open MMDS connections and session tokens do not survive a
//! restore either; the guest reconnects and asks for a new token.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use cairn_snapshot::Persist;
use serde::{Deserialize, Serialize};

use super::data_store::{Mmds, MmdsVersion};
use super::stack::MmdsStack;

/// MMDS's settings in a machine state: the store's version and IMDS compatibility, the
/// address, and the interfaces it is enabled on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmdsState {
    /// The protocol version.
    pub version: MmdsVersion,
    /// EC2 IMDS compatibility.
    pub imds_compat: bool,
    /// The MMDS address.
    pub ipv4_address: [u8; 4],
    /// Ids of the interfaces MMDS is enabled on.
    pub network_interfaces: Vec<String>,
}

/// One stack's state: its address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmdsStackState {
    /// The MMDS address.
    pub ipv4_address: [u8; 4],
}

impl Persist<'_> for MmdsStack {
    type State = MmdsStackState;
    type ConstructorArgs = Arc<Mutex<Mmds>>;
    type Error = std::convert::Infallible;

    fn save(&self) -> Result<MmdsStackState, Self::Error> {
        Ok(MmdsStackState {
            ipv4_address: self.ipv4_addr().octets(),
        })
    }

    fn restore(store: Arc<Mutex<Mmds>>, state: &MmdsStackState) -> Result<Self, Self::Error> {
        Ok(MmdsStack::new(Ipv4Addr::from(state.ipv4_address), store))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let store = Arc::new(Mutex::new(Mmds::new(100).unwrap()));
        let stack = MmdsStack::new(Ipv4Addr::new(169, 254, 1, 2), store.clone());
        let state = stack.save().unwrap();
        let bytes = postcard::to_stdvec(&state).unwrap();
        let back: MmdsStackState = postcard::from_bytes(&bytes).unwrap();
        let restored = MmdsStack::restore(store.clone(), &back).unwrap();
        assert_eq!(restored.save().unwrap(), state);
        assert!(Arc::ptr_eq(restored.mmds(), &store));

        let s = MmdsState {
            version: MmdsVersion::V2,
            imds_compat: true,
            ipv4_address: [169, 254, 169, 254],
            network_interfaces: vec!["eth0".into()],
        };
        let bytes = postcard::to_stdvec(&s).unwrap();
        assert_eq!(postcard::from_bytes::<MmdsState>(&bytes).unwrap(), s);
    }
}
