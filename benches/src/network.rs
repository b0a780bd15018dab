//! `cairn-bench network`: guest -> host TCP throughput through the sandbox network (tap,
//! bridge, veth, NAT), on the Linux guest. Root only.
//!
//! Like the network test, the bench makes two namespaces: `net-b<pid>-h`, where `cairn` runs
//! (through `nsenter --net`), and `net-b<pid>-i` behind its default route, holding a TCP sink
//! (python3) on 198.18.0.2:9000. The guest's bash writes `--mib` MiB of zeros to
//! `/dev/tcp/198.18.0.2/9000` (`head -c`); the sink times first byte to end of stream, so the
//! guest's process start-up is not counted.
//!
//! Then, side by side on the same kernel and initramfs (`guest/build`), `cairn-vmm` and QEMU
//! microvm each boot with a virtio-net device on tap `qtap0` in a third namespace,
//! `net-b<pid>-q` (10.77.0.1/24 on the tap, a sink there): the guest's busybox sets up `eth0`
//! and pipes `--mib` MiB of zeros into `nc` (commands through the serial console, as in
//! `cairn-bench block`), timed by the sink the same way. This pair compares the VMMs' virtio-net
//! and tap paths on identical guest work; the first figure is the whole product path.
//! `CAIRN_BENCH_NETWORK=pair` runs the pair only. Each sample is also printed on stderr as it
//! is taken.

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use cairn_tests::sandbox::CairnHome;
use cairn_vmm_api::config::{NetConfig, VmConfig};

use crate::block::Console;
use crate::util::{
    figure, guest_build, linux_config, qemu_microvm, vmm_bin, write_vm_config, Options, Outcome,
};

const SINK: &str = r#"import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 9000)); s.listen()
while True:
    c, _ = s.accept(); n = 0; t0 = None
    while True:
        b = c.recv(1 << 20)
        if not b: break
        if t0 is None: t0 = time.monotonic()
        n += len(b)
    dt = time.monotonic() - (t0 or time.monotonic())
    print(n, dt, flush=True); c.close()
"#;

/// MiB sent per run.
/// (1 MiB: the guest kernel runs emulated on the development host, at about 0.1 MiB/s.)
const MIB: u64 = 1;

fn sh(cmd: &str) -> Result<(), String> {
    let out = Command::new("sh")
        .args(["-ec", cmd])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("{cmd}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

struct Namespaces(String);

impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = sh(&format!(
            "for n in {0}-i {0}-q; do ip netns pids $n | xargs -r kill; done
             ip netns del {0}-h; ip netns del {0}-i; ip netns del {0}-q",
            self.0
        ));
    }
}

/// The sink (python3 [`SINK`] on `addr`:9000 in namespace `ns`) and its output lines.
fn start_sink(ns: &str, addr: &str) -> Result<(Child, Lines<BufReader<ChildStdout>>), String> {
    let mut sink = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", SINK, addr])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the python3 sink: {e}"))?;
    let stdout = sink.stdout.take().ok_or("no sink output")?;
    std::thread::sleep(Duration::from_millis(300));
    Ok((sink, BufReader::new(stdout).lines()))
}

/// MiB/s from one sink line (`BYTES SECONDS`).
fn sink_rate(lines: &mut Lines<BufReader<ChildStdout>>) -> Result<f64, String> {
    let Some(Ok(line)) = lines.next() else {
        return Err("the sink said nothing".into());
    };
    let mut w = line.split_whitespace();
    match (
        w.next().map(str::parse::<f64>),
        w.next().map(str::parse::<f64>),
    ) {
        (Some(Ok(n)), Some(Ok(secs))) if secs > 0.0 && n > 0.0 => {
            Ok(n / (1u64 << 20) as f64 / secs)
        }
        _ => Err(format!("sink line {line:?}")),
    }
}

