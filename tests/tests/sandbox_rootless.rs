//! Rootless mode end to end, as a real user who is not root (docs/network.md, "Rootless
//! mode"): `cairn create` by user `cairn-rl-test` (in group `kvm`) runs the VMM in a user and
//! network namespace that pasta connects, and the guest reaches a web server through pasta.
//!
//! The test itself runs as root (it makes the user, a network namespace and device nodes) and
//! drops to the user for every `cairn` call, through a wrapper script that, as root:
//! - enters `rl-t<pid>`, a network namespace of the test's own holding only loopback and a
//!   veth pair with both ends inside (a default route, which pasta wants, goes nowhere): pasta's host
//!   sockets live there, so no packet can leave it;
//! - makes a private mount namespace with copies of `/dev/kvm` (0660 root:kvm) and
//!   `/dev/net/tun` (0666) bind-mounted over the real ones, as a Debian host has them (on this
//!   project's test host both are 0600 root; the real nodes are not touched), and the
//!   directories of the guest image, `cairn`, the agent and the CPU template (perhaps under
//!   root's 0700 home) bind-mounted where the user can reach them;
//! - drops to the user (`setpriv --reuid --regid --init-groups`) and runs `cairn`.
//!
//! pasta maps the gateway address to the loopback of the namespace it was started in, so the
//! guest fetches a page from `http://GATEWAY:18080/`, served by python3 on 127.0.0.1 in
//! `rl-t<pid>`. Checks: create, the fetch, the same after a stop and wake (a new pasta), a
//! policy refused in one line, and no pasta or anything for `cairn doctor` left after `rm`.
//! Root and KVM only; needs pasta (`passt`), util-linux and python3 (scripts/deps).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use cairn_tests::kvm_available;
use cairn_tests::sandbox::CairnHome;

const USER: &str = "cairn-rl-test";
const PORT: u16 = 18080;

/// Prints the body of `GET /` from ARGV[0]:ARGV[1] (HTTP/1.0).
const FETCH: &str = r#"use IO::Socket::INET;
my $s = IO::Socket::INET->new(PeerAddr => $ARGV[0], PeerPort => $ARGV[1], Timeout => 10) or die "connect $ARGV[0]:$ARGV[1] failed: $@\n";
print $s "GET / HTTP/1.0\r\nHost: $ARGV[0]\r\n\r\n"; print while <$s>;
"#;

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-ec", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The test user (made if missing, removed on drop if made here), the namespace with its
/// web server, and the directory the wrapper mounts things in.
struct World {
    ns: String,
    made_user: bool,
    made_group: bool,
    server: Option<Child>,
    dir: tempfile::TempDir,
    uid: u32,
    gid: u32,
}

