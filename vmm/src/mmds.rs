//! MMDS in the VMM: the data store the API fills (`PUT`/`PATCH`/`GET /mmds`), its settings
//! (`PUT /mmds/config`, the config file's `mmds-config`, `--mmds-size-limit`, `--metadata`), and
//! the stacks put on the network interfaces MMDS is enabled on, at boot and after a restore.
//!
//! As in Firecracker, the store is created by the first MMDS request before boot (a `GET /mmds`
//! included); after boot, MMDS requests are refused if it was never created.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use cairn_devices::mmds::{Mmds, MmdsError, MmdsStack, MmdsState};

use crate::api::ApiResponse;
use crate::config::{MmdsConfig, MmdsVersion};
use crate::device_manager::VirtioHandle;
use crate::error::VmmError;
use crate::machine::Machine;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The store's version for the API's.
pub fn device_version(v: MmdsVersion) -> cairn_devices::mmds::MmdsVersion {
    match v {
        MmdsVersion::V1 => cairn_devices::mmds::MmdsVersion::V1,
        MmdsVersion::V2 => cairn_devices::mmds::MmdsVersion::V2,
    }
}

/// The machine state's record of `cfg`.
pub fn state_of(cfg: &MmdsConfig) -> MmdsState {
    MmdsState {
        version: device_version(cfg.version),
        imds_compat: cfg.imds_compat,
        ipv4_address: cfg.ipv4().octets(),
        network_interfaces: cfg.network_interfaces.clone(),
    }
}

/// The API's view of a machine state's record (for `GET /vm/config` after a restore).
pub fn config_of(state: &MmdsState) -> MmdsConfig {
    MmdsConfig {
        version: match state.version {
            cairn_devices::mmds::MmdsVersion::V1 => MmdsVersion::V1,
            cairn_devices::mmds::MmdsVersion::V2 => MmdsVersion::V2,
        },
        network_interfaces: state.network_interfaces.clone(),
        ipv4_address: Some(Ipv4Addr::from(state.ipv4_address)),
        imds_compat: state.imds_compat,
    }
}

/// The data store, created on first use, and how it is reached.
#[derive(Debug)]
pub struct MmdsService {
    store: Option<Arc<Mutex<Mmds>>>,
    size_limit: usize,
    instance_id: String,
}

/// Firecracker's message for MMDS requests after boot when no store was created before.
const NOT_INITIALIZED: &str = "MMDS error: The MMDS data store is not initialized.";

impl MmdsService {
    /// No store yet; one made later takes documents of up to `size_limit` bytes.
    pub fn new(size_limit: usize, instance_id: &str) -> Self {
        Self {
            store: None,
            size_limit,
            instance_id: instance_id.to_string(),
        }
    }

    /// Set the size limit (`--mmds-size-limit`), before any store exists.
    pub fn set_size_limit(&mut self, limit: usize) {
        self.size_limit = limit;
    }

    /// The store, if created.
    pub fn store(&self) -> Option<&Arc<Mutex<Mmds>>> {
        self.store.as_ref()
    }

    /// The store, created if need be.
    pub fn store_or_default(&mut self) -> Result<Arc<Mutex<Mmds>>, MmdsError> {
        if let Some(s) = &self.store {
            return Ok(s.clone());
        }
        let mut mmds = Mmds::new(self.size_limit)?;
        mmds.set_instance_id(&self.instance_id);
        let store = Arc::new(Mutex::new(mmds));
        self.store = Some(store.clone());
        Ok(store)
    }

    /// The store for an API request: created before boot, required after.
    fn store_for_api(&mut self, started: bool) -> Result<Arc<Mutex<Mmds>>, ApiResponse> {
        if started {
            return self
                .store
                .clone()
                .ok_or_else(|| ApiResponse::bad_request(NOT_INITIALIZED));
        }
        self.store_or_default()
            .map_err(|e| ApiResponse::bad_request(format!("MMMDS config error: {e}")))
    }

