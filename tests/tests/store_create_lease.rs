//! `cairn create` takes the name's lease when a store is configured (docs/storage.md, "leases"),
//! against a real S3 server on 127.0.0.1 (scripts/s3-server): refused, before anything is made,
//! while another host holds it; with KVM, made and leased to this host, renewed while it runs,
//! and handed back by `rm`.

use std::time::Duration;

use cairn_store::LocalStore;
use cairn_tests::kvm_available;
use cairn_tests::linux::retry_on_guest_flake;
use cairn_tests::s3::{S3Server, SMALL_COLD_SANDBOX};

#[test]
fn store_create_takes_the_lease_and_is_refused_while_another_host_holds_it() {
    let name = "store_create_takes_the_lease_and_is_refused_while_another_host_holds_it";
    let s3 = S3Server::start();
    if !s3.conditional_puts() {
        eprintln!("SKIP {name}: {} ignores conditional writes", s3.kind);
        return;
    }
    let remote = s3.remote();
    let a = s3.home();
    let args: Vec<&str> = ["create", "sb"]
        .into_iter()
        .chain(SMALL_COLD_SANDBOX.iter().copied())
        .collect();

    // Another host runs a sandbox of that name: the create is refused and makes nothing.
    remote
        .acquire_lease("sb", "other-host", Duration::from_secs(60))
        .unwrap();
    let out = a.run(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("leased by host other-host"),
        "{err}"
    );
    assert!(a.ls().as_array().unwrap().is_empty(), "nothing made");
    assert!(!a.home.path().join("sandboxes/sb").exists());
    assert!(remote.release_lease("sb", "other-host").unwrap());

    if !kvm_available(name) {
        return;
    }
    retry_on_guest_flake(name, || {
        let mut a = s3.home();
        a.env.push(("CAIRN_LEASE_SECS".into(), "4".into()));
        a.create("sb", &args[2..]);
        let host_a = LocalStore::in_home(a.home.path()).host_id().unwrap();
        // Renewed past two lease lengths: still this host's.
        std::thread::sleep(Duration::from_secs(9));
        let (lease, _) = remote.lease("sb").unwrap().expect("a lease");
        assert_eq!(lease.holder, host_a);
        assert!(remote
            .acquire_lease("sb", "other-host", Duration::from_secs(60))
            .is_err());
        a.ok(&["rm", "sb"]);
        // Handed back: another host may take the name now.
        remote
            .acquire_lease("sb", "other-host", Duration::from_secs(60))
            .unwrap();
        remote.release_lease("sb", "other-host").unwrap();
    });
}
