//! Every operation on a lazily pulled sandbox (docs/storage.md, "Lazy fetch"), end to end on
//! the Linux guest with a real S3 server on 127.0.0.1 (scripts/s3-server). `cairn pull` is lazy
//! by default; each home below stands for a host, with its background fetch off so that what
//! is here is only what the guest touched or the operation fetched:
//!
//! - `push` of a lazy sandbox names its chunks without downloading them, and `df` counts them;
//! - `stop --push` of a lazy sandbox that ran: the new version pulls and restores elsewhere;
//! - a restarted page server remembers what earlier starts fetched (`lazy.present`);
//! - `fork` of a lazy (running) sandbox fetches the rest first, and the fork runs;
//! - `checkpoint rm` of a lazy sandbox's pulled checkpoint fetches first, merges, and the
//!   merged head restores;
//! - a cold boot of a lazy sandbox fetches first and boots its disk.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use cairn_tests::kvm_available;
use cairn_tests::linux::retry_on_guest_flake;
use cairn_tests::s3::{S3Server, SMALL_COLD_SANDBOX};
use cairn_tests::sandbox::CairnHome;

fn json(h: &CairnHome, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&h.ok(args)).unwrap()
}

/// A home without the background fetch.
fn lazy_home(s3: &S3Server) -> CairnHome {
    let mut h = s3.home();
    h.env
        .push(("CAIRN_STORE_LAZY_BACKGROUND".into(), "0".into()));
    h
}

fn stats(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("page-server.json")).unwrap()).unwrap()
}

/// The checkpoint `cairn stop` names last on its line.
fn stopped_at(out: &str) -> String {
    out.trim().rsplit(' ').next().unwrap().to_string()
}

/// Pull `sb` (plainly: lazily) into `h` and check nothing but state and indexes came.
fn pull_lazily(h: &CairnHome) {
    let pull = json(h, &["pull", "sb", "--json"]);
    eprintln!("pull: {pull}");
    assert!(
        pull["bytes_fetched"].as_u64().unwrap() < 1 << 20,
        "a plain pull is lazy: {pull}"
    );
    assert!(h.dir("sb").join("lazy.json").is_file());
}

#[test]
fn store_lazy_ops_push_fork_merge_and_cold_boot_of_a_lazily_pulled_sandbox() {
    let name = "store_lazy_ops_push_fork_merge_and_cold_boot_of_a_lazily_pulled_sandbox";
    if !kvm_available(name) {
        return;
    }
    let s3 = S3Server::start();
    retry_on_guest_flake(name, || {
        let a = s3.home();
        a.create("sb", SMALL_COLD_SANDBOX);
        a.sh("sb", "echo one > /root/f; sync");
        let first = stopped_at(&a.ok(&["stop", "sb"]));
        a.ok(&["push", "sb"]);

        // b: a plain pull is lazy, and pushing it back downloads nothing.
        let b = lazy_home(&s3);
        pull_lazily(&b);
        let dir = b.dir("sb");
        let push = json(&b, &["push", "sb", "--json"]);
        eprintln!("push of a lazy sandbox: {push}");
        assert!(
            push["chunks_uploaded"].as_u64().unwrap() <= 4,
            "only its rebased config is new: {push}"
        );
        assert!(dir.join("lazy.json").is_file(), "still lazy after the push");
        // `df` counts the lazy files as their pull named them, not as the sparse files hold.
        let df = json(&b, &["df", "--json"]);
        let logical = df["total"]["logical_bytes"].as_u64().unwrap();
        assert!(
            logical * 2 > push["logical_bytes"].as_u64().unwrap(),
            "df of a lazy sandbox: {df}"
        );
        assert_eq!(
            std::fs::metadata(dir.join("disk.img")).unwrap().blocks(),
            0,
            "the push downloaded nothing"
        );

        // It runs, changes, and `stop --push` pushes it with its pulled chain still lazy.
        b.restore_like(&["start", "sb"], &["start", "sb"]);
        b.sh("sb", "echo two > /root/f; sync");
        let second = stopped_at(&b.ok(&["stop", "sb", "--push"]));
        assert!(dir.join("lazy.json").is_file(), "no background fetch");
        assert!(
            dir.join("lazy.present").is_file(),
            "what the start fetched is recorded"
        );
        // Its next start finds what the first fetched already here.
        b.restore_like(&["start", "sb"], &["start", "sb"]);
        assert_eq!(b.sh("sb", "cat /root/f"), "two\n");
        let s = stats(&dir);
        eprintln!("second served start: {s}");
        assert!(
            s["fetch"]["chunks_recorded_present"].as_u64().unwrap() > 0,
            "presence remembered across starts: {s}"
        );
        b.ok(&["stop", "sb"]);

        // c: the version `stop --push` made restores; a fork of the running lazy sandbox
        // fetches the rest first, and runs.
        let c = lazy_home(&s3);
        pull_lazily(&c);
        c.restore_like(&["start", "sb"], &["start", "sb"]);
        assert_eq!(c.sh("sb", "cat /root/f"), "two\n");
        let head = c.row("sb")["head_checkpoint"].as_str().unwrap().to_string();
        c.restore_like(&["fork", "sb", &head, "f1"], &["start", "f1"]);
        assert!(
            !c.dir("sb").join("lazy.json").exists(),
            "the fork made the source whole first"
        );
        assert_eq!(c.sh("f1", "cat /root/f"), "two\n");
        assert_eq!(c.sh("sb", "cat /root/f"), "two\n");
        c.ok(&["rm", "f1"]);
        c.ok(&["rm", "sb"]);

        // d: deleting the pulled chain's older checkpoint merges it into the newer one, after
        // fetching both; the merged head restores.
        let d = lazy_home(&s3);
        pull_lazily(&d);
        d.ok(&["checkpoint", "rm", "sb", &first]);
        assert!(!d.dir("sb").join("lazy.json").exists());
        assert_eq!(d.sh("sb", "cat /root/f"), "two\n");
        d.ok(&["stop", "sb"]);
        d.restore_like(&["start", "sb"], &["start", "sb"]);
        assert_eq!(d.sh("sb", "cat /root/f"), "two\n");
        let names: Vec<String> = d
            .ok(&["checkpoint", "ls", "sb"])
            .lines()
            .map(str::to_string)
            .collect();
        assert!(
            !names.iter().any(|l| l.contains(first.as_str())),
            "{first} deleted: {names:?}"
        );
        assert!(
            names.iter().any(|l| l.contains(second.as_str())),
            "{names:?}"
        );
        d.ok(&["rm", "sb"]);

        // e: a cold boot of a lazy sandbox fetches its disk first and boots it.
        let e = lazy_home(&s3);
        pull_lazily(&e);
        e.ok(&["start", "sb", "--cold"]);
        assert!(!e.dir("sb").join("lazy.json").exists());
        assert_eq!(e.sh("sb", "cat /root/f"), "two\n");
        e.ok(&["rm", "sb"]);
    });
}