    /// `PUT /mmds`.
    pub fn put(&mut self, started: bool, data: serde_json::Value) -> ApiResponse {
        match self.store_for_api(started) {
            Ok(store) => data_response(lock(&store).put_data(data)),
            Err(r) => r,
        }
    }

    /// `PATCH /mmds`.
    pub fn patch(&mut self, started: bool, patch: &serde_json::Value) -> ApiResponse {
        match self.store_for_api(started) {
            Ok(store) => data_response(lock(&store).patch_data(patch)),
            Err(r) => r,
        }
    }

    /// `GET /mmds`: the document, `{}` while it is empty.
    pub fn get(&mut self, started: bool) -> ApiResponse {
        match self.store_for_api(started) {
            Ok(store) => match lock(&store).data() {
                serde_json::Value::Null => ApiResponse::Json(serde_json::json!({})),
                v => ApiResponse::Json(v.clone()),
            },
            Err(r) => r,
        }
    }

    /// `--metadata`: fill the store from a JSON document.
    pub fn put_metadata(&mut self, json: &str) -> Result<(), VmmError> {
        let data: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| VmmError::Config(format!("--metadata: not valid JSON: {e}")))?;
        let store = self
            .store_or_default()
            .map_err(|e| VmmError::Config(format!("--metadata: {e}")))?;
        let result = lock(&store).put_data(data);
        result.map_err(|e| VmmError::Config(format!("--metadata: {e}")))
    }

    /// Apply `state`'s version and IMDS compatibility to the store (created if need be).
    pub fn configure(&mut self, state: &MmdsState) -> Result<(), VmmError> {
        let store = self
            .store_or_default()
            .map_err(|e| VmmError::Config(format!("MMDS: {e}")))?;
        let mut mmds = lock(&store);
        mmds.set_version(state.version);
        mmds.set_imds_compat(state.imds_compat);
        Ok(())
    }

    /// Put a stack on each network interface `state` names (and take it off the others), and
    /// record `state` on the machine for its snapshots.
    pub fn attach(&mut self, machine: &mut Machine, state: &MmdsState) -> Result<(), VmmError> {
        self.configure(state)?;
        let store = self
            .store_or_default()
            .map_err(|e| VmmError::Config(format!("MMDS: {e}")))?;
        let ipv4 = Ipv4Addr::from(state.ipv4_address);
        for attachment in machine.virtio_devices() {
            if let VirtioHandle::Net(net) = &attachment.device {
                let mut net = lock(net);
                let on = state
                    .network_interfaces
                    .iter()
                    .any(|id| *id == net.config().iface_id);
                net.set_mmds(on.then(|| MmdsStack::new(ipv4, store.clone())));
            }
        }
        machine.mmds = Some(state.clone());
        Ok(())
    }
}

