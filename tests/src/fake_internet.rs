//! A fake internet for network tests, on this machine only: a namespace `net-t<pid>-h` plays
//! the host cairn runs on, and `net-t<pid>-i` the internet behind its default route, with an
//! HTTP server (python3) and dnsmasq on 198.18.77.0/24 (benchmarking space, outside the
//! sandbox pool): `allowed.test` is 198.18.77.80, `denied.test` 198.18.77.81, the resolver
//! 198.18.77.53. No packet leaves these namespaces. Root only; needs nftables, dnsmasq
//! (scripts/deps). [`Ticker`] adds long-lived connections, to see a live policy change cut one.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// A perl script for the guest: prints the rcode of an A query for ARGV[0] sent to ARGV[1]:53.
pub const RCODE: &str = r#"use IO::Socket::INET;
my $s = IO::Socket::INET->new(PeerAddr => "$ARGV[1]:53", Proto => "udp") or die "socket: $@\n";
my $q = pack("nnnnnn", 0x1234, 0x0100, 1, 0, 0, 0) . join("", map { chr(length) . $_ } split /\./, $ARGV[0]) . "\0" . pack("nn", 1, 1);
$s->send($q); my $r; $s->recv($r, 512); print "rcode=", unpack("n", substr($r, 2, 2)) & 15, "\n";
"#;

/// A perl script for the guest: for each name in ARGV, a process that connects to NAME:7000
/// (a [`Ticker`]), writes its pid to /root/echo.pids and echoes every line it reads.
pub const ECHO_CLIENT: &str = r#"use IO::Socket::INET;
for my $n (@ARGV) {
  defined(my $pid = fork) or die "fork: $!\n"; next if $pid;
  my $s = IO::Socket::INET->new(PeerAddr => $n, PeerPort => 7000, Timeout => 10) or die "connect $n: $@\n";
  open(my $f, ">>", "/root/echo.pids"); print $f "$$\n"; close $f;
  $s->autoflush(1); while (my $l = <$s>) { print $s $l } exit 0;
}
"#;

/// The ticker server: per connection, a line every 0.2 s; prints `LOCAL open`, `LOCAL echo N`
/// (N lines echoed so far, when it grows) and `LOCAL closed WHY` (LOCAL: the address the
/// client reached). Each report is one write under a lock: `print(a, b)` writes its pieces one
/// by one, and two connections' threads interleaved them (`198.18.77.80198.18.77.81 echo 7`,
/// ` closed ConnectionResetError`), which once hid a cut connection's report from the test.
const TICKER: &str = r#"import select, socket, sys, threading, time
out = threading.Lock()
def report(*words):
    line = " ".join(str(w) for w in words) + "\n"
    with out:
        sys.stdout.write(line); sys.stdout.flush()
def serve(c):
    local = c.getsockname()[0]; n = 0; i = 0
    report(local, "open")
    try:
        while True:
            i += 1; c.sendall(b"tick %d\n" % i)
            if select.select([c], [], [], 0.2)[0]:
                b = c.recv(4096)
                if not b: raise EOFError("end of stream")
                n += b.count(b"\n"); report(local, "echo", n)
    except Exception as e:
        report(local, "closed", type(e).__name__)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000)); s.listen()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// A server in the fake internet on port 7000 of every address that keeps each connection
/// open, sending a line every 0.2 s and counting the lines echoed back; its reports arrive
/// as lines (see [`TICKER`]). Ended on drop.
pub struct Ticker {
    child: Child,
    lines: Receiver<String>,
}

impl Ticker {
    /// Starts it in `inet`'s internet namespace.
    pub fn start(inet: &FakeInternet) -> Ticker {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &inet.inet, "python3", "-c", TICKER])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                eprintln!("ticker: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        Ticker { child, lines }
    }

    /// The first report matching `want` within `limit` (earlier ones are consumed); None if
    /// none came.
    pub fn wait_for(&self, limit: Duration, mut want: impl FnMut(&str) -> bool) -> Option<String> {
        let end = Instant::now() + limit;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(l) if want(&l) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `sh -ec CMD`; fails the test if it fails.
pub fn sh(cmd: &str) {
    let out = Command::new("sh").args(["-ec", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The two namespaces and the servers in them; all removed on drop.
pub struct FakeInternet {
    /// The namespace that plays the host (run cairn in it: `CairnHome::netns`).
    pub host: String,
    /// The namespace that plays the internet.
    pub inet: String,
    servers: Vec<Child>,
    dir: tempfile::TempDir,
}

impl FakeInternet {
    /// Makes both namespaces and starts the servers.
    pub fn up() -> FakeInternet {
        let tag = format!("net-t{}", std::process::id());
        let (host, inet) = (format!("{tag}-h"), format!("{tag}-i"));
        let dir = tempfile::tempdir().unwrap();
        let mut me = FakeInternet {
            host: host.clone(),
            inet: inet.clone(),
            servers: Vec::new(),
            dir,
        };
        sh(&format!(
            "ip netns add {host}; ip netns add {inet}
             ip link add {tag}a netns {host} type veth peer name {tag}b netns {inet}
             ip -n {host} addr add 198.18.0.1/24 dev {tag}a; ip -n {host} link set {tag}a up
             ip -n {host} link set lo up; ip -n {host} route add default via 198.18.0.2
             ip -n {inet} addr add 198.18.0.2/24 dev {tag}b; ip -n {inet} link set {tag}b up
             ip -n {inet} link set lo up
             for a in 198.18.77.80 198.18.77.81 198.18.77.53 169.254.169.254; do ip -n {inet} addr add $a/32 dev lo; done"
        ));
        let www = me.dir.path().join("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("index.html"), "hello from the fake internet\n").unwrap();
        let http = Command::new("ip")
            .args(["netns", "exec", &inet, "python3", "-m", "http.server"])
            .args(["--bind", "0.0.0.0", "--directory"])
            .arg(&www)
            .arg("80")
            .spawn()
            .unwrap();
        me.servers.push(http);
        // A service of the host's own (where cairn runs), which no sandbox may reach.
        let host_http = Command::new("ip")
            .args(["netns", "exec", &host, "python3", "-m", "http.server"])
            .args(["--bind", "0.0.0.0", "--directory"])
            .arg(&www)
            .arg("80")
            .spawn()
            .unwrap();
        me.servers.push(host_http);
        let dns = Command::new("ip")
            .args(["netns", "exec", &inet, "dnsmasq", "--keep-in-foreground"])
            .args(["--no-resolv", "--no-hosts", "--bind-interfaces"])
            .args(["--listen-address=198.18.77.53", "--pid-file="])
            .args(["--host-record=allowed.test,198.18.77.80"])
            .args(["--host-record=denied.test,198.18.77.81"])
            .spawn()
            .unwrap();
        me.servers.push(dns);
        std::thread::sleep(Duration::from_millis(500));
        me
    }
}

impl Drop for FakeInternet {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.host])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.inet])
            .status();
    }
}

/// Runs ARGS in the fake host's namespace; its stdout.
pub fn in_host(inet: &FakeInternet, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", inet.host))
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
