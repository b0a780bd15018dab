//! Ports in, end to end on the Linux guest: a tiny perl HTTP server in the guest, reached by
//! `cairn proxy` and by `cairn router` (Host header), the router waking a stopped sandbox, and an
//! open proxied connection keeping the sandbox from idling; and the same router inside
//! `cairn serve --router`.
//! Needs `cairn` and `cairn-vmm` built (`cargo build --workspace --bins`) and /dev/kvm.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use cairn_tests::kvm_available;
use cairn_tests::linux::retry_on_guest_flake;
use cairn_tests::ports::{get, get_until_up, start_server, Daemon};
use cairn_tests::sandbox::CairnHome;

#[test]
fn sandbox_proxy_and_router_reach_a_guest_server_and_wake_it() {
    let name = "sandbox_proxy_and_router_reach_a_guest_server_and_wake_it";
    if !kvm_available(name) {
        return;
    }
    retry_on_guest_flake(name, || {
        let h = CairnHome::new();
        h.create(
            "web",
            &["--mem", "256", "--disk", "1", "--idle-timeout", "20"],
        );
        start_server(&h, "web", 8080);

        // cairn proxy: a local port reaches 127.0.0.1:8080 in the guest.
        let proxy = Daemon::start(&h, &["proxy", "web", "8080", "--listen", "127.0.0.1:0"]);
        let start = Instant::now();
        let a = get_until_up(proxy.port, "anything");
        eprintln!(
            "proxy: first answer after {:.2} s",
            start.elapsed().as_secs_f64()
        );
        assert!(a.starts_with("HTTP/1.1 200 OK"), "{a}");
        assert!(a.contains("path=/x host=anything"), "{a}");
        let start = Instant::now();
        assert!(get(proxy.port, "again").contains("host=again"));
        eprintln!(
            "proxy: connect + request {:.1} ms",
            start.elapsed().as_secs_f64() * 1e3
        );

        // A port nothing listens on: the local connection is closed without an answer.
        let dead = Daemon::start(&h, &["proxy", "web", "9", "--listen", "127.0.0.1:0"]);
        assert_eq!(get(dead.port, "x"), "");
        drop(dead);

        // The router: by Host header.
        let router = Daemon::start(&h, &["router", "--listen", "127.0.0.1:0"]);
        let host = format!("web.localhost:{}", router.port);
        let a = get(router.port, &host);
        assert!(a.starts_with("HTTP/1.1 200 OK"), "{a}");
        assert!(a.contains(&format!("host={host}")), "{a}");
        let a = get(router.port, &format!("8080.web.localhost:{}", router.port));
        assert!(a.contains("hello from the guest"), "{a}");
        let a = get(router.port, "nope.localhost");
        assert!(a.starts_with("HTTP/1.1 404"), "{a}");
        assert!(a.contains("no sandbox named \"nope\""), "{a}");
        let a = get(router.port, "9.web.localhost");
        assert!(a.starts_with("HTTP/1.1 502"), "{a}");

        // A stopped sandbox is woken by a request through the router, and answers it; the
        // server process survived the stop.
        h.ok(&["stop", "web"]);
        assert_eq!(h.row("web")["state"], "stopped");
        let start = Instant::now();
        let a = get(router.port, &host);
        eprintln!(
            "router: request to a stopped sandbox answered in {:.2} s",
            start.elapsed().as_secs_f64()
        );
        assert!(a.starts_with("HTTP/1.1 200 OK"), "{a}");
        assert_eq!(h.row("web")["state"], "running");

        // And by a connection through the proxy.
        h.ok(&["stop", "web"]);
        let a = get(proxy.port, "woken");
        assert!(a.contains("host=woken"), "{a}");
        assert_eq!(h.row("web")["state"], "running");

        // An open connection keeps the sandbox from idling (idle timeout 20 s): half a request
        // through the proxy, then well past the timeout, then the rest; answered, never stopped.
        let mut held = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        held.write_all(b"GET /held HTTP/1.1\r\n").unwrap();
        std::thread::sleep(Duration::from_secs(40));
        assert_eq!(
            h.row("web")["state"],
            "running",
            "idled under an open connection"
        );
        held.write_all(b"Host: held\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut a = String::new();
        held.read_to_string(&mut a).unwrap();
        assert!(a.contains("path=/held host=held"), "{a}");
        drop(held);
        // Released, it idles.
        let deadline = Instant::now() + Duration::from_secs(180);
        while h.row("web")["state"] != "stopped" {
            assert!(
                Instant::now() < deadline,
                "never idled after the connection closed"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}

/// `cairn serve --router ADDR`: the long-running manager routes by Host header too, and a
/// request to a stopped sandbox wakes it and is answered.
#[test]
fn serve_router_reaches_a_guest_server_and_wakes_it() {
    let name = "serve_router_reaches_a_guest_server_and_wakes_it";
    if !kvm_available(name) {
        return;
    }
    retry_on_guest_flake(name, || {
        let h = CairnHome::new();
        h.create("app", &["--mem", "256", "--disk", "1"]);
        start_server(&h, "app", 8080);

        let serve = Daemon::start(&h, &["serve", "--router", "127.0.0.1:0"]);
        let host = format!("app.localhost:{}", serve.port);
        let a = get(serve.port, &host);
        assert!(a.starts_with("HTTP/1.1 200 OK"), "{a}");
        assert!(a.contains(&format!("host={host}")), "{a}");
        let a = get(serve.port, "nope.localhost");
        assert!(a.starts_with("HTTP/1.1 404"), "{a}");
        let a = get(serve.port, "example.com");
        assert!(a.starts_with("HTTP/1.1 400"), "{a}");
        // The API is still there on its socket, next to the router.
        assert!(h.home.path().join("serve.sock").exists());

        h.ok(&["stop", "app"]);
        assert_eq!(h.row("app")["state"], "stopped");
        let start = Instant::now();
        let a = get(serve.port, &host);
        eprintln!(
            "serve router: request to a stopped sandbox answered in {:.2} s",
            start.elapsed().as_secs_f64()
        );
        assert!(a.starts_with("HTTP/1.1 200 OK"), "{a}");
        assert!(a.contains("hello from the guest"), "{a}");
        assert_eq!(h.row("app")["state"], "running");
    });
}
