//! What a crash leaves of sandbox networks, and `cairn doctor` (docs/network.md, "Cleanup and
//! `cairn doctor`"): `cairn create` is killed (SIGKILL, with its VMM) in the middle of a boot,
//! in a namespace `net-d<pid>-h` of the test's own (cairn runs there through `nsenter --net`;
//! nothing is sent anywhere). Root and KVM only; needs nftables (scripts/deps).
//!
//! Checks: for a crashed create whose directory is still there, `doctor` keeps the sandbox
//! (`cold`) with its whole network; after its table is deleted and its forwarder killed,
//! `doctor` re-makes both; for a crashed create whose directory is gone too (an interrupted
//! `rm`), `doctor` removes its namespace, veth, table and forwarder; `rm` leaves nothing, and a
//! last `doctor` finds nothing of the network.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_tests::kvm_available;
use cairn_tests::sandbox::CairnHome;

struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn in_ns(ns: &str, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{ns}"))
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kill9(pid: u64) {
    // SAFETY: kill(2) on a pid this test read from cairn's registry or spawned.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// The forwarder pids serving `dir`.
fn forwarders(dir: &Path) -> Vec<u32> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let want = format!("__net-dns\0{}", dir.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&want))
        })
        .collect()
}

/// Starts `cairn create NAME` and kills it (and its VMM) once the VMM runs; returns the
/// sandbox's network id.
fn crash_create(h: &CairnHome, name: &str) -> String {
    let mut create = h
        .command(&[
            "create",
            name,
            "--mem",
            "256",
            "--cold",
            "--boot-timeout",
            "400",
        ])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(400);
    let row = loop {
        let rows = h.ls();
        let row = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name && r["pid"].is_u64() && r["net"].is_object())
            .cloned();
        if let Some(r) = row {
            break r;
        }
        if Instant::now() > deadline {
            kill9(u64::from(create.id()));
            panic!("no VMM for {name} within 400 s: {rows}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    kill9(u64::from(create.id()));
    kill9(row["pid"].as_u64().unwrap());
    let _ = create.wait();
    row["net"]["netns"]
        .as_str()
        .unwrap()
        .trim_start_matches("cairn-")
        .to_string()
}

#[test]
fn doctor_finds_and_repairs_what_a_crashed_create_left_of_its_network() {
    let name = "doctor_finds_and_repairs_what_a_crashed_create_left_of_its_network";
    if !kvm_available(name) {
        return;
    }
    // SAFETY: trivial getter.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP {name}: needs root (namespaces, nftables)");
        return;
    }
    let ns = Namespace(format!("net-d{}-h", std::process::id()));
    let made = Command::new("sh")
        .args([
            "-ec",
            &format!("ip netns add {0}; ip -n {0} link set lo up", ns.0),
        ])
        .status()
        .unwrap();
    assert!(made.success());
    std::env::set_var("CAIRN_NET_DNS", "198.18.0.2");
    let mut h = CairnHome::new();
    h.netns = Some(ns.0.clone());
    // The guest image from the test's own guest/build run (which may wait for another's), so
    // that the create's own time goes to the boot; or the caller's `CAIRN_KERNEL` etc.
    if std::env::var_os("CAIRN_KERNEL").is_none() {
        let g = cairn_tests::linux_guest();
        h.env = vec![
            ("CAIRN_KERNEL".into(), g.kernel.clone()),
            ("CAIRN_INITRD".into(), g.initrd.clone()),
            ("CAIRN_BOOT_ARGS".into(), g.boot_args.clone()),
            (
                "CAIRN_ROOTFS".into(),
                g.rootfs.unwrap_or_else(|| "none".into()),
            ),
            ("CAIRN_CPU_CONFIG".into(), g.cpu_config.unwrap_or_default()),
        ];
    }
    let present = |id: &str| {
        let tables = in_ns(&ns.0, &["nft", "list", "tables"]);
        let links = in_ns(&ns.0, &["ip", "-o", "link"]);
        (
            Path::new(&format!("/var/run/netns/cairn-{id}")).exists(),
            links.contains(&format!("cn{id}")),
            tables.contains(&format!("cairn-{id}")),
        )
    };

    // A create killed mid-boot, its directory kept: doctor keeps it, network and all.
    let a = crash_create(&h, "a");
    assert_eq!(present(&a), (true, true, true));
    let first = h.ok(&["doctor"]);
    assert!(!first.contains("no sandbox owns"), "{first}");
    assert_eq!(h.row("a")["state"], "cold", "{first}");
    assert_eq!(present(&a), (true, true, true));
    assert_eq!(forwarders(&h.dir("a")).len(), 1);

    // Its table flushed by a firewall reload and its forwarder dead: doctor re-makes both.
    in_ns(
        &ns.0,
        &["nft", "delete", "table", "ip", &format!("cairn-{a}")],
    );
    for pid in forwarders(&h.dir("a")) {
        kill9(u64::from(pid));
    }
    std::thread::sleep(Duration::from_millis(300));
    let again = h.ok(&["doctor"]);
    assert!(
        again.contains("a: its network lacks its nftables table, its DNS forwarder: re-made it"),
        "{again}"
    );
    assert_eq!(present(&a), (true, true, true));
    assert_eq!(forwarders(&h.dir("a")).len(), 1);

    // A create killed mid-boot whose directory is gone too: every piece is found and removed
    // (the forwarder may have ended itself first: it exits once its net.json is gone).
    let b = crash_create(&h, "b");
    let b_dir = h.dir("b");
    assert_eq!(forwarders(&b_dir).len(), 1);
    std::fs::remove_dir_all(&b_dir).unwrap();
    let found = h.ok(&["doctor"]);
    for what in [
        format!("network namespace cairn-{b} that no sandbox owns: removed it"),
        format!("veth cn{b} that no sandbox owns: removed it"),
        format!("nftables table ip cairn-{b} that no sandbox owns: removed it"),
    ] {
        assert!(found.contains(&what), "{what:?} not in {found}");
    }
    assert_eq!(present(&b), (false, false, false));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !forwarders(&b_dir).is_empty() {
        assert!(Instant::now() < deadline, "b's forwarder lives on");
        std::thread::sleep(Duration::from_millis(100));
    }

    h.ok(&["rm", "a"]);
    assert_eq!(present(&a), (false, false, false));
    assert!(forwarders(&h.dir("a")).is_empty());
    // (It may still find the home's shared root image unused: not a network matter.)
    let last = h.ok(&["doctor"]);
    for word in ["network", "veth", "nftables", "forwarder"] {
        assert!(!last.contains(word), "{last}");
    }
}
