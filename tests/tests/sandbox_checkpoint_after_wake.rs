//! A checkpoint of a woken sandbox does not stop its guest (docs/checkpoints.md, "After a
//! restore from a disk file system"): the wake restores from the sandbox's checkpoint store on
//! this host's disk (the test home is under /tmp), into memory the VMM fills from the layers, so
//! the next `cairn checkpoint create` copies memory with the guest running instead of falling
//! back to the paused copy. Runs as the sandbox tests do (root: the VMMs are jailed), with
//! `cargo build --workspace --bins` first.

use cairn_tests::kvm_available;
use cairn_tests::linux::retry_on_guest_flake;
use cairn_tests::sandbox::CairnHome;

/// `checkpoint create --json`'s pause, write and total, ms.
fn checkpoint(h: &CairnHome, name: &str) -> (f64, f64, f64) {
    let out = h.ok(&["checkpoint", "create", "sb", name, "--json"]);
    let meta: serde_json::Value = serde_json::from_str(&out).unwrap();
    let f = |k: &str| meta[k].as_f64().unwrap_or_else(|| panic!("{k} in {out}"));
    eprintln!(
        "{name}: pause {:.2} ms, write {:.2} ms, total {:.2} ms, {:.1} MiB",
        f("pause_ms"),
        f("write_ms"),
        f("total_ms"),
        f("dirty_memory_mib")
    );
    (f("pause_ms"), f("write_ms"), f("total_ms"))
}

#[test]
fn a_woken_sandbox_checkpoints_without_stopping_its_guest() {
    let name = "a_woken_sandbox_checkpoints_without_stopping_its_guest";
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
        checkpoint(&h, "c1");
        // Stopped, then woken by an exec: restored from c1's layers on the disk.
        h.ok(&["stop", "sb"]);
        h.sh("sb", "echo two > /root/f; sync");
        // The guest dirties 16 MiB of memory, then the checkpoint.
        h.sh(
            "sb",
            "head -c 16777216 /dev/zero | tr '\\0' x > /dev/shm/m; sync",
        );
        let (pause, write, total) = checkpoint(&h, "c2");
        // A copy made paused counts in both pause_ms and write_ms.
        assert!(
            pause > 0.0 && total + 1.0 >= pause + write,
            "c2 was copied with the guest paused: pause {pause} write {write} total {total}"
        );
        // The checkpoint is whole: restored, it holds what was written before it.
        let restore = ["checkpoint", "restore", "sb", "c2"];
        h.restore_like(&restore, &restore);
        assert_eq!(h.sh("sb", "cat /root/f"), "two\n");
        assert_eq!(h.sh("sb", "wc -c < /dev/shm/m"), "16777216\n");
        // More than the 2 MiB a Diff may have to be copied paused (checkpoint/named.rs,
        // PAUSED_DIFF_PAGES): c3 must take the background copy.
        h.sh(
            "sb",
            "dd if=/dev/zero of=/dev/shm/m3 bs=1M count=4 2>/dev/null; sync",
        );
        let (pause, write, total) = checkpoint(&h, "c3");
        assert!(
            pause > 0.0 && total + 1.0 >= pause + write,
            "c3 was copied with the guest paused: pause {pause} write {write} total {total}"
        );
        // The VMM says so (on its stderr, the console log) when it falls back to the paused
        // copy, or when it could not restore into filled memory.
        let log = h.console_tail("sb", 100_000);
        for fallback in [
            "copy memory with the guest paused",
            "mapping the memory files instead",
        ] {
            assert!(!log.contains(fallback), "the VMM logged {fallback:?}");
        }
        h.ok(&["rm", "sb"]);
    });
}