impl World {
    fn up() -> World {
        // Debian's udev makes group `kvm`; a host without udev (a container, a fresh VM image)
        // may have none: make it for the test, and remove it afterwards.
        let made_group = Command::new("getent")
            .args(["group", "kvm"])
            .output()
            .is_ok_and(|o| !o.status.success());
        if made_group {
            sh("groupadd --system kvm");
        }
        let made_user = Command::new("id")
            .arg(USER)
            .output()
            .is_ok_and(|o| !o.status.success());
        if made_user {
            sh(&format!(
                "useradd --system --no-create-home --user-group --groups kvm --shell /usr/sbin/nologin {USER}"
            ));
        }
        // A user left by an earlier run that was killed may have lost group `kvm` (the run
        // removed the group it made): put it back in.
        sh(&format!("usermod --append --groups kvm {USER}"));
        let uid = sh(&format!("id -u {USER}")).trim().parse().unwrap();
        let gid = sh(&format!("id -g {USER}")).trim().parse().unwrap();
        let dir = tempfile::Builder::new()
            .prefix("cairn-rl")
            .tempdir_in("/tmp")
            .unwrap();
        let mut me = World {
            ns: format!("rl-t{}", std::process::id()),
            made_user,
            made_group,
            server: None,
            dir,
            uid,
            gid,
        };
        let (ns, d) = (me.ns.clone(), me.dir.path().to_path_buf());
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["dev", "www"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        // A veth pair with both ends inside: the default route pasta wants leads nowhere.
        sh(&format!(
            "ip netns add {ns}
             ip -n {ns} link set lo up
             ip -n {ns} link add rl0 type veth peer name rl1
             ip -n {ns} addr add 198.18.99.1/24 dev rl0
             ip -n {ns} link set rl0 up
             ip -n {ns} link set rl1 up
             ip -n {ns} route add default via 198.18.99.2"
        ));
        let www = d.join("www");
        std::fs::write(www.join("index.html"), "hello through pasta\n").unwrap();
        me.server = Some(
            Command::new("ip")
                .args(["netns", "exec", &ns, "python3", "-m", "http.server"])
                .args(["--bind", "127.0.0.1", "--directory"])
                .arg(&www)
                .arg(PORT.to_string())
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(Duration::from_millis(500));
        me
    }

    /// The wrapper script (see the module docs). `binds`: host directories the user may not
    /// reach (under root's 0700 home, say) and the name each is bind-mounted as in the test's
    /// directory; `cairn`, the first argument the wrapper gets, is run from its `bin` view.
    fn wrapper(&self, binds: &[(PathBuf, &str)]) -> PathBuf {
        let d = self.dir.path().display();
        let mut mounts = String::new();
        for (host, name) in binds {
            std::fs::create_dir_all(self.dir.path().join(name)).unwrap();
            mounts += &format!("mount --bind {} {d}/{name}\n", host.display());
        }
        let script = format!(
            r#"#!/bin/sh
# Runs cairn ARGS as {USER} in namespace {ns}, with usable /dev/kvm and /dev/net/tun copies.
exec nsenter --net=/var/run/netns/{ns} unshare --mount --propagation private sh -ec '
mount -t tmpfs -o mode=0755,size=1m cairn-rl {d}/dev
mknod -m 0660 {d}/dev/kvm c 10 232
chgrp kvm {d}/dev/kvm
mknod -m 0666 {d}/dev/tun c 10 200
mount --bind {d}/dev/kvm /dev/kvm
mount --bind {d}/dev/tun /dev/net/tun
{mounts}exec setpriv --reuid={uid} --regid={gid} --init-groups {d}/bin/"$(basename "$0")" "$@"
' "$@"
"#,
            ns = self.ns,
            uid = self.uid,
            gid = self.gid,
        );
        let p = self.dir.path().join("as-user");
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// Pids of pasta processes (of any user) still running for a sandbox directory under `home`.
    fn pastas(home: &Path) -> Vec<String> {
        let home = home.display().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| {
                let c = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let args: Vec<String> = c
                    .split(|&b| b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                let is_pasta = args.first()?.ends_with("pasta");
                (is_pasta && args.iter().any(|a| a.starts_with(&home)))
                    .then(|| format!("{pid}: {}", args.join(" ")))
            })
            .collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        if self.made_user {
            let _ = Command::new("userdel").arg(USER).status();
        }
        if self.made_group {
            let _ = Command::new("groupdel").arg("kvm").status();
        }
    }
}

fn fetch(h: &CairnHome, sb: &str, gateway: &str) -> String {
    let port = PORT.to_string();
    let (code, out) = h.exec(sb, &["perl", "-e", FETCH, gateway, &port]);
    assert_eq!(code, 0, "fetch from {gateway}:{port} failed: {out}");
    out
}

#[test]
fn rootless_sandbox_reaches_the_host_loopback_through_pasta() {
    let name = "rootless_sandbox_reaches_the_host_loopback_through_pasta";
    if !kvm_available(name) {
        return;
    }
    // SAFETY: trivial getter.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP {name}: needs root (to make the test user, a namespace and device nodes; the sandbox itself runs as that user)");
        return;
    }
    cairn_tests::require_tools(
        name,
        &[
            "pasta", "setpriv", "unshare", "nsenter", "useradd", "python3",
        ],
    );
    // The guest image, the binaries and the CPU template may live where the user cannot reach
    // them (root's home is 0700): the wrapper bind-mounts their directories into its own.
    let g = cairn_tests::linux_guest();
    let agent = std::env::var_os("CAIRN_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(cairn_tests::linux::agent_binary);
    let cairn = cairn_tests::process::workspace_bin("cairn");
    let parent = |p: &Path| p.parent().unwrap().to_path_buf();
    let mut binds = vec![
        (parent(&parent(Path::new(&g.kernel))), "guest"),
        (parent(&cairn), "bin"),
        (parent(&agent), "agent"),
    ];
    if let Some(c) = &g.cpu_config {
        binds.push((parent(Path::new(c)), "cpu"));
    }
    let world = World::up();
    let view = |p: &Path| -> String {
        let (host, name) = binds
            .iter()
            .find(|(host, _)| p.starts_with(host))
            .unwrap_or_else(|| panic!("{} is in no bind-mounted directory", p.display()));
        let rel = p.strip_prefix(host).unwrap();
        world.dir.path().join(name).join(rel).display().to_string()
    };

    let mut h = CairnHome::new();
    h.wrapper = Some(world.wrapper(&binds));
    let user_home = world.dir.path().join("home");
    std::fs::create_dir(&user_home).unwrap();
    sh(&format!(
        "chown -R {}:{} {} {}",
        world.uid,
        world.gid,
        h.home.path().display(),
        user_home.display()
    ));
    h.env = vec![
        ("HOME".into(), user_home.display().to_string()),
        ("CAIRN_AGENT_BIN".into(), view(&agent)),
        ("CAIRN_KERNEL".into(), view(Path::new(&g.kernel))),
        ("CAIRN_INITRD".into(), view(Path::new(&g.initrd))),
        ("CAIRN_BOOT_ARGS".into(), g.boot_args.clone()),
        (
            "CAIRN_ROOTFS".into(),
            g.rootfs
                .as_deref()
                .map(|r| view(Path::new(r)))
                .unwrap_or_else(|| "none".into()),
        ),
        (
            "CAIRN_CPU_CONFIG".into(),
            g.cpu_config
                .as_deref()
                .map(|c| view(Path::new(c)))
                .unwrap_or_default(),
        ),
    ];

    let took = h.create("rl", &["--mem", "256", "--disk", "1"]);
    eprintln!("rootless create: {:.1} s", took.as_secs_f64());
    let row = h.row("rl");
    assert_eq!(row["net"]["netns"], "pasta", "{row}");
    let vmm = row["pid"].as_u64().unwrap();
    let owner = std::fs::metadata(format!("/proc/{vmm}"))
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    assert_eq!(owner, world.uid, "the VMM runs as {USER}");
    let guest: std::net::Ipv4Addr = row["net"]["address"].as_str().unwrap().parse().unwrap();
    let gateway = std::net::Ipv4Addr::from(u32::from(guest) - 1).to_string();
    assert_eq!(
        h.sh("rl", "cat /sys/class/net/eth0/address").trim(),
        row["net"]["mac"].as_str().unwrap()
    );

    // Egress through pasta: the gateway address is the loopback of pasta's namespace.
    assert!(fetch(&h, "rl", &gateway).contains("hello through pasta"));

    // A policy needs root and a host namespace: refused in one line, the sandbox untouched.
    let out = h.run(&["policy", "set", "rl", "--deny", "*"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("made without root"), "{err}");

    // Stop and wake: the new VMM gets a new pasta, and egress works again.
    h.ok(&["stop", "rl"]);
    assert!(
        World::pastas(h.home.path()).is_empty(),
        "pasta outlived its stopped VMM: {:?}",
        World::pastas(h.home.path())
    );
    assert!(fetch(&h, "rl", &gateway).contains("hello through pasta"));
    assert_eq!(World::pastas(h.home.path()).len(), 1);

    h.ok(&["rm", "rl"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !World::pastas(h.home.path()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "pasta left after rm: {:?}",
            World::pastas(h.home.path())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        h.ok(&["doctor"]).trim(),
        "all is well",
        "doctor found something"
    );
}
