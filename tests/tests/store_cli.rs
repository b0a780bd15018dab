//! `cairn df`, `push`, `pull` and the start lease end to end on the Linux guest, with two
//! `CAIRN_HOME`s standing for two hosts and a real S3 server on 127.0.0.1 (scripts/s3-server).
//! Runs `cairn` and `cairn-vmm` from the target directory (`cargo build --workspace --bins`).

use cairn_tests::kvm_available;
use cairn_tests::linux::retry_on_guest_flake;
use cairn_tests::s3::{S3Server, SMALL_COLD_SANDBOX};
use cairn_tests::sandbox::CairnHome;

fn df(h: &CairnHome) -> serde_json::Value {
    serde_json::from_str(&h.ok(&["df", "--json"])).unwrap()
}

#[test]
fn store_a_sandbox_moves_between_homes_through_the_bucket() {
    let name = "store_a_sandbox_moves_between_homes_through_the_bucket";
    if !kvm_available(name) {
        return;
    }
    let s3 = S3Server::start();
    retry_on_guest_flake(name, || {
        let a = s3.home();
        let b = s3.home();
        a.create("sb", SMALL_COLD_SANDBOX);
        a.sh("sb", "echo moved > /root/f; sync");
        let stop = a.ok(&["stop", "sb"]);
        let ckpt = stop.trim().rsplit(' ').next().unwrap().to_string();

        // Two forks of the stopped sandbox's checkpoint: df counts them, stores them once.
        a.ok(&["fork", "sb", &ckpt, "f1", "--no-start"]);
        a.ok(&["fork", "sb", &ckpt, "f2", "--no-start"]);
        let d = df(&a);
        eprintln!("df after two forks: {d}");
        let (logical, stored) = (
            d["total"]["logical_bytes"].as_u64().unwrap(),
            d["total"]["stored_bytes"].as_u64().unwrap(),
        );
        assert_eq!(d["sandboxes"].as_array().unwrap().len(), 3);
        assert!(
            logical > 0 && stored * 5 < logical * 2,
            "three copies of one checkpoint should dedup to about a third: {d}"
        );
        let sb = d["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "sb")
            .unwrap();
        assert!(sb["logical_bytes"].as_u64().unwrap() >= sb["stored_bytes"].as_u64().unwrap());

        // Push: everything the first time, nothing the second.
        let push: serde_json::Value =
            serde_json::from_str(&a.ok(&["push", "sb", "--json"])).unwrap();
        eprintln!("push: {push}");
        assert!(push["chunks_uploaded"].as_u64().unwrap() > 0);
        let again: serde_json::Value =
            serde_json::from_str(&a.ok(&["push", "sb", "--json"])).unwrap();
        assert_eq!(again["chunks_uploaded"], 0, "{again}");
        // A fork shares every chunk but its config: almost nothing to upload.
        let fork: serde_json::Value =
            serde_json::from_str(&a.ok(&["push", "f1", "--json"])).unwrap();
        assert!(fork["chunks_uploaded"].as_u64().unwrap() <= 4, "{fork}");

        // The other home pulls it, starts it (restoring the checkpoint), reads the file.
        let pull: serde_json::Value =
            serde_json::from_str(&b.ok(&["pull", "sb", "--json"])).unwrap();
        eprintln!("pull: {pull}");
        assert_eq!(b.row("sb")["state"], "stopped");
        assert_eq!(b.row("sb")["head_checkpoint"], ckpt.as_str());
        b.restore_like(&["start", "sb"], &["start", "sb"]);
        assert_eq!(b.sh("sb", "cat /root/f"), "moved\n");
        let out = b.run(&["pull", "sb"]);
        assert!(
            !out.status.success(),
            "a second pull of a sandbox it has is refused"
        );

        // One host at a time: b holds the lease, so a's start is refused (where the server
        // honours conditional writes; Garage does not)...
        if s3.conditional_puts() {
            let out = a.run(&["start", "sb"]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && err.contains("leased by host"),
                "{err}"
            );
        }
        // ...until b stops and pushes it back in one command (a push hands the lease back).
        b.sh("sb", "echo back > /root/f; sync");
        b.ok(&["stop", "sb", "--push"]);
        a.ok(&["rm", "sb"]);
        a.ok(&["pull", "sb"]);
        a.restore_like(&["start", "sb"], &["start", "sb"]);
        assert_eq!(a.sh("sb", "cat /root/f"), "back\n");
        let gc = a.ok(&["gc", "--grace", "0", "--dry-run"]);
        assert!(gc.contains("would be deleted"), "{gc}");
    });
}
