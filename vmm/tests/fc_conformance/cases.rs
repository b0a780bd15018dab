//! The requests the conformance suite replays, built from Firecracker v1.16.1's API spec
//! (`src/firecracker/swagger/firecracker.yaml`) and its API tests
//! (`tests/integration_tests/functional/test_api.py`), with the status Firecracker answers.
//!
//! Each [`Case`] runs in a fresh VMM, step after step, so a step sees what the earlier ones set.
//! In a body or path, `{dir}` is a private temporary directory, `{kernel}` an existing file
//! used as the kernel image, `{rootfs}` and `{scratch}` existing files used as drives.
//! `{big:N}` as a whole body is a JSON object of about N bytes.
//!
//! A step whose method is `EXISTS` checks a path instead of sending a request: `200` when it
//! exists, `404` when not.
//!
//! `known` holds cairn's status where it still differs from Firecracker's, with the reason; the
//! suite fails when cairn answers anything else, so a fixed difference must leave the list.
//! docs/vmm.md lists the same differences.

/// One request (or check) and the status Firecracker gives.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// HTTP method, or `EXISTS`.
    pub method: &'static str,
    /// Request path.
    pub path: &'static str,
    /// Body, if any.
    pub body: Option<&'static str>,
    /// Firecracker's status.
    pub status: u16,
    /// Where cairn knowingly answers otherwise: its status and why.
    pub known: Option<(u16, &'static str)>,
    /// For a 200: top-level keys the JSON reply must have.
    pub keys: &'static [&'static str],
}

/// A scenario: steps run in order against one fresh VMM.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// Short name.
    pub name: &'static str,
    /// Where in Firecracker's spec or tests it comes from.
    pub from: &'static str,
    /// Whether it needs root (it creates tap devices; the VMMs run in a private network
    /// namespace then).
    pub needs_root: bool,
    /// The steps.
    pub steps: &'static [Step],
}

const fn s(
    method: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    status: u16,
) -> Step {
    Step {
        method,
        path,
        body,
        status,
        known: None,
        keys: &[],
    }
}

