//! The lease of a running sandbox end to end, against a real S3 server on 127.0.0.1
//! (scripts/s3-server, s3s-fs) with a 3 s lease: renewed while the VMM runs (a second host is
//! refused long after the first lease would have lapsed), lost when this host was paused past
//! its expiry and another host took it (the sandbox is stopped, its wakes refused), released
//! on stop. The "other host" is the store crate driven from the test with another host id.

use std::time::{Duration, Instant};

use cairn_store::{LocalStore, Remote, StoreError, StoreUrl};
use cairn_tests::kvm_available;
use cairn_tests::linux::retry_on_guest_flake;
use cairn_tests::s3::{S3Server, SMALL_COLD_SANDBOX};

const TTL_SECS: u64 = 3;

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn store_lease_is_renewed_while_running_lost_stops_it_and_stop_releases_it() {
    let name = "store_lease_is_renewed_while_running_lost_stops_it_and_stop_releases_it";
    if !kvm_available(name) {
        return;
    }
    let s3 = S3Server::start();
    if !s3.conditional_puts() {
        eprintln!("SKIP {name}: {} ignores conditional writes", s3.kind);
        return;
    }
    let url = StoreUrl::parse(&s3.var("CAIRN_STORE")).unwrap();
    let remote = Remote::open_with(&url, &s3.env).unwrap();
    let ttl = Duration::from_secs(TTL_SECS);
    retry_on_guest_flake(name, || {
        let mut a = s3.home();
        a.env
            .push(("CAIRN_LEASE_SECS".into(), TTL_SECS.to_string()));
        let sb = "ls";
        a.create(sb, SMALL_COLD_SANDBOX);
        a.ok(&["stop", sb]);
        a.restore_like(&["start", sb], &["start", sb]);
        let host_a = LocalStore::in_home(a.home.path()).host_id().unwrap();

        // Renewed: well past two lease lengths, a's lease holds and the intruder is refused.
        std::thread::sleep(ttl * 3);
        let (lease, _) = remote.lease(sb).unwrap().expect("a lease");
        assert_eq!(lease.holder, host_a);
        match remote.acquire_lease(sb, "intruder", Duration::from_secs(60)) {
            Err(StoreError::Leased { holder, .. }) => assert_eq!(holder, host_a),
            other => panic!("the intruder should be refused while a runs it: {other:?}"),
        }

        // Lost: a's renewer is paused past the expiry, the intruder takes the lease; when the
        // renewer runs again it finds the lease gone and stops the sandbox.
        let pid: i32 = std::fs::read_to_string(a.dir(sb).join("lease-renew.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: kill(2) on the renewer cairn started for this test's home; no memory passed.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        std::thread::sleep(ttl + Duration::from_millis(1500));
        let taken = remote.acquire_lease(sb, "intruder", Duration::from_secs(600));
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        taken.expect("the lapsed lease can be taken");
        wait_until("the sandbox to stop", Duration::from_secs(120), || {
            a.row(sb)["state"] != "running"
        });
        let log = std::fs::read_to_string(a.dir(sb).join("lease.log")).unwrap();
        assert!(log.contains("lease lost to host intruder"), "{log}");
        let out = a.run(&["start", sb]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("leased by host"),
            "{err}"
        );
        assert_eq!(remote.lease(sb).unwrap().unwrap().0.holder, "intruder");

        // Released on stop: once the intruder lets go, a runs it again, and a's stop hands the
        // lease back (expires_at_ms 0) without waiting for it to lapse.
        assert!(remote.release_lease(sb, "intruder").unwrap());
        a.restore_like(&["start", sb], &["start", sb]);
        assert_eq!(a.sh(sb, "echo back"), "back\n");
        a.ok(&["stop", sb]);
        wait_until("the lease to be released", Duration::from_secs(10), || {
            let (l, _) = remote.lease(sb).unwrap().unwrap();
            l.holder == host_a && l.expires_at_ms == 0
        });
        a.ok(&["rm", sb]);
    });
}
