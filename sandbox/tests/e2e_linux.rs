//! End to end on the Linux guest, through the `cairn` binary: create -> exec writes a file ->
//! checkpoint -> exec overwrites -> restore -> exec reads the original -> cp both ways ->
//! idle stop and transparent wake -> rm frees everything.
//!
//! Needs `/dev/kvm` (skips loudly without it, fails under `CAIRN_REQUIRE_KVM=1`), `cairn-vmm`
//! built next to `cairn` (`cargo build --workspace --bins`) or `CAIRN_VMM`, and a static
//! `cairn-agent` (`CAIRN_AGENT_BIN`, or
//! `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p cairn-agent --target x86_64-unknown-linux-gnu`
//! into the same target directory); without the agent it skips loudly.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn kvm_available(name: &str) -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        if std::env::var("CAIRN_REQUIRE_KVM").as_deref() == Ok("1") {
            panic!("{name}: /dev/kvm not available and CAIRN_REQUIRE_KVM=1");
        }
        eprintln!("SKIP {name}: /dev/kvm not available");
    }
    ok
}

fn cairn_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn"))
}

/// The static agent, as `cairn create` will find it (see `image::agent_binary`).
fn agent() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CAIRN_AGENT_BIN") {
        return Some(p.into());
    }
    let rel = "x86_64-unknown-linux-gnu/release/cairn-agent";
    cairn_exe()
        .ancestors()
        .map(|a| a.join(rel))
        .find(|p| p.is_file())
}

struct Env {
    home: tempfile::TempDir,
}

impl Env {
    fn run(&self, args: &[&str]) -> Output {
        let start = Instant::now();
        let out = Command::new(cairn_exe())
            .args(args)
            .env("CAIRN_HOME", self.home.path())
            .output()
            .unwrap();
        eprintln!(
            "$ cairn {} -> {:?} in {:.1} s\n{}{}",
            args.join(" "),
            out.status.code(),
            start.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "cairn {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `cairn exec`, retried when the guest process dies of SIGSEGV (139) or the agent drops
    /// the connection: on this project's emulated-KVM host the first guest process after boot
    /// segfaults reading its TLS (`mov %fs:-0x90,%rax` gives 0; seen with busybox `sh` and
    /// once with the agent), a guest/host issue, not cairn's. The commands here are idempotent.
    fn exec(&self, name: &str, cmd: &[&str]) -> (i32, String) {
        let mut args = vec!["exec", name, "--"];
        args.extend_from_slice(cmd);
        for _ in 0..4 {
            let out = self.run(&args);
            let code = out.status.code().unwrap_or(-1);
            let dropped = String::from_utf8_lossy(&out.stderr).contains("closed the connection");
            if code != 139 && !(code == 1 && dropped) {
                return (code, String::from_utf8_lossy(&out.stdout).into_owned());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        panic!("{cmd:?} kept dying of SIGSEGV or losing the agent");
    }

    fn ls(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["ls", "--json"])).unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // On failure: show the guest's console, and never leave a VMM behind.
        if std::thread::panicking() {
            let log = self.home.path().join("sandboxes/e2e/console.log");
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            eprintln!("--- console tail ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = Command::new(cairn_exe())
            .args(["rm", "e2e"])
            .env("CAIRN_HOME", self.home.path())
            .output();
    }
}

// Ignored in the default run: on this project's emulated-KVM CI hosts a guest process sometimes
// dies at its first TLS access (docs/guest.md), and the CLI does not yet recover a sandbox whose
// agent crashed before its first checkpoint. Run with `cargo test -p cairn-sandbox -- --ignored`.
#[test]
#[ignore = "flaky on the emulated-KVM host: guest processes may die at start (docs/guest.md)"]
fn create_exec_checkpoint_restore_idle_rm() {
    let name = "create_exec_checkpoint_restore_idle_rm";
    if !kvm_available(name) {
        return;
    }
    if agent().is_none() {
        eprintln!("SKIP {name}: no static cairn-agent (set CAIRN_AGENT_BIN or build it, see the file's header)");
        return;
    }
    // Short, so socket paths fit in sockaddr_un.
    let env = Env {
        home: tempfile::Builder::new()
            .prefix("cairn-e2e")
            .tempdir_in("/tmp")
            .unwrap(),
    };
    let sb = "e2e";
    // A boot can hit the host's start-up segfault (see `exec`) in init or the agent: cairn
    // reports it at once with the console line; try again then.
    let create = &[
        "create",
        sb,
        "--cpus",
        "1",
        "--mem",
        "256",
        "--disk",
        "1",
        "--idle-timeout",
        "12",
        "--boot-timeout",
        "400",
    ];
    for attempt in 1.. {
        let out = env.run(create);
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            attempt < 3 && err.contains("segfault at 0"),
            "cairn create failed: {err}"
        );
    }
    let row = &env.ls()[0];
    let pid = row["pid"].as_u64().unwrap();
    let dir = PathBuf::from(row["dir"].as_str().unwrap());
    assert!(dir.join("disk.img").is_file());

    assert_eq!(env.exec(sb, &["sh", "-c", "echo original > /root/f"]).0, 0);
    let c = env.ok(&["checkpoint", "create", sb, "c1"]);
    assert!(c.contains("checkpoint c1"), "{c}");
    assert_eq!(
        env.exec(sb, &["sh", "-c", "echo changed > /root/f; exit 3"])
            .0,
        3
    );
    env.ok(&["checkpoint", "restore", sb, "c1"]);
    assert_eq!(env.exec(sb, &["cat", "/root/f"]), (0, "original\n".into()));

    let list: serde_json::Value =
        serde_json::from_str(&env.ok(&["checkpoint", "list", sb, "--json"])).unwrap();
    assert!(
        list.as_array().unwrap().iter().any(|c| c["name"] == "c1"),
        "{list}"
    );
    let table = env.ok(&["checkpoint", "list", sb]);
    assert!(
        table.contains("PAUSE ms") && table.contains("c1"),
        "{table}"
    );

    // cp both ways.
    let local = env.home.path().join("hello.txt");
    std::fs::write(&local, "from the host\n").unwrap();
    env.ok(&[
        "cp",
        local.to_str().unwrap(),
        &format!("{sb}:/root/hello.txt"),
    ]);
    let back = env.home.path().join("back.txt");
    env.ok(&[
        "cp",
        &format!("{sb}:/root/hello.txt"),
        back.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "from the host\n");

    // Idle: the watcher checkpoints and stops the VMM; the next exec wakes it transparently.
    let deadline = Instant::now() + Duration::from_secs(120);
    while env.ls()[0]["state"] != "stopped" {
        assert!(Instant::now() < deadline, "never idled: {}", env.ls());
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "idle VMM {pid} still there"
    );
    assert_eq!(
        env.exec(sb, &["cat", "/root/hello.txt"]),
        (0, "from the host\n".into())
    );
    assert_eq!(env.ls()[0]["state"], "running");

    // stop/start by hand.
    assert!(env.ok(&["stop", sb]).contains("stopped at checkpoint"));
    env.ok(&["start", sb]);
    assert_eq!(env.exec(sb, &["cat", "/root/f"]), (0, "original\n".into()));

    let pid = env.ls()[0]["pid"].as_u64().unwrap();
    env.ok(&["rm", sb]);
    assert_eq!(env.ls(), serde_json::json!([]));
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "VMM {pid} left behind"
    );
    let out = env.run(&["exec", sb, "--", "true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}
