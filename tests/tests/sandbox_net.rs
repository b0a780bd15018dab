//! The sandbox network end to end, on this machine only: a namespace `net-t<pid>-h` plays the
//! host cairn runs on (with a web server of its own), and `net-t<pid>-i` plays the internet
//! behind its default route, with an HTTP server (python3) and dnsmasq on 198.18.77.0/24
//! (benchmarking space, outside the sandbox pool). No packet leaves these namespaces. Root and
//! KVM only; needs nftables, dnsmasq and conntrack (scripts/deps).
//!
//! Checks: the guest fetches a page by name; it reaches neither the host's web server nor the
//! metadata address 169.254.169.254 (which the fake internet serves); a denied name gets
//! REFUSED and its address is unreachable; a live policy change lets it through and the
//! allowed name still works; a live change that denies a name cuts the guest's open connection
//! to it within seconds while one to a still-allowed name keeps flowing; an address rule
//! re-allows the metadata address; two forks of one checkpoint get their own addresses and
//! MACs and both reach the server; the guest clock is right after a wake; `rm` leaves no
//! namespace, veth, table or forwarder.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_tests::fake_internet::{in_host, FakeInternet, Ticker, ECHO_CLIENT, RCODE};
use cairn_tests::kvm_available;
use cairn_tests::sandbox::CairnHome;

const FETCH: &str = r#"use IO::Socket::INET;
my $s = IO::Socket::INET->new(PeerAddr => $ARGV[0], PeerPort => 80, Timeout => 5) or die "connect $ARGV[0] failed\n";
print $s "GET / HTTP/1.0\r\nHost: $ARGV[0]\r\n\r\n"; print while <$s>;
"#;

fn net_json(h: &CairnHome, name: &str) -> serde_json::Value {
    let out = h.ok(&["policy", "show", name, "--json"]);
    serde_json::from_str(&out).unwrap()
}

/// Under a policy allowing both names: the guest holds a connection to each (a [`Ticker`]);
/// denying denied.test cuts its connection within seconds (conntrack entry deleted, the
/// server's next line is reset), and the one to allowed.test keeps echoing.
fn cut_on_policy_change(h: &CairnHome, inet: &FakeInternet) {
    let ticker = Ticker::start(inet);
    h.sh(
        "n1",
        "rm -f /root/echo.pids; perl /root/echo.pl allowed.test denied.test </dev/null >/root/echo.log 2>&1 &",
    );
    let echo_count = |l: &str, addr: &str| -> Option<u64> {
        l.strip_prefix(&format!("{addr} echo "))?.parse().ok()
    };
    for addr in ["198.18.77.80", "198.18.77.81"] {
        let seen = ticker.wait_for(Duration::from_secs(120), |l| {
            echo_count(l, addr).is_some_and(|n| n >= 2)
        });
        assert!(seen.is_some(), "no echoes over a connection to {addr}");
    }
    h.ok(&[
        "policy",
        "set",
        "n1",
        "--allow",
        "allowed.test",
        "--deny",
        "*",
    ]);
    let set = Instant::now();
    let mut last_allowed = 0;
    let cut = ticker.wait_for(Duration::from_secs(10), |l| {
        if let Some(n) = echo_count(l, "198.18.77.80") {
            last_allowed = n;
        }
        assert!(
            !l.starts_with("198.18.77.80 closed"),
            "the allowed connection was cut: {l}"
        );
        l.starts_with("198.18.77.81 closed")
    });
    let secs = set.elapsed().as_secs_f64();
    assert!(cut.is_some(), "the connection to denied.test lived on");
    eprintln!("policy set: the connection to denied.test was cut {secs:.2} s after it returned");
    // The allowed connection still carries lines both ways.
    let more = ticker.wait_for(Duration::from_secs(120), |l| {
        assert!(
            !l.starts_with("198.18.77.80 closed"),
            "the allowed connection was cut: {l}"
        );
        echo_count(l, "198.18.77.80").is_some_and(|n| n >= last_allowed + 3)
    });
    assert!(more.is_some(), "the connection to allowed.test stopped");
    drop(ticker);
    h.sh("n1", "kill $(cat /root/echo.pids) 2>/dev/null; true");
}

