//! A real `cairn serve` for tests: started on a [`CairnHome`]'s socket, asked with `curl
//! --unix-socket` (the token is not needed there), stopped with SIGTERM (a clean stop) or
//! killed on drop. Also finds the `cairn __idle-watch` processes of a home.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sandbox::CairnHome;

/// A `cairn serve` running in the background.
pub struct Serve {
    child: Option<Child>,
    /// Its Unix socket.
    pub socket: PathBuf,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Serve {
    /// Starts `cairn serve ARGS` on `h` and waits (up to a minute) until its socket answers.
    pub fn start(h: &CairnHome, args: &[&str]) -> Serve {
        let log = h.home.path().join("serve.log");
        let socket = h.home.path().join("serve.sock");
        let mut argv = vec!["serve"];
        argv.extend_from_slice(args);
        let child = h
            .command(&argv)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let s = Serve {
            child: Some(child),
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !s.request("GET", "/v1/health", None).0.eq(&200) {
            assert!(
                Instant::now() < deadline,
                "cairn serve never answered: {}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        s
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The children of this daemon that have ended but were not reaped (zombies), as
    /// `/proc/PID/stat` lines.
    pub fn zombie_children(&self) -> Vec<String> {
        let me = self.pid().to_string();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|stat| {
                // The state and the parent's pid follow the parenthesised command name.
                let mut rest = stat
                    .rsplit_once(')')
                    .map(|(_, r)| r.split_whitespace())
                    .into_iter()
                    .flatten();
                rest.next() == Some("Z") && rest.next() == Some(me.as_str())
            })
            .collect()
    }

    /// Its stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One request over the socket: (HTTP status, body); status 0 when nothing answered.
    pub fn request(&self, method: &str, path: &str, json: Option<&str>) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "600",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ])
        .arg("--unix-socket")
        .arg(&self.socket)
        .args(["-X", method]);
        if let Some(body) = json {
            cmd.args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ]);
        }
        let out = cmd.arg(format!("http://cairn{path}")).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// Stops it with SIGTERM and waits for it to exit.
    pub fn stop(mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid; no memory is passed.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let status = c.wait().unwrap();
            assert!(
                status.success(),
                "cairn serve: {status}: {}",
                self.log_text()
            );
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The pids of the `cairn __idle-watch NAME` processes working for `h`'s home.
pub fn idle_watchers(h: &CairnHome, name: &str) -> Vec<u32> {
    let home = format!("CAIRN_HOME={}", h.home.path().display());
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if !(args.contains(&&b"__idle-watch"[..]) && args.contains(&name.as_bytes())) {
            continue;
        }
        let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
        if environ.split(|&b| b == 0).any(|v| v == home.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}
