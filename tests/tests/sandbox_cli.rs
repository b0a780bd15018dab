//! The `cairn` CLI end to end on the Linux guest (one `cairn create` per test): checkpoints
//! and restore, a background process that survives idling, forks that diverge, and `rm`
//! freeing everything. Runs `cairn` and `cairn-vmm` from the target directory (`cargo build
//! --workspace --bins` first) with the static agent (`CAIRN_AGENT_BIN`, else built here).
//!
//! On this project's emulated-KVM hosts a guest process sometimes dies at its first
//! thread-local access (docs/guest.md): each exec, create and restore is retried when that
//! happens ([`cairn_tests::sandbox::CairnHome`]), and a whole body at most 3 times
//! ([`retry_on_guest_flake`]); a real failure fails every attempt.

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_tests::kvm_available;
use cairn_tests::linux::retry_on_guest_flake;
use cairn_tests::sandbox::CairnHome;

fn vmm_gone(pid: u64) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Gone, or a zombie waiting for init.
    stat.is_empty()
        || stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
}

#[test]
fn sandbox_checkpoint_restore_and_background_process_across_idle() {
    let name = "sandbox_checkpoint_restore_and_background_process_across_idle";
    if !kvm_available(name) {
        return;
    }
    retry_on_guest_flake(name, || {
        let h = CairnHome::new();
        let took = h.create(
            "sb",
            &["--mem", "256", "--disk", "1", "--idle-timeout", "8"],
        );
        eprintln!("create: {:.1} s", took.as_secs_f64());
        assert!(h.dir("sb").join("disk.img").is_file());

        // exec writes a file -> checkpoint -> exec overwrites it -> restore -> the original.
        h.sh("sb", "echo original > /root/f; sync");
        let c = h.ok(&["checkpoint", "create", "sb", "c1"]);
        assert!(c.contains("checkpoint c1"), "{c}");
        let (code, _) = h.exec("sb", &["sh", "-c", "echo changed > /root/f; sync; exit 3"]);
        assert_eq!(code, 3);
        assert_eq!(h.sh("sb", "cat /root/f"), "changed\n");
        let restore = ["checkpoint", "restore", "sb", "c1"];
        h.restore_like(&restore, &restore);
        assert_eq!(h.sh("sb", "cat /root/f"), "original\n");

        // A background process started before idling keeps its pid after the wake.
        let pid = h.sh("sb", "sleep 100000 </dev/null >/dev/null 2>&1 & echo $!");
        let pid = pid.trim().to_string();
        assert!(pid.parse::<u32>().is_ok(), "{pid:?}");
        let vmm = h.row("sb")["pid"].as_u64().unwrap();
        let deadline = Instant::now() + Duration::from_secs(180);
        while h.row("sb")["state"] != "stopped" {
            assert!(Instant::now() < deadline, "never idled: {}", h.ls());
            std::thread::sleep(Duration::from_secs(1));
        }
        assert!(vmm_gone(vmm), "the idle VMM {vmm} is still there");
        let woke = Instant::now();
        let (code, cmdline) = h.exec("sb", &["cat", &format!("/proc/{pid}/cmdline")]);
        eprintln!(
            "wake + exec after idling: {:.2} s",
            woke.elapsed().as_secs_f64()
        );
        assert_eq!(code, 0, "process {pid} is gone after the wake");
        assert!(cmdline.starts_with("sleep"), "{cmdline:?}");
        assert_eq!(h.row("sb")["state"], "running");
        assert_eq!(h.sh("sb", "cat /root/f"), "original\n");

        // rm frees everything: the VMM, the directory, the row.
        let vmm = h.row("sb")["pid"].as_u64().unwrap();
        h.ok(&["rm", "sb"]);
        assert_eq!(h.ls(), serde_json::json!([]));
        assert!(!h.dir("sb").exists());
        assert!(vmm_gone(vmm), "VMM {vmm} left behind");
        let out = h.run(&["exec", "sb", "--", "true"]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    });
}

#[test]
fn sandbox_forks_diverge_and_outlive_their_original() {
    let name = "sandbox_forks_diverge_and_outlive_their_original";
    if !kvm_available(name) {
        return;
    }
    retry_on_guest_flake(name, || {
        let h = CairnHome::new();
        // Two vCPUs: the forks, restored from a checkpoint, keep both.
        h.create(
            "src",
            &[
                "--cpus",
                "2",
                "--mem",
                "256",
                "--disk",
                "1",
                "--idle-timeout",
                "0",
            ],
        );
        assert_eq!(h.sh("src", "nproc"), "2\n");
        h.sh("src", "echo base > /root/f; sync");
        h.ok(&["checkpoint", "create", "src", "c1"]);

        // Two forks of one checkpoint: one started at once, one left stopped (wakes on exec).
        h.restore_like(&["fork", "src", "c1", "f1"], &["start", "f1"]);
        let out = h.ok(&["fork", "src", "c1", "f2", "--no-start"]);
        assert!(out.contains("f2: forked from src at c1"), "{out}");
        assert_eq!(h.row("f2")["state"], "stopped");
        assert_eq!(h.row("f2")["head_checkpoint"], "c1");
        h.sh("f1", "echo one > /root/f; sync");
        h.sh("f2", "echo two > /root/f; sync");
        assert_eq!(h.sh("f1", "cat /root/f"), "one\n");
        assert_eq!(h.sh("f2", "cat /root/f"), "two\n");
        assert_eq!(h.sh("f2", "nproc"), "2\n");
        assert_eq!(h.sh("src", "cat /root/f"), "base\n");
        let out = h.run(&["fork", "src", "c1", "f1"]);
        assert!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("exists"),
            "a taken name is refused"
        );
        let out = h.run(&["fork", "src", "nope", "f3"]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("no checkpoint \"nope\""));

        // What a fork costs on disk: `du` counts shared (hard-linked) files once, for the
        // first path given, so the forks' figures are only their own files.
        let (src, f1, f2) = (h.dir("src"), h.dir("f1"), h.dir("f2"));
        let du = h.du(&[&src, &f1, &f2]);
        eprintln!(
            "du after one exec in each fork: src {:.1} MiB, f1 {:.2} MiB, f2 {:.2} MiB",
            du[0] as f64 / 1048576.0,
            du[1] as f64 / 1048576.0,
            du[2] as f64 / 1048576.0,
        );
        assert!(
            du[1] * 4 < du[0] && du[2] * 4 < du[0],
            "forks should share the original's files: {du:?}"
        );

        // The forks outlive the original: its checkpoints and disk go, theirs stay whole.
        h.ok(&["checkpoint", "create", "f1", "f1c"]);
        h.ok(&["rm", "src"]);
        assert!(!src.exists());
        assert_eq!(h.sh("f1", "cat /root/f"), "one\n");
        assert!(h.ok(&["stop", "f2"]).contains("stopped at checkpoint"));
        h.restore_like(&["start", "f2"], &["start", "f2"]);
        assert_eq!(h.sh("f2", "cat /root/f"), "two\n");
        let back = ["checkpoint", "restore", "f1", "c1"];
        h.restore_like(&back, &back);
        assert_eq!(h.sh("f1", "cat /root/f"), "base\n");

        h.ok(&["rm", "f1"]);
        h.ok(&["rm", "f2"]);
        assert_eq!(h.ls(), serde_json::json!([]));
        let left: Vec<_> = std::fs::read_dir(h.home.path().join("sandboxes"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        assert!(!Path::new(&f1).exists() && !Path::new(&f2).exists());
    });
}
