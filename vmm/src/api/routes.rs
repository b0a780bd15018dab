//! From method, path and body to an [`ApiRequest`], with Firecracker's paths and error replies.
//!
//! Every refusal is a 400 with `{"fault_message": ...}`, as in Firecracker: an unknown path or a
//! method the path does not take gives `Invalid request method and/or path: PUT /foo.`, and a
//! body that does not parse or validate gives the [`ConfigError`] text, which starts with the
//! offending field.

use serde::de::DeserializeOwned;

use super::{ApiRequest, ApiResponse};
use crate::config::{
    parse_and_validate, validate_checkpoint_name, CheckpointCreate, ConfigError, Validate,
};

/// Decodes one request. `path` may carry a query string, which is ignored, and a trailing `/`.
pub fn route(method: &str, path: &str, body: &[u8]) -> Result<ApiRequest, ApiResponse> {
    let clean = path.split(['?', '#']).next().unwrap_or_default();
    let trimmed = clean.trim_end_matches('/');
    let segments: Vec<&str> = match trimmed.strip_prefix('/') {
        Some(rest) => rest.split('/').collect(),
        // "/" itself (trimmed to "") is the root; anything not starting with '/' is unknown.
        None if trimmed.is_empty() && clean.starts_with('/') => Vec::new(),
        None => return Err(invalid_path(method, path)),
    };

    // Firecracker (micro_http) refuses a body on a request that takes none.
    if matches!(method, "GET" | "DELETE") && !body.is_empty() {
        return Err(ApiResponse::bad_request(format!(
            "{method} request cannot have a body."
        )));
    }
    let request = match (method, segments.as_slice()) {
        ("GET", []) => ApiRequest::GetInstanceInfo,
        ("GET", ["version"]) => ApiRequest::GetVersion,
        ("GET", ["machine-config"]) => ApiRequest::GetMachineConfig,
        ("PUT", ["machine-config"]) => ApiRequest::PutMachineConfig(parse_body(body)?),
        ("PATCH", ["machine-config"]) => ApiRequest::PatchMachineConfig(parse_body(body)?),
        ("GET", ["vm", "config"]) => ApiRequest::GetVmConfig,
        ("PUT", ["boot-source"]) => ApiRequest::PutBootSource(parse_body(body)?),
        ("PUT", ["drives", id]) if !id.is_empty() => {
            let drive: crate::config::DriveConfig = parse_body(body)?;
            check_path_id("drive_id", id, &drive.drive_id)?;
            ApiRequest::PutDrive(drive)
        }
        ("PUT", ["network-interfaces", id]) if !id.is_empty() => {
            let net: crate::config::NetConfig = parse_body(body)?;
            check_path_id("iface_id", id, &net.iface_id)?;
            ApiRequest::PutNetworkInterface(net)
        }
        ("PATCH", ["drives", id]) if !id.is_empty() => {
            let update: crate::config::DriveUpdate = parse_body(body)?;
            check_path_id("drive_id", id, &update.drive_id)?;
            ApiRequest::PatchDrive(update)
        }
        ("PATCH", ["network-interfaces", id]) if !id.is_empty() => {
            let update: crate::config::NetworkInterfaceUpdate = parse_body(body)?;
            check_path_id("iface_id", id, &update.iface_id)?;
            ApiRequest::PatchNetworkInterface(update)
        }
        // Firecracker reads only the first path segment here, so `PUT /vsock/{id}` (the form the
        // `bandsox` client sends, with the deprecated `vsock_id` in the body) is a PUT /vsock.
        ("PUT", ["vsock", ..]) => ApiRequest::PutVsock(parse_body(body)?),
        ("PUT", ["entropy"]) => ApiRequest::PutEntropy(parse_body(body)?),
        ("PUT", ["balloon"]) => ApiRequest::PutBalloon(parse_body(body)?),
        ("GET", ["balloon"]) => ApiRequest::GetBalloon,
        ("PATCH", ["balloon"]) => ApiRequest::PatchBalloon(parse_body(body)?),
        ("GET", ["balloon", "statistics"]) => ApiRequest::GetBalloonStats,
        ("PATCH", ["balloon", "statistics"]) => ApiRequest::PatchBalloonStats(parse_body(body)?),
        ("GET", ["balloon", "hinting", "status"]) => ApiRequest::GetBalloonHintingStatus,
        // Firecracker takes the start body as optional, and ignores a stop body.
        ("PATCH", ["balloon", "hinting", "start"]) => {
            ApiRequest::StartBalloonHinting(if is_blank(body) {
                crate::config::BalloonHintingStart::default()
            } else {
                parse_body(body)?
            })
        }
        ("PATCH", ["balloon", "hinting", "stop"]) => ApiRequest::StopBalloonHinting,
        ("GET" | "PATCH", ["balloon", "hinting", rest @ ..]) => {
            return Err(ApiResponse::bad_request(format!(
                "Unrecognized {method} request path `/hinting/{}`.",
                rest.join("/")
            )))
        }
        ("PUT", ["cpu-config"]) => ApiRequest::PutCpuConfig(parse_body(body)?),
        ("PUT", ["serial"]) => ApiRequest::PutSerial(parse_body(body)?),
        ("GET", ["mmds"]) => ApiRequest::GetMmds,
        ("PUT", ["mmds"]) => ApiRequest::PutMmds(parse_any_json(body)?),
        ("PATCH", ["mmds"]) => ApiRequest::PatchMmds(parse_any_json(body)?),
        ("PUT", ["mmds", "config"]) => ApiRequest::PutMmdsConfig(parse_body(body)?),
        ("PUT", ["mmds", other]) => {
            return Err(ApiResponse::bad_request(format!(
                "Unrecognized PUT request path `{other}`."
            )))
        }
        ("PUT", ["logger"]) => ApiRequest::PutLogger(parse_body(body)?),
        ("PUT", ["metrics"]) => ApiRequest::PutMetrics(parse_body(body)?),
        ("PUT", ["actions"]) => ApiRequest::Action(parse_body(body)?),
        ("PATCH", ["vm"]) => ApiRequest::PatchVm(parse_body(body)?),
        ("PUT", ["snapshot", "create"]) => ApiRequest::CreateSnapshot(parse_body(body)?),
        ("PUT", ["snapshot", "load"]) => ApiRequest::LoadSnapshot(parse_body(body)?),
        ("PUT", ["checkpoints"]) => ApiRequest::CreateCheckpoint(if is_blank(body) {
            CheckpointCreate::default()
        } else {
            parse_body(body)?
        }),
        ("GET", ["checkpoints"]) => ApiRequest::ListCheckpoints,
        ("PUT", ["checkpoints", "restore"]) => ApiRequest::RestoreCheckpoint(parse_body(body)?),
        ("DELETE", ["checkpoints", name]) => {
            validate_checkpoint_name("name", name).map_err(to_response)?;
            ApiRequest::DeleteCheckpoint((*name).to_string())
        }
        _ => return Err(invalid_path(method, path)),
    };
    Ok(request)
}