const fn get(path: &'static str, keys: &'static [&'static str]) -> Step {
    Step {
        method: "GET",
        path,
        body: None,
        status: 200,
        known: None,
        keys,
    }
}

const fn put(path: &'static str, body: &'static str, status: u16) -> Step {
    s("PUT", path, Some(body), status)
}

const fn patch(path: &'static str, body: &'static str, status: u16) -> Step {
    s("PATCH", path, Some(body), status)
}

const fn differs(step: Step, cairn: u16, why: &'static str) -> Step {
    Step {
        known: Some((cairn, why)),
        ..step
    }
}

const KERNEL: &str = r#"{"kernel_image_path": "{kernel}", "boot_args": "console=ttyS0"}"#;
const ROOTFS: &str = r#"{"drive_id": "rootfs", "path_on_host": "{rootfs}", "is_root_device": true, "is_read_only": false}"#;

/// Every top-level key of Firecracker v1.16.1's `GET /vm/config` reply.
const VM_CONFIG_KEYS: &[&str] = &[
    "balloon",
    "drives",
    "boot-source",
    "cpu-config",
    "logger",
    "machine-config",
    "metrics",
    "mmds-config",
    "network-interfaces",
    "vsock",
    "entropy",
    "pmem",
    "memory-hotplug",
];

/// Every case.
pub const CASES: &[Case] = &[
    Case {
        name: "instance_info_and_version",
        from: "swagger: GET /, GET /version, GET /machine-config, GET /vm/config",
        needs_root: false,
        steps: &[
            get("/", &["id", "state", "vmm_version", "app_name"]),
            get("/version", &["firecracker_version"]),
            get(
                "/machine-config",
                &[
                    "vcpu_count",
                    "mem_size_mib",
                    "smt",
                    "track_dirty_pages",
                    "huge_pages",
                ],
            ),
            get("/vm/config", VM_CONFIG_KEYS),
        ],
    },
    Case {
        name: "unknown_paths_and_methods",
        from: "parsed_request.rs: InvalidPathMethod, method_to_error",
        needs_root: false,
        steps: &[
            s("GET", "/nope", None, 400),
            s("PUT", "/nope", Some("{}"), 400),
            s("GET", "/", Some("{}"), 400),
            s("PUT", "/machine-config", None, 400),
            s("PATCH", "/machine-config", None, 400),
            s("GET", "/actions", None, 400),
            s("DELETE", "/machine-config", None, 400),
        ],
    },
    Case {
        name: "machine_config",
        from: "test_api.py: test_api_machine_config",
        needs_root: false,
        steps: &[
            put(
                "/machine-config",
                r#"{"vcpu_count": "-2", "mem_size_mib": 128}"#,
                400,
            ),
            put(
                "/machine-config",
                r#"{"vcpu_count": 1, "mem_size_mib": 128, "smt": "random_string"}"#,
                400,
            ),
            put(
                "/machine-config",
                r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "random_string"}"#,
                400,
            ),
            patch("/machine-config", r#"{"track_dirty_pages": true}"#, 204),
            put("/machine-config", r#"{"mem_size_mib": 128}"#, 400),
            put("/machine-config", r#"{"vcpu_count": 2}"#, 400),
            put(
                "/machine-config",
                r#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
                204,
            ),
            patch("/machine-config", r#"{"smt": true}"#, 204),
            put(
                "/machine-config",
                r#"{"vcpu_count": 1, "mem_size_mib": "-2"}"#,
                400,
            ),
            put(
                "/machine-config",
                r#"{"vcpu_count": 1, "mem_size_mib": 18446744073709551616}"#,
                400,
            ),
            patch("/machine-config", r#"{"mem_size_mib": 0}"#, 400),
            patch("/machine-config", r#"{"mem_size_mib": 256}"#, 204),
            put(
                "/machine-config",
                r#"{"vcpu_count": 33, "mem_size_mib": 128}"#,
                400,
            ),
            put(
                "/machine-config",
                r#"{"vcpu_count": 3, "mem_size_mib": 128, "smt": true}"#,
                400,
            ),
            put(
                "/machine-config",
                r#"{"vcpu_count": 2, "mem_size_mib": 128, "foo": 1}"#,
                400,
            ),
            patch("/machine-config", r#"{"cpu_template": "C3"}"#, 204),
            patch("/machine-config", r#"{"cpu_template": "T2S"}"#, 204),
            patch("/machine-config", r#"{"cpu_template": "T2CL"}"#, 204),
            patch("/machine-config", r#"{"huge_pages": "2M"}"#, 204),
            // With 2 MiB pages the memory must be a whole number of them.
            patch("/machine-config", r#"{"mem_size_mib": 129}"#, 400),
            put(
                "/machine-config",
                r#"{"vcpu_count": 1, "mem_size_mib": 129, "huge_pages": "2M"}"#,
                400,
            ),
            put(
                "/machine-config",
                r#"{"vcpu_count": 1, "mem_size_mib": 130, "huge_pages": "2M"}"#,
                204,
            ),
            patch("/machine-config", r#"{"huge_pages": "None"}"#, 204),
            get(
                "/machine-config",
                &["vcpu_count", "mem_size_mib", "smt", "track_dirty_pages"],
            ),
        ],
    },
    Case {
        name: "boot_source_is_checked_at_put",
        from: "test_api.py: test_api_put_update_pre_boot",
        needs_root: false,
        steps: &[
            put("/boot-source", r#"{"kernel_image_path": "foo.bar"}"#, 400),
            put("/boot-source", KERNEL, 204),
            put(
                "/boot-source",
                r#"{"kernel_image_path": "{kernel}", "initrd_path": "foo.bar"}"#,
                400,
            ),
            put(
                "/boot-source",
                r#"{"kernel_image_path": "{kernel}", "bogus": 1}"#,
                400,
            ),
            put("/boot-source", r#"{"boot_args": "console=ttyS0"}"#, 400),
        ],
    },
    Case {
        name: "drives_are_checked_at_put",
        from: "test_api.py: test_api_put_update_pre_boot, test_drive_io_engine",
        needs_root: false,
        steps: &[
            put("/drives/rootfs", ROOTFS, 204),
            put(
                "/drives/scratch",
                r#"{"drive_id": "scratch", "path_on_host": "{scratch}", "is_root_device": false, "is_read_only": false}"#,
                204,
            ),
            put(
                "/drives/rootfs",
                r#"{"drive_id": "rootfs", "path_on_host": "foo.bar", "is_root_device": true, "is_read_only": true}"#,
                400,
            ),
            put(
                "/drives/scratch",
                r#"{"drive_id": "scratch", "path_on_host": "{scratch}", "is_root_device": true, "is_read_only": false}"#,
                400,
            ),
            put(
                "/drives/scratch",
                r#"{"drive_id": "scratch", "path_on_host": "{scratch}", "is_root_device": false, "is_read_only": true}"#,
                204,
            ),
            put("/drives/other", ROOTFS, 400),
            put(
                "/drives/a-b",
                r#"{"drive_id": "a-b", "path_on_host": "{scratch}", "is_root_device": false}"#,
                400,
            ),
            put(
                "/drives/rootfs",
                r#"{"drive_id": "rootfs", "path_on_host": "{rootfs}", "is_root_device": true, "cache_type": "Writeback"}"#,
                204,
            ),
            put(
                "/drives/rootfs",
                r#"{"drive_id": "rootfs", "path_on_host": "{rootfs}", "is_root_device": true, "rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}"#,
                204,
            ),
            put(
                "/drives/rootfs",
                r#"{"drive_id": "rootfs", "path_on_host": "{rootfs}", "is_root_device": true, "rate_limiter": {"bandwidth": {"size": 1000, "one_time_burst": 500, "refill_time": 100}, "ops": {"size": 10, "refill_time": 1000}}}"#,
                204,
            ),
            put(
                "/drives/rootfs",
                r#"{"drive_id": "rootfs", "path_on_host": "{rootfs}", "is_root_device": true, "rate_limiter": {"iops": {"size": 10, "refill_time": 1000}}}"#,
                400,
            ),
            put(
                "/drives/rootfs",
                r#"{"drive_id": "rootfs", "path_on_host": "{rootfs}", "is_root_device": true, "rate_limiter": {"bandwidth": {"size": 1000}}}"#,
                400,
            ),
            put(
                "/drives/rootfs",
                r#"{"drive_id": "rootfs", "path_on_host": "{rootfs}", "is_root_device": true, "io_engine": "Async"}"#,
                204,
            ),
            get("/vm/config", VM_CONFIG_KEYS),
        ],
    },
    Case {
        name: "vsock_socket_exists_after_put",
        from: "swagger: PUT /vsock (bandsox waits for the socket before InstanceStart)",
        needs_root: false,
        steps: &[
            put(
                "/vsock",
                r#"{"guest_cid": 3, "uds_path": "{dir}/v.sock"}"#,
                204,
            ),
            s("EXISTS", "{dir}/v.sock", None, 200),
            put(
                "/vsock",
                r#"{"guest_cid": 4, "uds_path": "{dir}/v2.sock"}"#,
                204,
            ),
            s("EXISTS", "{dir}/v2.sock", None, 200),
            put("/vsock", r#"{"guest_cid": 3}"#, 400),
            // bandsox's request: Firecracker reads only the path's first segment here, and
            // takes the deprecated `vsock_id`.
            put(
                "/vsock/vsock0",
                r#"{"vsock_id": "vsock0", "guest_cid": 5, "uds_path": "{dir}/v3.sock"}"#,
                204,
            ),
            s("EXISTS", "{dir}/v3.sock", None, 200),
        ],
    },
    Case {
        name: "entropy_cpu_config_serial",
        from: "swagger: PUT /entropy, /cpu-config, /serial",
        needs_root: false,
        steps: &[
            put("/entropy", "{}", 204),
            put(
                "/entropy",
                r#"{"rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}"#,
                204,
            ),
            put("/cpu-config", "{}", 204),
            put("/serial", r#"{"serial_out_path": "{dir}/serial.out"}"#, 204),
            put(
                "/serial",
                r#"{"serial_out_path": "{dir}/serial.out", "rate_limiter": {"size": 1000, "refill_time": 100}}"#,
                204,
            ),
            put(
                "/serial",
                r#"{"serial_out_path": "{dir}/serial.out", "rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}"#,
                400,
            ),
            put("/serial", r#"{"serial_out_path": 5}"#, 400),
            put("/serial", r#"{"serial_out": "{dir}/x"}"#, 400),
        ],
    },
    Case {
        name: "logger_and_metrics",
        from: "swagger: PUT /logger, PUT /metrics, FlushMetrics",
        needs_root: false,
        steps: &[
            put(
                "/logger",
                r#"{"log_path": "{dir}/log", "level": "Info", "show_level": true, "show_log_origin": false}"#,
                204,
            ),
            put("/logger", r#"{"level": "Bogus"}"#, 400),
            put("/metrics", r#"{"metrics_path": "{dir}/metrics"}"#, 204),
            put("/actions", r#"{"action_type": "FlushMetrics"}"#, 400),
            // Both files are created when set; metrics only once per process.
            s("EXISTS", "{dir}/log", None, 200),
            s("EXISTS", "{dir}/metrics", None, 200),
            put("/metrics", r#"{"metrics_path": "{dir}/metrics2"}"#, 400),
            put("/logger", r#"{"log_path": "{dir}/no/such/log"}"#, 400),
            put("/logger", r#"{"log_path": "{dir}/log2", "level": "Debug"}"#, 204),
            s("EXISTS", "{dir}/log2", None, 200),
        ],
    },
    Case {
        name: "actions_before_start",
        from: "rpc_interface.rs: handle_preboot_request (OperationNotSupportedPreBoot)",
        needs_root: false,
        steps: &[
            put("/actions", r#"{"action_type": "Foo"}"#, 400),
            put("/actions", r#"{"action_type": "SendCtrlAltDel"}"#, 400),
            patch("/vm", r#"{"state": "Paused"}"#, 400),
            patch("/vm", r#"{"state": "Resumed"}"#, 400),
            put(
                "/snapshot/create",
                r#"{"snapshot_path": "{dir}/s", "mem_file_path": "{dir}/m"}"#,
                400,
            ),
            put("/actions", r#"{"action_type": "InstanceStart"}"#, 400),
            get("/", &["id", "state", "vmm_version", "app_name"]),
        ],
    },
    Case {
        name: "mmds",
        from: "swagger: PUT/PATCH/GET /mmds, PUT /mmds/config; test_api.py: test_api_mmds_config, test_map_private_seccomp_regression; rpc_interface.rs: mmds_patch_data",
        needs_root: false,
        steps: &[
            get("/mmds", &[]),
            patch("/mmds", r#"{"latest": {"meta-data": {"ami-id": "x"}}}"#, 400),
            put(
                "/mmds",
                r#"{"latest": {"meta-data": {"ami-id": "ami-12345678"}}}"#,
                204,
            ),
            get("/mmds", &["latest"]),
            patch(
                "/mmds",
                r#"{"latest": {"meta-data": {"ami-id": "ami-87654321"}}}"#,
                204,
            ),
            put("/mmds", "{", 400),
            put("/mmds/nope", "{}", 400),
            put("/mmds", "{big:52000}", 400),
            put("/mmds/config", r#"{"network_interfaces": []}"#, 400),
            put("/mmds/config", r#"{"network_interfaces": ["foo"]}"#, 400),
            put("/mmds/config", r#"{"version": "V3", "network_interfaces": ["foo"]}"#, 400),
        ],
    },
    Case {
        name: "balloon",
        from: "swagger: PUT/GET/PATCH /balloon, GET/PATCH /balloon/statistics (before start)",
        needs_root: false,
        steps: &[
            s("GET", "/balloon", None, 400),
            put(
                "/balloon",
                r#"{"amount_mib": 0, "deflate_on_oom": false}"#,
                204,
            ),
            get(
                "/balloon",
                &[
                    "amount_mib",
                    "deflate_on_oom",
                    "stats_polling_interval_s",
                    "free_page_hinting",
                    "free_page_reporting",
                ],
            ),
            put(
                "/balloon",
                r#"{"amount_mib": 100000, "deflate_on_oom": false}"#,
                400,
            ),
            put("/balloon", r#"{"amount_mib": 1}"#, 400),
            s("GET", "/balloon/statistics", None, 400),
            patch(
                "/balloon/statistics",
                r#"{"stats_polling_interval_s": 1}"#,
                400,
            ),
            patch("/balloon", r#"{"amount_mib": 1}"#, 400),
        ],
    },
    Case {
        name: "balloon_free_page_hinting_and_reporting",
        from: "swagger: free_page_hinting, free_page_reporting, /balloon/hinting/start|status|stop \
               (before start); request/balloon.rs: parse_get_hinting, parse_patch_hinting",
        needs_root: false,
        steps: &[
            s("GET", "/balloon/hinting/status", None, 400),
            s("PATCH", "/balloon/hinting/start", None, 400),
            s("PATCH", "/balloon/hinting/stop", None, 400),
            put(
                "/balloon",
                r#"{"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 1,
                    "free_page_hinting": true, "free_page_reporting": true}"#,
                204,
            ),
            get(
                "/balloon",
                &[
                    "amount_mib",
                    "deflate_on_oom",
                    "stats_polling_interval_s",
                    "free_page_hinting",
                    "free_page_reporting",
                ],
            ),
            get("/vm/config", VM_CONFIG_KEYS),
            put(
                "/balloon",
                r#"{"amount_mib": 0, "deflate_on_oom": false, "free_page_reporting": 1}"#,
                400,
            ),
            // Still before start: every hinting call is refused, whatever its body.
            s("GET", "/balloon/hinting/status", None, 400),
            patch("/balloon/hinting/start", "{}", 400),
            patch("/balloon/hinting/start", r#"{"acknowledge_on_stop": false}"#, 400),
            patch("/balloon/hinting/start", r#"{"acknowledge_on_stop": 3}"#, 400),
            patch("/balloon/hinting/start", "xx", 400),
            patch("/balloon/hinting/stop", "{}", 400),
            // Paths Firecracker does not know under /balloon/hinting.
            s("GET", "/balloon/hinting", None, 400),
            s("GET", "/balloon/hinting/x", None, 400),
            patch("/balloon/hinting", "{}", 400),
            patch("/balloon/hinting/x", "{}", 400),
            s("DELETE", "/balloon/hinting/status", None, 400),
        ],
    },
    Case {
        name: "patch_devices_before_start",
        from: "swagger: PATCH /drives/{id}, PATCH /network-interfaces/{id}",
        needs_root: false,
        steps: &[
            put("/drives/rootfs", ROOTFS, 204),
            patch(
                "/drives/rootfs",
                r#"{"drive_id": "rootfs", "path_on_host": "{scratch}"}"#,
                400,
            ),
            patch("/network-interfaces/eth0", r#"{"iface_id": "eth0"}"#, 400),
            patch(
                "/drives/rootfs",
                r#"{"drive_id": "rootfs", "rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}"#,
                400,
            ),
            patch("/drives/rootfs", r#"{"drive_id": "rootfs", "is_read_only": true}"#, 400),
            patch("/drives/other", r#"{"drive_id": "rootfs"}"#, 400),
            patch(
                "/network-interfaces/eth0",
                r#"{"iface_id": "eth0", "rx_rate_limiter": {"ops": {"size": 1, "refill_time": 1}}, "tx_rate_limiter": {"bandwidth": {"size": 0, "refill_time": 0}}}"#,
                400,
            ),
        ],
    },
    Case {
        name: "snapshot_load_bad_input",
        from: "swagger: PUT /snapshot/load",
        needs_root: false,
        steps: &[
            put("/snapshot/load", r#"{"snapshot_path": "{dir}/s"}"#, 400),
            put(
                "/snapshot/load",
                r#"{"snapshot_path": "{dir}/s", "mem_backend": {"backend_type": "Nope", "backend_path": "{dir}/m"}}"#,
                400,
            ),
            put(
                "/snapshot/load",
                r#"{"snapshot_path": "{dir}/s", "mem_backend": {"backend_type": "File", "backend_path": "{dir}/m"}, "vsock_override": {}}"#,
                400,
            ),
            put(
                "/snapshot/load",
                r#"{"snapshot_path": "{dir}/s", "mem_backend": {"backend_type": "File", "backend_path": "{dir}/m"}, "clock_realtime": "yes"}"#,
                400,
            ),
        ],
    },
    Case {
        name: "payload_limit",
        from: "micro_http: a body over --http-api-max-payload-size (51200 by default)",
        needs_root: false,
        steps: &[put("/cpu-config", "{big:52000}", 400)],
    },
    Case {
        name: "network_interfaces",
        from: "test_api.py: test_net_api_put_update_pre_boot",
        needs_root: true,
        steps: &[
            put(
                "/network-interfaces/1",
                r#"{"iface_id": "1", "guest_mac": "06:00:00:00:00:01", "host_dev_name": "fctap1"}"#,
                204,
            ),
            put(
                "/network-interfaces/2",
                r#"{"iface_id": "2", "guest_mac": "07:00:00:00:00:01", "host_dev_name": "fctap2"}"#,
                204,
            ),
            put(
                "/network-interfaces/2",
                r#"{"iface_id": "2", "guest_mac": "06:00:00:00:00:01", "host_dev_name": "fctap2"}"#,
                400,
            ),
            put(
                "/network-interfaces/2",
                r#"{"iface_id": "2", "guest_mac": "08:00:00:00:00:01", "host_dev_name": "fctap2"}"#,
                204,
            ),
            put(
                "/network-interfaces/1",
                r#"{"iface_id": "1", "guest_mac": "06:00:00:00:00:01", "host_dev_name": "fctap2"}"#,
                400,
            ),
            differs(
                put("/network-interfaces/3", r#"{"iface_id": "3", "guest_mac": "06:00:00:00:00:01", "host_dev_name": "fctap3"}"#, 204),
                400,
                "by design: a refused PUT keeps the last valid configuration; Firecracker drops interface 1 when its update fails, which frees its MAC",
            ),
            // Firecracker has dropped interface 1 (above), so it refuses MMDS on it.
            differs(
                put("/mmds/config", r#"{"network_interfaces": ["1"]}"#, 400),
                204,
                "interface 1 is still attached in cairn (see the refused PUT above)",
            ),
            put(
                "/mmds/config",
                r#"{"network_interfaces": ["1", "foo"]}"#,
                400,
            ),
            put(
                "/mmds/config",
                r#"{"version": "foo", "network_interfaces": ["1"]}"#,
                400,
            ),
            differs(
                put(
                    "/mmds/config",
                    r#"{"version": "V2", "ipv4_address": "169.254.169.250", "network_interfaces": ["1"]}"#,
                    400,
                ),
                204,
                "interface 1 is still attached in cairn (see the refused PUT above)",
            ),
            put(
                "/mmds/config",
                r#"{"ipv4_address": "169.254.0.1", "network_interfaces": ["2"]}"#,
                400,
            ),
            put("/mmds/config", r#"{"network_interfaces": ["2"], "imds_compat": true}"#, 204),
            get("/vm/config", VM_CONFIG_KEYS),
            put(
                "/network-interfaces/4",
                r#"{"iface_id": "4", "host_dev_name": "fctap4", "mtu": 1400}"#,
                204,
            ),
            put(
                "/network-interfaces/5",
                r#"{"iface_id": "5", "host_dev_name": "fctap5", "mtu": 67}"#,
                400,
            ),
            put(
                "/network-interfaces/5",
                r#"{"iface_id": "5", "host_dev_name": "fctap5", "mtu": 65536}"#,
                400,
            ),
            put(
                "/network-interfaces/6",
                r#"{"iface_id": "6", "host_dev_name": "fctap6", "rx_rate_limiter": {"bandwidth": {"size": 100000, "one_time_burst": 1000, "refill_time": 100}}, "tx_rate_limiter": {"ops": {"size": 10, "refill_time": 100}}}"#,
                204,
            ),
            put(
                "/network-interfaces/7",
                r#"{"iface_id": "7", "host_dev_name": "fctap7", "tx_rate_limiter": {"bandwidth": {"size": 100000}}}"#,
                400,
            ),
            put(
                "/network-interfaces/7",
                r#"{"iface_id": "7", "host_dev_name": "fctap7", "rx_rate_limiter": {"ops": {"size": 1, "refill_time": 1}, "burst": 1}}"#,
                400,
            ),
            get("/vm/config", VM_CONFIG_KEYS),
        ],
    },
];