/// The answer to a PUT or PATCH of the store: 204, or Firecracker's 413 / 400.
fn data_response(result: Result<(), MmdsError>) -> ApiResponse {
    match result {
        Ok(()) => ApiResponse::Empty,
        Err(e @ MmdsError::DataStoreLimitExceeded) => {
            ApiResponse::error(413, format!("MMDS limit exceeded error: {e}"))
        }
        Err(e) => ApiResponse::bad_request(format!("MMDS error: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn store_created_before_boot_and_required_after() {
        let mut s = MmdsService::new(64, "vm");
        assert_eq!(
            s.put(true, json!({"a": 1})),
            ApiResponse::bad_request(NOT_INITIALIZED)
        );
        assert_eq!(s.get(true), ApiResponse::bad_request(NOT_INITIALIZED));
        assert!(s.store().is_none());
        assert_eq!(s.get(false), ApiResponse::Json(json!({})));
        assert!(s.store().is_some());
        assert_eq!(
            s.patch(true, &json!({"a": 1})),
            ApiResponse::bad_request("MMDS error: The MMDS data store is not initialized.")
        );
        assert_eq!(s.put(true, json!({"a": 1})), ApiResponse::Empty);
        assert_eq!(
            s.patch(true, &json!({"b": {"c": "d"}, "a": null})),
            ApiResponse::Empty
        );
        assert_eq!(s.get(true), ApiResponse::Json(json!({"b": {"c": "d"}})));
        let big = json!({"x": "y".repeat(64)});
        assert_eq!(s.put(true, big.clone()).status(), 413);
        assert_eq!(s.patch(true, &big).status(), 413);
        assert_eq!(s.get(true), ApiResponse::Json(json!({"b": {"c": "d"}})));
    }

    #[test]
    fn metadata_and_settings() {
        let mut s = MmdsService::new(1000, "vm");
        assert!(s.put_metadata("{").is_err());
        s.put_metadata(r#"{"k": "v"}"#).unwrap();
        assert_eq!(s.get(true), ApiResponse::Json(json!({"k": "v"})));
        let cfg = MmdsConfig {
            version: MmdsVersion::V2,
            network_interfaces: vec!["eth0".into()],
            ipv4_address: None,
            imds_compat: true,
        };
        let state = state_of(&cfg);
        assert_eq!(state.ipv4_address, [169, 254, 169, 254]);
        s.configure(&state).unwrap();
        let store = s.store().unwrap().clone();
        assert_eq!(lock(&store).version(), cairn_devices::mmds::MmdsVersion::V2);
        assert!(lock(&store).imds_compat());
        let back = config_of(&state);
        assert_eq!(back.ipv4_address, Some(Ipv4Addr::new(169, 254, 169, 254)));
        assert_eq!((back.version, back.imds_compat), (MmdsVersion::V2, true));
    }

    /// Through the controller, before boot: `PUT /mmds/config` checks the interfaces, `GET
    /// /vm/config` shows it, and re-`PUT`ting an interface takes MMDS off it (as Firecracker,
    /// which builds a new device).
    #[test]
    fn mmds_config_follows_the_interfaces() {
        use crate::api::ApiRequest;
        use crate::config::NetConfig;
        let mut c = crate::controller::Controller::new("t".into(), 0).unwrap();
        let net = |id: &str| NetConfig {
            iface_id: id.into(),
            host_dev_name: format!("tap{id}"),
            guest_mac: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
            mtu: None,
        };
        let cfg = |ids: &[&str]| MmdsConfig {
            version: MmdsVersion::V2,
            network_interfaces: ids.iter().map(|s| s.to_string()).collect(),
            ipv4_address: None,
            imds_compat: false,
        };
        let shown = |c: &mut crate::controller::Controller| match c.handle(ApiRequest::GetVmConfig)
        {
            ApiResponse::Json(v) => v["mmds-config"].clone(),
            other => panic!("{other:?}"),
        };
        let refused = c.handle(ApiRequest::PutMmdsConfig(cfg(&["eth0"])));
        assert_eq!(refused.status(), 400);
        assert!(format!("{refused:?}")
            .contains("does not correspond to any existing network interface"));
        for id in ["eth0", "eth1"] {
            assert_eq!(
                c.handle(ApiRequest::PutNetworkInterface(net(id))),
                ApiResponse::Empty
            );
        }
        assert_eq!(
            c.handle(ApiRequest::PutMmdsConfig(cfg(&["eth0", "eth1"]))),
            ApiResponse::Empty
        );
        assert_eq!(
            shown(&mut c),
            json!({"version": "V2", "network_interfaces": ["eth0", "eth1"],
                   "ipv4_address": "169.254.169.254", "imds_compat": false})
        );
        assert_eq!(
            c.handle(ApiRequest::PutNetworkInterface(net("eth0"))),
            ApiResponse::Empty
        );
        assert_eq!(shown(&mut c)["network_interfaces"], json!(["eth1"]));
        assert_eq!(
            c.handle(ApiRequest::PutNetworkInterface(net("eth1"))),
            ApiResponse::Empty
        );
        assert_eq!(shown(&mut c), serde_json::Value::Null);
        // The store was made by PUT /mmds/config and answers GET.
        assert_eq!(c.handle(ApiRequest::GetMmds), ApiResponse::Json(json!({})));
    }
}
