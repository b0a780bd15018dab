//! Crash safety of `cairn push` end to end: a push SIGKILLed after some chunk uploads, after
//! every chunk but before the manifest, and in the middle of the manifest's upload (a relay
//! forwards half of that request's body, then the client is killed) leaves the bucket
//! consistent (every chunk object matches its name, the manifest is the previous push's) and
//! the previous version pullable and restorable on another home. Real s3s-fs server
//! (scripts/s3-server), real guest; the pauses are the store's `CAIRN_TEST_PUSH_PAUSE` test knob.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_store::chunk::ChunkId;
use cairn_store::{Remote, StoreUrl};
use cairn_tests::kvm_available;
use cairn_tests::linux::retry_on_guest_flake;
use cairn_tests::process::Guest;
use cairn_tests::s3::{S3Server, SMALL_COLD_SANDBOX};

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A relay to `upstream` that forwards everything until a `PUT` whose request line contains
/// `needle`: of that request it forwards the headers and half the body, then holds the rest
/// until the client goes away, and sets `stalled`.
fn stall_proxy(upstream: u16, needle: &str) -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stalled = Arc::new(AtomicBool::new(false));
    let (needle, flag) = (needle.as_bytes().to_vec(), stalled.clone());
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let (needle, flag) = (needle.clone(), flag.clone());
            std::thread::spawn(move || relay(client, upstream, &needle, &flag));
        }
    });
    (port, stalled)
}

fn relay(mut client: TcpStream, upstream: u16, needle: &[u8], stalled: &AtomicBool) {
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (mut up_r, mut client_w) = (up.try_clone().unwrap(), client.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut up_r, &mut client_w);
    });
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        // Forward all that can go; keep only a request to the needle that is not all here yet.
        let keep = loop {
            let Some(p) = find(&pending, b"PUT /") else {
                break pending.len();
            };
            let Some(eol) = find(&pending[p..], b"\r\n") else {
                break p;
            };
            if find(&pending[p..p + eol], needle).is_none() {
                if up.write_all(&pending[..p + eol]).is_err() {
                    return;
                }
                pending.drain(..p + eol);
                continue;
            }
            let Some(h) = find(&pending[p..], b"\r\n\r\n") else {
                break p;
            };
            let head = String::from_utf8_lossy(&pending[p..p + h]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .expect("the manifest PUT has a content-length");
            let cut = p + h + 4 + len / 2;
            if pending.len() < cut {
                break p;
            }
            up.write_all(&pending[..cut]).unwrap();
            up.flush().unwrap();
            stalled.store(true, Ordering::SeqCst);
            // Hold the rest until the client is killed; then both ends close.
            while matches!(client.read(&mut buf), Ok(n) if n > 0) {}
            return;
        };
        if up.write_all(&pending[..keep]).is_err() {
            return;
        }
        pending.drain(..keep);
    }
}

/// Every chunk object in the bucket matches its name (no torn chunk left under a real name).
fn chunks_sound(data: &Path) -> usize {
    let mut n = 0;
    let chunks = data.join("t/chunks");
    for dir in std::fs::read_dir(&chunks).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let Some(id) = ChunkId::parse(&name) else {
                continue;
            };
            let bytes = std::fs::read(&f).unwrap();
            assert!(id.matches(&bytes), "chunk {name} does not match its name");
            n += 1;
        }
    }
    n
}

#[test]
fn store_a_push_killed_anywhere_leaves_the_previous_version_restorable() {
    let name = "store_a_push_killed_anywhere_leaves_the_previous_version_restorable";
    if !kvm_available(name) {
        return;
    }
    let s3 = S3Server::start();
    let Some(data) = s3.data.clone() else {
        eprintln!("SKIP {name}: needs s3s-fs (objects as files)");
        return;
    };
    let url = StoreUrl::parse(&s3.var("CAIRN_STORE")).unwrap();
    let remote = Remote::open_with(&url, &s3.env).unwrap();
    let upstream: u16 = s3
        .var("AWS_ENDPOINT_URL")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    retry_on_guest_flake(name, || {
        let sb = "kp";
        let mut a = s3.home();
        // A killed push keeps the lease it took: make it lapse soon for the second home.
        a.env.push(("CAIRN_LEASE_SECS".into(), "2".into()));
        a.create(sb, SMALL_COLD_SANDBOX);
        a.sh(sb, "echo v1 > /root/f; sync");
        a.ok(&["stop", sb]);
        a.ok(&["push", sb]);
        let (v1, _) = remote.manifest(sb).unwrap().unwrap();

        // A second version with new chunks in memory and on disk.
        a.restore_like(&["start", sb], &["start", sb]);
        a.sh(
            sb,
            // Fresh file data without /dev/urandom (guest kernel code is slow on emulated KVM).
            "echo v2 > /root/f; awk 'BEGIN { for (n = 0; n < 100000; n++) print n, \"v2\" }' > /root/big; sync",
        );
        a.ok(&["stop", sb]);

        let points = ["chunks:3", "manifest", "manifest-upload"];
        for point in points {
            let mut cmd = a.command(&["push", sb]);
            let stalled = if point == "manifest-upload" {
                let (port, stalled) =
                    stall_proxy(upstream, &format!("sandboxes/{sb}/manifest.json"));
                cmd.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
                Some(stalled)
            } else {
                cmd.env("CAIRN_TEST_PUSH_PAUSE", point);
                None
            };
            let mut push = Guest::spawn(cmd);
            match &stalled {
                Some(flag) => {
                    for _ in 0..1200 {
                        if flag.load(Ordering::SeqCst) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    assert!(
                        flag.load(Ordering::SeqCst),
                        "the manifest upload never started: {}",
                        push.stderr()
                    );
                }
                None => {
                    push.wait_for("CAIRN_TEST_PUSH_PAUSED", Duration::from_secs(120))
                        .unwrap();
                }
            }
            push.signal(libc::SIGKILL);
            push.wait_exit(Duration::from_secs(10)).unwrap();
            // Give the server a moment to see the cut connection.
            std::thread::sleep(Duration::from_millis(500));
            let (m, _) = remote.manifest(sb).unwrap().unwrap();
            assert_eq!(
                m.pushed_at_ms, v1.pushed_at_ms,
                "killed at {point}: the manifest must still be the previous push's"
            );
            let n = chunks_sound(&data);
            eprintln!("killed at {point}: manifest unchanged, {n} chunk objects, all sound");
        }

        // The chunks the killed pushes left are unreferenced: gc deletes them, nothing else.
        a.ok(&["gc", "--grace", "0"]);
        chunks_sound(&data);

        // The previous version pulls and restores on another home.
        std::thread::sleep(Duration::from_secs(3));
        let b = s3.home();
        b.ok(&["pull", sb]);
        b.restore_like(&["start", sb], &["start", sb]);
        assert_eq!(b.sh(sb, "cat /root/f"), "v1\n");
        b.ok(&["stop", sb]);
        b.ok(&["rm", sb]);

        // And the interrupted push, run again to the end, goes through.
        a.ok(&["push", sb]);
        let (m, _) = remote.manifest(sb).unwrap().unwrap();
        assert!(m.pushed_at_ms > v1.pushed_at_ms);
        a.ok(&["rm", sb]);
    });
}