#[test]
fn sandbox_network_policy_forks_and_cleanup() {
    let name = "sandbox_network_policy_forks_and_cleanup";
    if !kvm_available(name) {
        return;
    }
    // SAFETY: trivial getter.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP {name}: needs root (namespaces, nftables)");
        return;
    }
    cairn_tests::require_tools(name, &["nft", "dnsmasq", "conntrack", "nsenter", "python3"]);
    let inet = FakeInternet::up();
    // The forwarder asks the fake internet's dnsmasq (cairn reads this at create).
    std::env::set_var("CAIRN_NET_DNS", "198.18.77.53");
    let mut h = CairnHome::new();
    h.netns = Some(inet.host.clone());

    // An overlapping pool is refused in one line, before anything is made.
    let out = h
        .command(&["create", "bad", "--mem", "256"])
        .env("CAIRN_NET_POOL", "198.18.0.0/16")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("overlaps the host route 198.18.0.0/24"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    h.create("n1", &["--mem", "256", "--idle-timeout", "0"]);
    let scripts = tempfile::tempdir().unwrap();
    for (f, text) in [
        ("fetch.pl", FETCH),
        ("rcode.pl", RCODE),
        ("echo.pl", ECHO_CLIENT),
    ] {
        std::fs::write(scripts.path().join(f), text).unwrap();
        let src = scripts.path().join(f);
        h.ok(&["cp", src.to_str().unwrap(), &format!("n1:/root/{f}")]);
    }
    let n1 = net_json(&h, "n1");
    let gw = n1["network"]["gateway"].as_str().unwrap().to_string();
    let fetch = |sb: &str, target: &str| h.exec(sb, &["perl", "/root/fetch.pl", target]);
    let rcode = |sb: &str, q: &str| h.sh(sb, &format!("perl /root/rcode.pl {q} {gw}"));

    // Open policy: a page by name.
    let (code, page) = fetch("n1", "allowed.test");
    assert_eq!(code, 0, "{page}");
    assert!(page.contains("hello from the fake internet"), "{page}");

    // Always denied: the host's own services (here a web server on the host, reached at the
    // gateway address) and the metadata address (served by the fake internet, so only the
    // sandbox's rules stop it).
    for target in [gw.as_str(), "169.254.169.254"] {
        let (code, out) = fetch("n1", target);
        assert_ne!(code, 0, "{target} answered: {out}");
    }

    // Deny everything but allowed.test: denied.test is REFUSED, its address unreachable.
    h.ok(&[
        "policy",
        "set",
        "n1",
        "--allow",
        "allowed.test",
        "--deny",
        "*",
    ]);
    assert_eq!(rcode("n1", "denied.test").trim(), "rcode=5");
    let (code, out) = fetch("n1", "198.18.77.81");
    assert_ne!(code, 0, "a denied address answered: {out}");
    let (code, page) = fetch("n1", "allowed.test");
    assert!(code == 0 && page.contains("hello"), "{page}");

    // A live change: denied.test is allowed now, allowed.test still works.
    h.ok(&[
        "policy",
        "set",
        "n1",
        "--allow",
        "allowed.test",
        "--allow",
        "denied.test",
        "--deny",
        "*",
    ]);
    assert_eq!(rcode("n1", "denied.test").trim(), "rcode=0");
    for target in ["denied.test", "allowed.test"] {
        let (code, page) = fetch("n1", target);
        assert!(code == 0 && page.contains("hello"), "{target}: {page}");
    }
    cut_on_policy_change(&h, &inet);

    // An address rule re-allows an always-denied address (the metadata address, which the
    // fake internet serves), even under `deny *`.
    h.ok(&[
        "policy",
        "set",
        "n1",
        "--allow",
        "169.254.169.254",
        "--deny",
        "*",
    ]);
    let (code, page) = fetch("n1", "169.254.169.254");
    assert!(code == 0 && page.contains("hello"), "{page}");
    // And the host's own services, by a rule for the gateway address.
    let gw_rule = format!("{gw}/32");
    h.ok(&["policy", "set", "n1", "--allow", &gw_rule]);
    let (code, page) = fetch("n1", &gw);
    assert_eq!(
        code, 0,
        "the host's web server with {gw_rule} allowed: {page}"
    );
    h.ok(&["policy", "set", "n1"]);
    let (code, out) = fetch("n1", &gw);
    assert_ne!(code, 0, "the host's web server after the rule went: {out}");

    // Two forks of one checkpoint: own address and MAC, both reach the server.
    h.ok(&["checkpoint", "create", "n1", "c1"]);
    let mut seen = vec![(
        n1["network"]["address"].to_string(),
        n1["network"]["mac"].to_string(),
    )];
    for f in ["f1", "f2"] {
        h.restore_like(&["fork", "n1", "c1", f], &["start", f]);
        let j = net_json(&h, f);
        let (addr, mac) = (
            j["network"]["address"].to_string(),
            j["network"]["mac"].to_string(),
        );
        assert!(!seen.iter().any(|(a, m)| *a == addr || *m == mac), "{j}");
        let guest_mac = h.sh(f, "cat /sys/class/net/eth0/address");
        assert_eq!(format!("\"{}\"", guest_mac.trim()), mac);
        let (code, page) = fetch(f, "allowed.test");
        assert!(code == 0 && page.contains("hello"), "{f}: {page}");
        seen.push((addr, mac));
    }

    // The clock after a wake: right within a second (plus the exec's own time), not 5 s behind.
    h.ok(&["stop", "f2"]);
    std::thread::sleep(Duration::from_secs(5));
    h.restore_like(&["start", "f2"], &["start", "f2"]);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let guest: f64 = h.sh("f2", "date +%s.%N").trim().parse().unwrap();
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        guest > before - 1.0 && guest < after + 1.0,
        "guest clock {guest}, host {before}..{after}"
    );

    // rm removes every namespace, veth, table and forwarder.
    let ids: Vec<String> = ["n1", "f1", "f2"]
        .iter()
        .map(|s| {
            net_json(&h, s)["network"]["netns"]
                .as_str()
                .unwrap()
                .trim_start_matches("cairn-")
                .to_string()
        })
        .collect();
    for s in ["n1", "f1", "f2"] {
        h.ok(&["rm", s]);
    }
    let tables = in_host(&inet, &["nft", "list", "tables"]);
    let links = in_host(&inet, &["ip", "-o", "link"]);
    let forwarders = Command::new("sh")
        .args(["-c", "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '"])
        .output()
        .unwrap();
    let cmdlines = String::from_utf8_lossy(&forwarders.stdout);
    for id in &ids {
        assert!(!PathBuf::from(format!("/var/run/netns/cairn-{id}")).exists());
        assert!(!tables.contains(id.as_str()), "{tables}");
        assert!(!links.contains(id.as_str()), "{links}");
    }
    let home_dir = h.home.path().to_string_lossy().into_owned();
    assert!(
        !cmdlines.contains(&format!("__net-dns {home_dir}")),
        "a forwarder outlived rm"
    );
    let doctor = h.ok(&["doctor"]);
    assert!(!doctor.contains("no sandbox owns"), "{doctor}");
}
