//! Standby VMMs end to end on the Linux guest (docs/sandbox.md, "Standby VMMs"): a stop leaves
//! the sandbox's next `cairn-vmm` waiting, the next wake takes it over (the running VMM's pid is
//! the standby's), a killed or stale standby is not used (the wake spawns a fresh VMM and says
//! why in the console log), doctor keeps a live one and drops a dead one, `CAIRN_STANDBY=0`
//! starts none, and `rm` leaves no process. Runs as the sandbox tests do (root: the VMMs are
//! jailed), with `cargo build --workspace --bins` first.

use std::time::{Duration, Instant};

use cairn_tests::kvm_available;
use cairn_tests::linux::retry_on_guest_flake;
use cairn_tests::sandbox::CairnHome;

fn gone(pid: u64) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.is_empty()
        || stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
}

fn rss_kib(pid: u64) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// The standby's pid after a stop (it must have one), checked to be a live cairn-vmm.
fn standby_of(h: &CairnHome, name: &str) -> u64 {
    let row = h.row(name);
    assert_eq!(row["state"], "stopped", "{row}");
    let pid = row["standby_pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no standby after the stop: {row}"));
    // Jailed like every VMM of a sandbox made by root: its own uid, not root.
    if row["jailed"] == true {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        assert!(uid >= 900_000, "standby {pid} runs as uid {uid}");
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("cairn-vmm"),
        "standby {pid} is not a cairn-vmm: {cmdline:?}"
    );
    pid
}

/// The console log's lines from cairn after byte `from`.
fn notes_after(h: &CairnHome, name: &str, from: usize) -> String {
    let text = std::fs::read(h.dir(name).join("console.log")).unwrap();
    String::from_utf8_lossy(&text[from.min(text.len())..])
        .lines()
        .filter(|l| l.starts_with("cairn: "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn console_len(h: &CairnHome, name: &str) -> usize {
    std::fs::metadata(h.dir(name).join("console.log")).map_or(0, |m| m.len() as usize)
}

fn kill9(pid: u64) {
    // SAFETY: kill(2) on a pid this test read from `cairn ls` and checked to be a cairn-vmm.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone(pid) {
        assert!(Instant::now() < deadline, "{pid} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sandbox_standby_takes_over_the_wake_and_stale_ones_fall_back() {
    let name = "sandbox_standby_takes_over_the_wake_and_stale_ones_fall_back";
    if !kvm_available(name) {
        return;
    }
    retry_on_guest_flake(name, || {
        let h = CairnHome::new();
        h.create(
            "sb",
            &["--mem", "256", "--disk", "1", "--idle-timeout", "0"],
        );
        h.sh("sb", "echo one > /root/f; sync");
        h.ok(&["checkpoint", "create", "sb", "c1"]);
        h.sh("sb", "echo two > /root/f; sync");

        // A stop leaves a standby; the wake (an exec) runs the guest on that very process.
        h.ok(&["stop", "sb"]);
        let standby = standby_of(&h, "sb");
        eprintln!("standby VMM {standby}: RSS {} KiB", rss_kib(standby));
        let from = console_len(&h, "sb");
        assert_eq!(h.sh("sb", "cat /root/f"), "two\n");
        let row = h.row("sb");
        assert_eq!(row["state"], "running");
        assert_eq!(row["pid"].as_u64(), Some(standby), "{row}");
        assert!(row["standby_pid"].is_null(), "{row}");
        let notes = notes_after(&h, "sb", from);
        assert!(
            notes.contains(&format!("on its standby VMM (pid {standby})")),
            "{notes}"
        );

        // A standby that died is not used: a fresh VMM is, and the log says why.
        h.ok(&["stop", "sb"]);
        let dead = standby_of(&h, "sb");
        assert_ne!(dead, standby);
        kill9(dead);
        let from = console_len(&h, "sb");
        assert_eq!(h.sh("sb", "cat /root/f"), "two\n");
        let pid = h.row("sb")["pid"].as_u64().unwrap();
        assert_ne!(pid, dead);
        let notes = notes_after(&h, "sb", from);
        assert!(notes.contains("its process is gone"), "{notes}");
        assert!(!notes.contains("on its standby VMM"), "{notes}");

        // A stale one (its console log was rotated away under it) is ended, not used.
        h.ok(&["stop", "sb"]);
        let stale = standby_of(&h, "sb");
        let log = h.dir("sb").join("console.log");
        std::fs::rename(&log, h.dir("sb").join("console.log.1")).unwrap();
        std::fs::write(&log, "").unwrap();
        assert_eq!(h.sh("sb", "cat /root/f"), "two\n");
        assert!(gone(stale), "the stale standby {stale} was left running");
        assert_ne!(h.row("sb")["pid"].as_u64(), Some(stale));
        let notes = notes_after(&h, "sb", 0);
        assert!(
            notes.contains("console log or input was replaced"),
            "{notes}"
        );

        // A stopped sandbox restored to another checkpoint takes its standby too: the
        // standby holds no state, the restore names the checkpoint.
        h.ok(&["stop", "sb"]);
        let standby = standby_of(&h, "sb");
        let restore = ["checkpoint", "restore", "sb", "c1"];
        h.restore_like(&restore, &["start", "sb"]);
        assert_eq!(h.sh("sb", "cat /root/f"), "one\n");
        let row = h.row("sb");
        assert_eq!(row["pid"].as_u64(), Some(standby), "{row}");

        // doctor keeps a live standby and drops the record of a dead one.
        h.ok(&["stop", "sb"]);
        let standby = standby_of(&h, "sb");
        let report = h.ok(&["doctor"]);
        assert!(!report.contains(&standby.to_string()), "{report}");
        assert_eq!(h.row("sb")["standby_pid"].as_u64(), Some(standby));
        assert!(!gone(standby));
        kill9(standby);
        assert!(h.row("sb")["standby_pid"].is_null());
        let report = h.ok(&["doctor"]);
        assert!(report.contains("stale standby"), "{report}");
        assert!(!h.dir("sb").join("standby.json").exists());

        // Switched off: a stop leaves none.
        h.ok(&["start", "sb"]);
        let mut off = h.command(&["stop", "sb"]);
        off.env("CAIRN_STANDBY", "0");
        assert!(off.status().unwrap().success());
        let row = h.row("sb");
        assert_eq!(row["state"], "stopped");
        assert!(row["standby_pid"].is_null(), "{row}");

        // rm ends a standby: no process, no jail left.
        h.ok(&["start", "sb"]);
        h.ok(&["stop", "sb"]);
        let standby = standby_of(&h, "sb");
        h.ok(&["rm", "sb"]);
        assert!(gone(standby), "rm left the standby {standby} running");
        assert!(!h.dir("sb").exists());
        let jails = h.home.path().join("jail/cairn-vmm");
        let left: Vec<_> = std::fs::read_dir(&jails)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "jails left: {left:?}");
    });
}