/// Firecracker's reply to a path it does not serve, or a method the path does not take.
fn invalid_path(method: &str, path: &str) -> ApiResponse {
    ApiResponse::bad_request(format!(
        "Invalid request method and/or path: {method} {path}."
    ))
}

fn to_response(error: ConfigError) -> ApiResponse {
    ApiResponse::bad_request(error.to_string())
}

fn is_blank(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

fn parse_body<T: DeserializeOwned + Validate>(body: &[u8]) -> Result<T, ApiResponse> {
    if is_blank(body) {
        return Err(ApiResponse::bad_request(
            "The request body is empty: expected a JSON object",
        ));
    }
    parse_and_validate(body).map_err(to_response)
}

/// An MMDS body: any JSON value, as Firecracker takes it.
fn parse_any_json(body: &[u8]) -> Result<serde_json::Value, ApiResponse> {
    serde_json::from_slice(body).map_err(|e| {
        ApiResponse::bad_request(format!(
            "An error occurred when deserializing the json body of a request: {e}."
        ))
    })
}

fn check_path_id(field: &str, in_path: &str, in_body: &str) -> Result<(), ApiResponse> {
    if in_path != in_body {
        return Err(to_response(ConfigError::invalid(
            field,
            format!(
                "the id in the path (`{in_path}`) does not match the id in the body (`{in_body}`)"
            ),
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::*;

    fn ok(method: &str, path: &str, body: &str) -> ApiRequest {
        match route(method, path, body.as_bytes()) {
            Ok(r) => r,
            Err(e) => panic!("{method} {path} {body} -> {e:?}"),
        }
    }

    /// The fault message of a refused request (always a 400).
    fn fault(method: &str, path: &str, body: &str) -> String {
        match route(method, path, body.as_bytes()) {
            Ok(r) => panic!("{method} {path} {body} accepted as {r:?}"),
            Err(ApiResponse::Error {
                status: 400,
                message,
            }) => message,
            Err(other) => panic!("{method} {path} -> {other:?}"),
        }
    }

    #[test]
    fn routes_without_body() {
        for (method, path, expected) in [
            ("GET", "/", ApiRequest::GetInstanceInfo),
            ("GET", "/?x=1", ApiRequest::GetInstanceInfo),
            ("GET", "/machine-config", ApiRequest::GetMachineConfig),
            ("GET", "/machine-config/", ApiRequest::GetMachineConfig),
            ("GET", "/vm/config", ApiRequest::GetVmConfig),
            ("GET", "/checkpoints", ApiRequest::ListCheckpoints),
            ("GET", "/balloon", ApiRequest::GetBalloon),
            ("GET", "/balloon/statistics", ApiRequest::GetBalloonStats),
            (
                "GET",
                "/balloon/hinting/status",
                ApiRequest::GetBalloonHintingStatus,
            ),
            (
                "DELETE",
                "/checkpoints/base-1",
                ApiRequest::DeleteCheckpoint("base-1".into()),
            ),
            (
                "PUT",
                "/checkpoints",
                ApiRequest::CreateCheckpoint(CheckpointCreate::default()),
            ),
        ] {
            assert_eq!(ok(method, path, ""), expected, "{method} {path}");
        }
    }

    #[test]
    fn routes_with_body() {
        let table: Vec<(&str, &str, &str, ApiRequest)> = vec![
            (
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
                ApiRequest::PutMachineConfig(MachineConfig {
                    vcpu_count: 2,
                    mem_size_mib: 256,
                    ..MachineConfig::default()
                }),
            ),
            (
                "PATCH",
                "/machine-config",
                r#"{"mem_size_mib": 512}"#,
                ApiRequest::PatchMachineConfig(MachineConfigUpdate {
                    mem_size_mib: Some(512),
                    ..MachineConfigUpdate::default()
                }),
            ),
            (
                "PUT",
                "/boot-source",
                r#"{"kernel_image_path": "/k", "boot_args": "console=ttyS0"}"#,
                ApiRequest::PutBootSource(BootSourceConfig {
                    kernel_image_path: "/k".into(),
                    initrd_path: None,
                    boot_args: Some("console=ttyS0".into()),
                }),
            ),
            (
                "PUT",
                "/vsock",
                r#"{"guest_cid": 3, "uds_path": "/v.sock"}"#,
                ApiRequest::PutVsock(VsockConfig {
                    vsock_id: None,
                    guest_cid: 3,
                    uds_path: "/v.sock".into(),
                }),
            ),
            (
                "PUT",
                "/vsock/vsock0",
                r#"{"vsock_id": "vsock0", "guest_cid": 3, "uds_path": "/v.sock"}"#,
                ApiRequest::PutVsock(VsockConfig {
                    vsock_id: Some("vsock0".into()),
                    guest_cid: 3,
                    uds_path: "/v.sock".into(),
                }),
            ),
            (
                "PUT",
                "/entropy",
                "{}",
                ApiRequest::PutEntropy(EntropyConfig::default()),
            ),
            (
                "PUT",
                "/balloon",
                r#"{"amount_mib": 8, "deflate_on_oom": true, "stats_polling_interval_s": 2}"#,
                ApiRequest::PutBalloon(BalloonConfig {
                    amount_mib: 8,
                    deflate_on_oom: true,
                    stats_polling_interval_s: 2,
                    ..BalloonConfig::default()
                }),
            ),
            (
                "PATCH",
                "/balloon",
                r#"{"amount_mib": 4}"#,
                ApiRequest::PatchBalloon(BalloonUpdate { amount_mib: 4 }),
            ),
            (
                "PATCH",
                "/balloon/hinting/start",
                r#"{"acknowledge_on_stop": false}"#,
                ApiRequest::StartBalloonHinting(BalloonHintingStart {
                    acknowledge_on_stop: false,
                }),
            ),
            (
                "PATCH",
                "/balloon/hinting/stop",
                "{}",
                ApiRequest::StopBalloonHinting,
            ),
            (
                "PATCH",
                "/balloon/statistics",
                r#"{"stats_polling_interval_s": 3}"#,
                ApiRequest::PatchBalloonStats(BalloonStatsUpdate {
                    stats_polling_interval_s: 3,
                }),
            ),
            (
                "PUT",
                "/cpu-config",
                r#"{"msr_modifiers": [{"addr": "0x10a", "bitmap": "0b1"}]}"#,
                ApiRequest::PutCpuConfig(CustomCpuTemplate {
                    msr_modifiers: vec![MsrModifier {
                        addr: 0x10a,
                        bitmap: BitFilter { mask: 1, value: 1 },
                    }],
                    ..CustomCpuTemplate::default()
                }),
            ),
            (
                "PUT",
                "/logger",
                r#"{"level": "Info"}"#,
                ApiRequest::PutLogger(LoggerConfig {
                    level: Some(LogLevel::Info),
                    ..LoggerConfig::default()
                }),
            ),
            (
                "PUT",
                "/metrics",
                r#"{"metrics_path": "/m"}"#,
                ApiRequest::PutMetrics(MetricsConfig {
                    metrics_path: "/m".into(),
                }),
            ),
            (
                "PUT",
                "/actions",
                r#"{"action_type": "InstanceStart"}"#,
                ApiRequest::Action(InstanceActionInfo {
                    action_type: ActionType::InstanceStart,
                }),
            ),
            (
                "PATCH",
                "/vm",
                r#"{"state": "Paused"}"#,
                ApiRequest::PatchVm(VmStateUpdate {
                    state: VmState::Paused,
                }),
            ),
            (
                "PUT",
                "/snapshot/create",
                r#"{"snapshot_path": "s", "mem_file_path": "m", "snapshot_type": "Diff"}"#,
                ApiRequest::CreateSnapshot(CreateSnapshotParams {
                    snapshot_type: SnapshotType::Diff,
                    snapshot_path: "s".into(),
                    mem_file_path: "m".into(),
                    version: None,
                }),
            ),
            (
                "PUT",
                "/snapshot/load",
                r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "File", "backend_path": "m"}, "resume_vm": true}"#,
                ApiRequest::LoadSnapshot(LoadSnapshotParams {
                    snapshot_path: "s".into(),
                    mem_backend: Some(MemBackendConfig {
                        backend_type: MemBackendType::File,
                        backend_path: "m".into(),
                    }),
                    resume_vm: Some(true),
                    ..LoadSnapshotParams::default()
                }),
            ),
            (
                "PUT",
                "/checkpoints",
                r#"{"name": "booted"}"#,
                ApiRequest::CreateCheckpoint(CheckpointCreate {
                    name: Some("booted".into()),
                }),
            ),
            (
                "PUT",
                "/checkpoints/restore",
                r#"{"name": "booted"}"#,
                ApiRequest::RestoreCheckpoint(CheckpointRestore {
                    name: "booted".into(),
                    vsock_uds_path: None,
                    paused: None,
                }),
            ),
        ];
        for (method, path, body, expected) in table {
            assert_eq!(ok(method, path, body), expected, "{method} {path}");
        }
    }

    #[test]
    fn drive_and_interface_ids_must_match_the_path() {
        let body = r#"{"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true}"#;
        match ok("PUT", "/drives/rootfs", body) {
            ApiRequest::PutDrive(d) => assert_eq!(d.drive_id, "rootfs"),
            other => panic!("{other:?}"),
        }
        let msg = fault("PUT", "/drives/other", body);
        assert!(
            msg.starts_with("drive_id: the id in the path (`other`)"),
            "{msg}"
        );
        assert!(fault("PUT", "/drives/", body).starts_with("Invalid request method and/or path"));
        assert!(fault("PUT", "/drives/a/b", body).starts_with("Invalid request method and/or path"));

        let body =
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:00:00:00:01"}"#;
        assert!(matches!(
            ok("PUT", "/network-interfaces/eth0", body),
            ApiRequest::PutNetworkInterface(_)
        ));
        assert!(fault("PUT", "/network-interfaces/eth1", body).starts_with("iface_id: "));
        let bad_mac = r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00"}"#;
        assert!(fault("PUT", "/network-interfaces/eth0", bad_mac).starts_with("guest_mac: "));
    }

    #[test]
    fn unknown_paths_and_wrong_methods() {
        for (method, path) in [
            ("GET", "/nope"),
            ("GET", "machine-config"),
            ("DELETE", "/machine-config"),
            ("POST", "/actions"),
            ("GET", "/actions"),
            ("PUT", "/"),
            ("GET", "/vm"),
            ("PUT", "/snapshot"),
            ("PATCH", "/drives/"),
            ("get", "/"),
            ("GET", ""),
        ] {
            let body = if matches!(method, "GET" | "DELETE") {
                ""
            } else {
                "{}"
            };
            let msg = fault(method, path, body);
            assert_eq!(
                msg,
                format!("Invalid request method and/or path: {method} {path}.")
            );
        }
    }

    #[test]
    fn mmds_routes() {
        assert_eq!(ok("GET", "/mmds", ""), ApiRequest::GetMmds);
        assert_eq!(
            ok("PUT", "/mmds", r#"{"latest": {"a": "b"}}"#),
            ApiRequest::PutMmds(serde_json::json!({"latest": {"a": "b"}}))
        );
        assert_eq!(
            ok("PATCH", "/mmds", r#"{"a": null}"#),
            ApiRequest::PatchMmds(serde_json::json!({"a": null}))
        );
        assert!(matches!(
            ok("PUT", "/mmds/config", r#"{"network_interfaces": ["eth0"]}"#),
            ApiRequest::PutMmdsConfig(_)
        ));
        assert!(fault("PUT", "/mmds", "{").starts_with("An error occurred when deserializing"));
        assert!(fault("PUT", "/mmds", "").contains("EOF"));
        assert_eq!(
            fault("PUT", "/mmds/nope", "{}"),
            "Unrecognized PUT request path `nope`."
        );
        assert!(fault("PUT", "/mmds/config", r#"{"network_interfaces": []}"#).contains("is empty"));
        assert!(fault("PATCH", "/mmds/config", "{}").starts_with("Invalid request method"));
        assert!(fault("GET", "/mmds/config", "").starts_with("Invalid request method"));
    }

    #[test]
    fn a_get_or_delete_with_a_body_is_refused() {
        assert_eq!(fault("GET", "/", "{}"), "GET request cannot have a body.");
        assert_eq!(
            fault("DELETE", "/checkpoints/c1", "x"),
            "DELETE request cannot have a body."
        );
        assert_eq!(ok("GET", "/version", ""), ApiRequest::GetVersion);
    }

    #[test]
    fn body_errors_name_the_field() {
        let msg = fault(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": "x", "mem_size_mib": 1}"#,
        );
        assert!(
            msg.starts_with(r#"vcpu_count: invalid type: string "x", expected u8"#),
            "{msg}"
        );
        let msg = fault(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 1, "foo": 1}"#,
        );
        assert!(msg.starts_with("foo: unknown field `foo`"), "{msg}");
        let msg = fault(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 0, "mem_size_mib": 1}"#,
        );
        assert!(
            msg.starts_with("vcpu_count: must be between 1 and 32"),
            "{msg}"
        );
        let msg = fault("PATCH", "/machine-config", r#"{"cpu_template": "T2A"}"#);
        assert!(
            msg.starts_with("cpu_template: CPU template T2A is not implemented"),
            "{msg}"
        );
        let msg = fault(
            "PUT",
            "/cpu-config",
            r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0", "modifiers": [{"register": "eax", "bitmap": "0b12"}]}]}"#,
        );
        assert!(
            msg.starts_with("cpuid_modifiers[0].modifiers[0].bitmap: "),
            "{msg}"
        );
        let msg = fault("PUT", "/snapshot/load", r#"{"snapshot_path": "s"}"#);
        assert!(msg.starts_with("mem_backend: missing"), "{msg}");
        let msg = fault("PUT", "/actions", r#"{"action_type": "Reboot"}"#);
        assert!(
            msg.starts_with("action_type: unknown variant `Reboot`"),
            "{msg}"
        );
        assert!(fault("PUT", "/machine-config", "").contains("body is empty"));
        assert!(fault("PUT", "/machine-config", "{").contains("EOF"));
        assert!(fault("PUT", "/machine-config", "[1, 2]").contains("expected a JSON object"));
        assert!(fault("PUT", "/boot-source", "\u{1}").contains("expected a JSON object"));
        assert!(fault("PUT", "/checkpoints", r#"{"name": "../x"}"#).starts_with("name: "));
        assert!(fault("PUT", "/checkpoints/restore", "{}").contains("missing field `name`"));
        assert!(fault("DELETE", "/checkpoints/..", "").starts_with("name: "));
        assert!(fault("DELETE", "/checkpoints/.hidden", "").starts_with("name: "));
    }

    #[test]
    fn balloon_hinting_paths_as_firecracker_s() {
        // The start body is optional and defaults to acknowledging; the stop body is ignored.
        for body in ["", " "] {
            assert_eq!(
                ok("PATCH", "/balloon/hinting/start", body),
                ApiRequest::StartBalloonHinting(BalloonHintingStart::default())
            );
        }
        assert_eq!(
            ok("PATCH", "/balloon/hinting/stop", ""),
            ApiRequest::StopBalloonHinting
        );
        for (method, path, body, message) in [
            (
                "GET",
                "/balloon/hinting",
                "",
                "Unrecognized GET request path `/hinting/`.",
            ),
            (
                "GET",
                "/balloon/hinting/x",
                "",
                "Unrecognized GET request path `/hinting/x`.",
            ),
            (
                "PATCH",
                "/balloon/hinting",
                "{}",
                "Unrecognized PATCH request path `/hinting/`.",
            ),
            (
                "PATCH",
                "/balloon/hinting/x",
                "{}",
                "Unrecognized PATCH request path `/hinting/x`.",
            ),
        ] {
            assert_eq!(fault(method, path, body), message);
        }
        // A body that is not JSON, or a wrong type, is refused.
        fault("PATCH", "/balloon/hinting/start", "xx");
        fault(
            "PATCH",
            "/balloon/hinting/start",
            r#"{"acknowledge_on_stop": 3}"#,
        );
        assert!(fault("PUT", "/balloon/hinting/start", "{}").starts_with("Invalid request method"));
    }
}
