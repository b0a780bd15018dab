//! Ports in (`cairn proxy`, `cairn router`) for tests and benches: a tiny perl HTTP server
//! for the guest, the two commands run in the background, and a raw HTTP/1.1 GET.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::sandbox::CairnHome;

/// Answers every request with one line naming the path and Host it saw, then closes; touches
/// `/root/srv.up` once it listens. Only the core `Socket` module: perl's start-up (module
/// loading is file I/O, guest kernel work) is slow on emulated KVM.
pub const SERVER: &str = r#"use Socket;
$SIG{PIPE} = "IGNORE";
socket(S, PF_INET, SOCK_STREAM, 0) or die "socket: $!";
setsockopt(S, SOL_SOCKET, SO_REUSEADDR, pack("l", 1)) or die "setsockopt: $!";
bind(S, sockaddr_in($ARGV[0], inet_aton("127.0.0.1"))) or die "bind: $!";
listen(S, 16) or die "listen: $!";
open(my $up, ">", "/root/srv.up") and close($up);
while (accept(C, S)) {
  my $req = "";
  while (my $l = <C>) { $req .= $l; last if $l eq "\r\n" || $l eq "\n"; }
  my ($path) = $req =~ m{^\S+ (\S+)};
  my $host = $req =~ /^Host: *(\S+)/mi ? $1 : "-";
  my $body = "hello from the guest: path=$path host=$host\n";
  syswrite(C, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " . length($body) . "\r\nConnection: close\r\n\r\n$body");
  close(C);
}
"#;

/// A `cairn proxy` or `cairn router` running in the background; killed on drop.
pub struct Daemon {
    child: Child,
    /// The local port it listens on.
    pub port: u16,
}

impl Daemon {
    /// Starts `cairn ARGS` and reads the port from its first line (`...127.0.0.1:PORT...`).
    pub fn start(h: &CairnHome, args: &[&str]) -> Daemon {
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
pub fn get(port: u16, host: &str) -> String {
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
pub fn get_until_up(port: u16, host: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(300);
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

/// Installs [`SERVER`] in sandbox `name`, starts it on guest port `port` and waits (up to
/// 5 minutes) until it listens.
pub fn start_server(h: &CairnHome, name: &str, port: u16) {
    h.sh(
        name,
        &format!(
            "rm -f /root/srv.up; cat > /root/srv.pl <<'EOF'\n{SERVER}EOF\n\
             perl /root/srv.pl {port} </dev/null >/root/srv.log 2>&1 &\n\
             i=0; while [ ! -e /root/srv.up ]; do \
             i=$((i+1)); [ $i -lt 300 ] || {{ cat /root/srv.log; exit 1; }}; sleep 1; done"
        ),
    );
}
