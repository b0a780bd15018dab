//! The guest agent in a real Linux guest: exec round trip of `true`, and put/get throughput,
//! through the VMM's vsock (Firecracker's `CONNECT 52` convention).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_agent::client::Client;
use cairn_agent::proto::ExecRequest;

use crate::util::{
    figure, guest_build, linux_config, source_dir, vmm_bin, write_vm_config, Options, Outcome,
};
use cairn_vmm_api::config::{VmConfig, VsockConfig};

/// `cairn-bench agent [--runs N]`.
pub fn agent(opts: &Options) -> Outcome {
    let mut out = Outcome {
        figures: vec![],
        failures: vec![],
    };
    let agent = std::env::var("CAIRN_AGENT_BIN").unwrap_or_else(|_| {
        source_dir()
            .join("target/agent-static/x86_64-unknown-linux-gnu/release/cairn-agent")
            .display()
            .to_string()
    });
    if !std::path::Path::new(&agent).exists() {
        out.failures.push(format!(
            "static agent {agent} not found: build it with RUSTFLAGS='-C target-feature=+crt-static' \
             cargo build --release -p cairn-agent --target x86_64-unknown-linux-gnu, or set CAIRN_AGENT_BIN"
        ));
        return out;
    }
    let (kernel, initrd, args) = match guest_build(&["--agent", &agent]) {
        Ok(g) => g,
        Err(e) => {
            out.failures.push(e);
            return out;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let cfg = dir.path().join("vm.json");
    let config = VmConfig {
        vsock: Some(VsockConfig {
            vsock_id: None,
            guest_cid: 3,
            uds_path: uds.clone(),
        }),
        ..linux_config(&kernel, &initrd, &args)
    };
    write_vm_config(&cfg, &config).unwrap();
    let mut child = Command::new(vmm_bin())
        .args(["--no-api", "--config-file"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let client = || Client::connect_uds(&uds, 52);
    while client().and_then(|mut c| c.ping()).is_err() {
        if Instant::now() > deadline {
            out.failures.push("the guest agent never answered".into());
            let _ = child.kill();
            let _ = child.wait();
            return out;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let req = ExecRequest {
        argv: vec!["true".into()],
        env: vec![],
        cwd: None,
        stdin: false,
        pty: None,
    };
    let mut samples = vec![];
    for _ in 0..opts.runs {
        let start = Instant::now();
        let ok = client()
            .and_then(|mut c| c.exec(&req, std::io::empty(), std::io::sink(), std::io::sink()));
        match ok {
            Ok(_) => samples.push(start.elapsed().as_secs_f64() * 1e3),
            Err(e) => out.failures.push(format!("exec true: {e}")),
        }
    }
    if !samples.is_empty() {
        out.figures.push(figure(
            "agent: exec `true` round trip (connect, spawn, exit)".into(),
            samples,
            "ms",
        ));
    }
    let ping: Vec<f64> = (0..opts.runs)
        .filter_map(|_| {
            let start = Instant::now();
            client()
                .and_then(|mut c| c.ping())
                .ok()
                .map(|_| start.elapsed().as_secs_f64() * 1e3)
        })
        .collect();
    if !ping.is_empty() {
        out.figures.push(figure(
            "agent: connect + ping round trip".into(),
            ping,
            "ms",
        ));
    }
    let size_mib = 8u64;
    let local = dir.path().join("payload");
    std::fs::write(&local, vec![0x5au8; (size_mib << 20) as usize]).unwrap();
    let back = dir.path().join("back");
    let (mut put, mut get) = (vec![], vec![]);
    for _ in 0..opts.runs.min(3) {
        let start = Instant::now();
        match client().and_then(|mut c| c.put(&local, "/tmp/payload")) {
            Ok(_) => put.push(size_mib as f64 / start.elapsed().as_secs_f64()),
            Err(e) => out.failures.push(format!("put: {e}")),
        }
        let start = Instant::now();
        match client().and_then(|mut c| c.get("/tmp/payload", &back)) {
            Ok(_) => get.push(size_mib as f64 / start.elapsed().as_secs_f64()),
            Err(e) => out.failures.push(format!("get: {e}")),
        }
        let _ = std::fs::remove_file(&back);
    }
    if !put.is_empty() {
        out.figures.push(figure(
            format!("agent: put {size_mib} MiB file"),
            put,
            "MiB/s",
        ));
    }
    if !get.is_empty() {
        out.figures.push(figure(
            format!("agent: get {size_mib} MiB file"),
            get,
            "MiB/s",
        ));
    }
    let _ = child.kill();
    let _ = child.wait();
    out
}