/// One VMM's figure of the side-by-side pair: boot `console`, set up eth0, send `runs` times.
fn pair_runs(
    console: Result<Console, String>,
    lines: &mut Lines<BufReader<ChildStdout>>,
    runs: usize,
) -> Result<Vec<f64>, String> {
    let mut console = console?;
    console.wait_for("cairn-guest-ready", Duration::from_secs(400))?;
    std::thread::sleep(Duration::from_secs(1));
    // Markers are computed by the shell, so the echoed command line never matches them.
    // busybox's head takes a byte count (no `M` suffix).
    console.send("ifconfig eth0 10.77.0.2 netmask 255.255.255.0 up; echo NET-$((1+1))-UP\n")?;
    console.wait_for("NET-2-UP", Duration::from_secs(120))?;
    let mut samples = Vec::new();
    for i in 0..runs {
        console.send(&format!(
            "head -c {} /dev/zero | nc 10.77.0.1 9000; echo NET-$((1+1))-SENT-{i}\n",
            MIB << 20
        ))?;
        console.wait_for(&format!("NET-2-SENT-{i}"), Duration::from_secs(300))?;
        let rate = sink_rate(lines)?;
        eprintln!("network: sample {i}: {rate:.4} MiB/s");
        samples.push(rate);
    }
    Ok(samples)
}

/// cairn-vmm and QEMU microvm on the same kernel, initramfs and tap (see the module docs).
fn side_by_side(tag: &str, runs: usize, out: &mut Outcome) {
    let ns = format!("{tag}-q");
    if let Err(e) = sh(&format!(
        "ip netns add {ns}; ip -n {ns} link set lo up
         ip -n {ns} tuntap add qtap0 mode tap vnet_hdr
         ip -n {ns} addr add 10.77.0.1/24 dev qtap0; ip -n {ns} link set qtap0 up"
    )) {
        out.failures.push(format!("namespace {ns}: {e}"));
        return;
    }
    // The guest `cairn` itself boots: `CAIRN_KERNEL` + `CAIRN_INITRD` (+ `CAIRN_BOOT_ARGS`)
    // when set, as for `cairn create`; else `guest/build`.
    let from_env = match (std::env::var("CAIRN_KERNEL"), std::env::var("CAIRN_INITRD")) {
        (Ok(k), Ok(i)) => std::env::var("CAIRN_BOOT_ARGS").ok().map(|a| (k, i, a)),
        _ => None,
    };
    let (kernel, initrd, args) = match from_env.map_or_else(|| guest_build(&[]), Ok) {
        Ok(g) => g,
        Err(e) => {
            out.failures.push(e);
            return;
        }
    };
    let (mut sink, mut lines) = match start_sink(&ns, "10.77.0.1") {
        Ok(s) => s,
        Err(e) => {
            out.failures.push(e);
            return;
        }
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            out.failures.push(format!("tempdir: {e}"));
            return;
        }
    };
    let cfg = dir.path().join("vm.json");
    let config = VmConfig {
        network_interfaces: vec![NetConfig {
            iface_id: "eth0".into(),
            host_dev_name: "qtap0".into(),
            guest_mac: Some("02:ca:0a:4d:00:02".into()),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
            mtu: None,
        }],
        ..linux_config(&kernel, &initrd, &args)
    };
    if let Err(e) = write_vm_config(&cfg, &config) {
        out.failures.push(e);
        return;
    }
    let in_ns = |program: &std::path::Path| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns]).arg(program);
        c
    };
    // `CAIRN_VMM` (e.g. the static release build a jailed sandbox runs), else the one beside
    // this bench.
    let vmm_path = std::env::var_os("CAIRN_VMM").map_or_else(vmm_bin, std::path::PathBuf::from);
    let mut vmm = in_ns(&vmm_path);
    vmm.args(["--no-api", "--config-file"]).arg(&cfg);
    let qemu = qemu_microvm(
        std::path::Path::new("qemu-system-x86_64"),
        &kernel,
        &initrd,
        &args,
    );
    let mut q = in_ns(std::path::Path::new(qemu.get_program()));
    q.args(qemu.get_args()).args([
        "-netdev",
        "tap,id=n0,ifname=qtap0,script=no,downscript=no",
        "-device",
        "virtio-net-device,netdev=n0,mac=02:ca:0a:4d:00:02",
    ]);
    for (name, cmd) in [("cairn-vmm", vmm), ("QEMU microvm", q)] {
        match pair_runs(Console::spawn(cmd), &mut lines, runs) {
            Ok(samples) => out.figures.push(figure(
                format!("guest -> host TCP, {MIB} MiB, {name} (initramfs, virtio-net, tap)"),
                samples,
                "MiB/s",
            )),
            Err(e) => out.failures.push(format!("{name}: {e}")),
        }
    }
    let _ = sink.kill();
    let _ = sink.wait();
}

