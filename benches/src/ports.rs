//! Ports in, as a user times them on the Linux guest: a request through `cairn proxy`
//! (connect + request + whole answer, the sandbox running), the same through `cairn router`,
//! and a request through the router to a stopped sandbox, to the answer's first byte (the wake
//! included). The guest server is the tiny perl one of `cairn_tests::ports`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use cairn_tests::ports::{get, get_until_up, start_server, Daemon};
use cairn_tests::sandbox::CairnHome;

use crate::util::{figure, ms, Options, Outcome};

/// Time to the first byte of the answer to a GET on 127.0.0.1:`port` with `host`, and to its
/// end; fails unless the answer is a 200.
fn timed_get(port: u16, host: &str) -> Result<(f64, f64), String> {
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut first = [0u8; 1];
    s.read_exact(&mut first)
        .map_err(|e| format!("no answer: {e}"))?;
    let t_first = ms(start.elapsed());
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let t_all = ms(start.elapsed());
    let mut answer = vec![first[0]];
    answer.extend(rest);
    let answer = String::from_utf8_lossy(&answer);
    if !answer.starts_with("HTTP/1.1 200") {
        return Err(format!("answer {answer:?}"));
    }
    Ok((t_first, t_all))
}

/// `cairn-bench ports [--runs N]`.
pub fn ports(opts: &Options) -> Outcome {
    let mut out = Outcome::default();
    let mut h = CairnHome::new();
    h.verbose = false;
    // CairnHome's helpers panic on failure (they are test helpers); a failed setup is reported.
    let setup = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        h.create("p", &["--mem", "256", "--disk", "1", "--idle-timeout", "0"]);
        start_server(&h, "p", 8080);
        let proxy = Daemon::start(&h, &["proxy", "p", "8080", "--listen", "127.0.0.1:0"]);
        let router = Daemon::start(&h, &["router", "--listen", "127.0.0.1:0"]);
        get_until_up(proxy.port, "x");
        (proxy, router)
    }));
    let Ok((proxy, router)) = setup else {
        out.failures
            .push("setup (create, guest server, proxy, router) failed".into());
        return out;
    };
    let runs = opts.runs.max(1);
    let host = format!("p.localhost:{}", router.port);
    let (mut via_proxy, mut via_router, mut wake_first, mut wake_all) =
        (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        match timed_get(proxy.port, "x") {
            Ok((_, all)) => via_proxy.push(all),
            Err(e) => out.failures.push(format!("proxy request: {e}")),
        }
        match timed_get(router.port, &host) {
            Ok((_, all)) => via_router.push(all),
            Err(e) => out.failures.push(format!("router request: {e}")),
        }
    }
    for _ in 0..runs {
        let stopped = h
            .command(&["stop", "p"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !stopped {
            out.failures.push("cairn stop p failed".into());
            continue;
        }
        match timed_get(router.port, &host) {
            Ok((first, all)) => {
                wake_first.push(first);
                wake_all.push(all);
            }
            Err(e) => out.failures.push(format!("router wake request: {e}")),
        }
        // A wake that failed (this host's guest flake) must not poison the next run.
        let _ = get(router.port, &host);
    }
    let mut push = |name: &str, samples: Vec<f64>| {
        if !samples.is_empty() {
            out.figures.push(figure(name.into(), samples, "ms"));
        }
    };
    push(
        "ports: `cairn proxy` connect + GET + whole answer (running sandbox)",
        via_proxy,
    );
    push(
        "ports: `cairn router` connect + GET + whole answer (running sandbox)",
        via_router,
    );
    push(
        "ports: `cairn router` GET to a stopped sandbox -> first answer byte",
        wake_first,
    );
    push(
        "ports: `cairn router` GET to a stopped sandbox -> whole answer",
        wake_all,
    );
    drop((proxy, router));
    out
}
