//! Ports in, end to end on the Linux guest: a tiny perl HTTP server in the guest, reached by
//! `cairn proxy` and by `cairn router` (Host header), and the router waking a stopped sandbox.
//! Needs `cairn` and `cairn-vmm` built (`cargo build --workspace --bins`) and /dev/kvm.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cairn_tests::kvm_available;
use cairn_tests::linux::retry_on_guest_flake;
use cairn_tests::sandbox::CairnHome;

/// Answers every request with one line naming the path and Host it saw, then closes.
const SERVER: &str = r#"use IO::Socket::INET;
$SIG{PIPE} = "IGNORE";
my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => $ARGV[0], Listen => 16, ReuseAddr => 1) or die "listen: $!";
while (my $c = $s->accept) {
  my $req = "";
  while (my $l = <$c>) { $req .= $l; last if $l eq "\r\n" || $l eq "\n"; }
  my ($path) = $req =~ m{^\S+ (\S+)};
  my $host = $req =~ /^Host: *(\S+)/mi ? $1 : "-";
  my $body = "hello from the guest: path=$path host=$host\n";
  print $c "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " . length($body) . "\r\nConnection: close\r\n\r\n$body";
  close $c;
}
"#;

/// A `cairn proxy` or `cairn router` running in the background; killed on drop.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    /// Starts `cairn ARGS` and reads the port from its first line (`...127.0.0.1:PORT...`).
    fn start(h: &CairnHome, args: &[&str]) -> Daemon {
        let mut child = h
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        eprintln!("$ cairn {}: {line}", args.join(" "));
        let port = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|r| {
                r.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|p| p.parse().ok())
            })
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Daemon { child, port }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 GET to 127.0.0.1:`port` with `host`; the whole answer ("" if the connection
/// was closed without one).
fn get(port: u16, host: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// GETs until the guest server answers (it may still be starting).
fn get_until_up(port: u16, host: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = get(port, host);
        if a.contains("hello from the guest") {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "guest server never answered: {a:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

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
            &["--mem", "256", "--disk", "1", "--idle-timeout", "0"],
        );
        h.sh(
            "web",
            &format!("cat > /root/srv.pl <<'EOF'\n{SERVER}EOF\nperl -c /root/srv.pl"),
        );
        h.sh(
            "web",
            "perl /root/srv.pl 8080 </dev/null >/root/srv.log 2>&1 & echo $!",
        );

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
    });
}