/// The whole product path: `cairn create` in `{tag}-h`, the sink in `{tag}-i`.
fn product_path(tag: &str, runs: usize, out: &mut Outcome) {
    let (mut sink, mut lines) = match start_sink(&format!("{tag}-i"), "198.18.0.2") {
        Ok(s) => s,
        Err(e) => {
            out.failures.push(e);
            return;
        }
    };
    std::env::set_var("CAIRN_NET_DNS", "198.18.0.2");
    let mut h = CairnHome::new();
    h.verbose = false;
    h.netns = Some(format!("{tag}-h"));
    let created = h.run(&["create", "bn", "--mem", "256", "--idle-timeout", "0"]);
    if !created.status.success() {
        out.failures.push(format!(
            "cairn create: {}",
            String::from_utf8_lossy(&created.stderr).trim()
        ));
        return;
    }
    let script = format!("head -c {}M /dev/zero > /dev/tcp/198.18.0.2/9000", MIB);
    let mut samples = Vec::new();
    for _ in 0..runs {
        let (code, text) = h.exec("bn", &["bash", "-c", &script]);
        if code != 0 {
            out.failures
                .push(format!("guest send exited {code}: {text}"));
            continue;
        }
        match sink_rate(&mut lines) {
            Ok(r) => samples.push(r),
            Err(e) => out.failures.push(e),
        }
    }
    if !samples.is_empty() {
        out.figures.push(figure(
            format!("guest -> host TCP, {MIB} MiB, cairn (tap+bridge+veth+NAT)"),
            samples,
            "MiB/s",
        ));
    }
    drop(h);
    let _ = sink.kill();
    let _ = sink.wait();
}

pub fn network(opts: &Options) -> Outcome {
    let mut out = Outcome::default();
    // SAFETY: trivial getter.
    if unsafe { libc::geteuid() } != 0 {
        out.failures
            .push("network: needs root (namespaces, nftables)".into());
        return out;
    }
    let tag = format!("net-b{}", std::process::id());
    let ns = Namespaces(tag.clone());
    if let Err(e) = sh(&format!(
        "ip netns add {tag}-h; ip netns add {tag}-i
         ip link add {tag}a netns {tag}-h type veth peer name {tag}b netns {tag}-i
         ip -n {tag}-h addr add 198.18.0.1/24 dev {tag}a; ip -n {tag}-h link set {tag}a up
         ip -n {tag}-h link set lo up; ip -n {tag}-h route add default via 198.18.0.2
         ip -n {tag}-i addr add 198.18.0.2/24 dev {tag}b; ip -n {tag}-i link set {tag}b up"
    )) {
        out.failures.push(format!("namespaces: {e}"));
        return out;
    }
    // CAIRN_BENCH_NETWORK=pair: only the side-by-side pair (the product path boots the root
    // disk, which takes minutes on an emulated-KVM host).
    if std::env::var("CAIRN_BENCH_NETWORK").as_deref() != Ok("pair") {
        product_path(&tag, opts.runs.max(1), &mut out);
    }
    side_by_side(&tag, opts.runs.clamp(1, 5), &mut out);
    drop(ns);
    out
}
