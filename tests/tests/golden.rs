//! Golden checkpoints end to end: the first `cairn create` of an image and shape boots and keeps
//! a golden checkpoint, later creates restore it, `--cold` boots; and every sandbox created or
//! forked from one checkpoint is its own machine (RNG, machine-id, hostname), and has /dev/pts.

use std::time::Duration;

use cairn_tests::kvm_available;
use cairn_tests::sandbox::CairnHome;

/// uuid, machine-id, hostname, 16 bytes of /dev/urandom: one per line.
const PROBE: &str = "cat /proc/sys/kernel/random/uuid /etc/machine-id /proc/sys/kernel/hostname; \
                     od -An -N16 -tx1 /dev/urandom | tr -d ' \\n'; echo";

fn probe(h: &CairnHome, name: &str) -> Vec<String> {
    let out = h.sh(name, PROBE);
    let lines: Vec<String> = out.lines().map(|l| l.trim().to_string()).collect();
    assert_eq!(lines.len(), 4, "{out:?}");
    lines
}

fn all_differ(a: &[String], b: &[String], what: &str) {
    for (i, item) in ["uuid", "machine-id", "hostname", "urandom"]
        .iter()
        .enumerate()
    {
        assert_ne!(a[i], b[i], "{what}: {item} is the same: {a:?} {b:?}");
    }
}

/// Whether `name` still waits for its hostname (`identity-pending` in its directory).
fn pending(h: &CairnHome, name: &str) -> bool {
    h.dir(name).join("identity-pending").exists()
}

fn golden_entries(h: &CairnHome) -> usize {
    std::fs::read_dir(h.home.path().join("golden"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("golden.json").is_file())
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn creates_restore_the_golden_checkpoint_and_each_sandbox_is_its_own_machine() {
    let name = "creates_restore_the_golden_checkpoint_and_each_sandbox_is_its_own_machine";
    if !kvm_available(name) {
        return;
    }
    let h = CairnHome::new();
    let shape = ["--mem", "256", "--disk", "1", "--idle-timeout", "0"];
    let first = h.create("a", &shape);
    assert_eq!(
        golden_entries(&h),
        1,
        "the first create keeps a golden checkpoint"
    );
    let b = h.create("b", &shape);
    let c = h.create("c", &shape);
    eprintln!(
        "create: first (boot + golden) {:.2} s, from golden {:.2} s and {:.2} s",
        first.as_secs_f64(),
        b.as_secs_f64(),
        c.as_secs_f64()
    );
    for n in ["b", "c"] {
        assert_eq!(h.row(n)["head_checkpoint"], "golden", "{n} restored it");
    }
    assert!(b < first && c < first, "restoring beats booting");

    // Two sandboxes restored from one checkpoint differ in everything that names a machine.
    let pb = probe(&h, "b");
    let pc = probe(&h, "c");
    assert_eq!((pb[2].as_str(), pc[2].as_str()), ("b", "c"));
    all_differ(&pb, &pc, "golden creates b and c");
    assert_eq!(pb[1].len(), 32, "{pb:?}");
    assert!(!pending(&h, "b"), "b's identity is applied");

    // `create` returns once the VMM runs; `cairn __settle` then gives the guest its name. When
    // no settler runs, the first exec does it before its command runs.
    let mut argv = vec!["create", "e", "--boot-timeout", "400"];
    argv.extend_from_slice(&shape);
    let out = h
        .command(&argv)
        .env("CAIRN_TEST_NO_SETTLER", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(pending(&h, "e"), "e's identity waits for its first exec");
    let pe = probe(&h, "e");
    assert_eq!(pe[2], "e");
    all_differ(&pb, &pe, "golden creates b and e (e settled by its exec)");
    assert!(!pending(&h, "e"));
    h.ok(&["rm", "e"]);

    // Two forks of one checkpoint, likewise.
    h.ok(&["checkpoint", "create", "b", "k"]);
    h.restore_like(&["fork", "b", "k", "f1"], &["start", "f1"]);
    h.restore_like(&["fork", "b", "k", "f2"], &["start", "f2"]);
    let p1 = probe(&h, "f1");
    let p2 = probe(&h, "f2");
    assert_eq!((p1[2].as_str(), p2[2].as_str()), ("f1", "f2"));
    all_differ(&p1, &p2, "forks f1 and f2");
    // A fork left stopped takes its own name at its first start.
    h.ok(&["fork", "--no-start", "b", "k", "f3"]);
    assert!(pending(&h, "f3"));
    h.restore_like(&["start", "f3"], &["start", "f3"]);
    let p3 = probe(&h, "f3");
    assert_eq!(p3[2], "f3");
    all_differ(&p1, &p3, "forks f1 and f3 (f3 started later)");
    for n in ["f1", "f2", "f3"] {
        h.ok(&["rm", n]);
    }

    // A terminal: /dev/pts is mounted.
    let (code, out) = h.exec("c", &["sh", "-c", "mountpoint -q /dev/pts && echo pts"]);
    assert_eq!((code, out.trim()), (0, "pts"));

    // --cold boots from scratch and keeps no second entry.
    let cold = h.create("d", &[&shape[..], &["--cold"]].concat());
    assert!(h.row("d")["head_checkpoint"].is_null(), "{}", h.row("d"));
    assert_eq!(golden_entries(&h), 1);
    assert!(cold > Duration::from_millis(0));

    // A cold-booted guest's memory is anonymous, so a checkpoint of it copies in the background,
    // jailed too: the jailer makes /dev/userfaultfd in the jail for the VMM (no CAP_SYS_PTRACE).
    h.ok(&["checkpoint", "create", "d", "bg"]);
    let console = std::fs::read_to_string(h.dir("d").join("console.log")).unwrap_or_default();
    assert!(
        !console.contains("copy memory with the guest paused"),
        "the checkpoint fell back to a paused copy: {console}"
    );
}
