//! Driving the `cairn` CLI end to end: a private `CAIRN_HOME`, the binary run as a user would,
//! and the retries this project's emulated-KVM hosts need (a guest process, the agent included,
//! sometimes dies at its first thread-local access there; see [`crate::linux::ATTEMPTS`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::process::workspace_bin;

/// A `CAIRN_HOME` of its own; every sandbox in it is removed on drop.
pub struct CairnHome {
    /// The home directory (short, under `/tmp`, so socket paths fit `sockaddr_un`).
    pub home: tempfile::TempDir,
    cairn: PathBuf,
    agent: PathBuf,
    /// Print each command and its output on stderr.
    pub verbose: bool,
    /// Run `cairn` in this named network namespace (`nsenter --net`, no new mount namespace,
    /// so the namespaces cairn makes stay visible to later calls).
    pub netns: Option<String>,
    /// Extra environment for every `cairn` run (e.g. a store's `CAIRN_STORE` and `AWS_*`).
    pub env: Vec<(String, String)>,
    /// Run `cairn` through this program (`WRAPPER CAIRN ARGS`), e.g. one that drops to
    /// another user (tests/tests/sandbox_rootless.rs).
    pub wrapper: Option<PathBuf>,
}

impl CairnHome {
    /// A new, empty home. Builds the static guest agent if needed (cached by cargo).
    pub fn new() -> Self {
        let agent = match std::env::var_os("CAIRN_AGENT_BIN") {
            Some(p) => PathBuf::from(p),
            None => crate::linux::agent_binary(),
        };
        CairnHome {
            home: tempfile::Builder::new()
                .prefix("cairn-t")
                .tempdir_in("/tmp")
                .unwrap(),
            cairn: workspace_bin("cairn"),
            agent,
            verbose: true,
            netns: None,
            env: Vec::new(),
            wrapper: None,
        }
    }

    /// The `cairn` command with this home.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match (&self.wrapper, &self.netns) {
            (Some(w), _) => {
                let mut c = Command::new(w);
                c.arg(&self.cairn);
                c
            }
            (None, Some(ns)) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{ns}")).arg(&self.cairn);
                c
            }
            (None, None) => Command::new(&self.cairn),
        };
        cmd.args(args)
            .env("CAIRN_HOME", self.home.path())
            .env("CAIRN_AGENT_BIN", &self.agent)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// Run `cairn ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        let start = Instant::now();
        let out = self.command(args).output().unwrap();
        if self.verbose {
            eprintln!(
                "$ cairn {} -> {:?} in {:.2} s\n{}{}",
                args.join(" "),
                out.status.code(),
                start.elapsed().as_secs_f64(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }

    /// Run `cairn ARGS`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cairn {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `cairn create NAME ARGS`, tried again (up to 3 times) when the guest crashed at boot
    /// (cairn reports the kernel's `segfault at 0` line at once). Returns the time it took.
    pub fn create(&self, name: &str, args: &[&str]) -> Duration {
        let mut argv = vec!["create", name, "--boot-timeout", "400"];
        argv.extend_from_slice(args);
        for attempt in 1.. {
            let start = Instant::now();
            let out = self.run(&argv);
            if out.status.success() {
                return start.elapsed();
            }
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                attempt < 3 && (err.contains("segfault at") || err.contains("agent crashed")),
                "cairn create failed: {err}"
            );
        }
        unreachable!()
    }

    /// `cairn exec NAME -- CMD`: (exit code, stdout), run again when the guest process died of
    /// SIGSEGV at start (139) or the agent dropped the connection (commands must be
    /// idempotent).
    pub fn exec(&self, name: &str, cmd: &[&str]) -> (i32, String) {
        let mut args = vec!["exec", name, "--"];
        args.extend_from_slice(cmd);
        for _ in 0..crate::linux::ATTEMPTS {
            let out = self.run(&args);
            let code = out.status.code().unwrap_or(-1);
            let err = String::from_utf8_lossy(&out.stderr);
            let dropped = code == 125
                && (err.contains("closed the connection") || err.contains("agent crashed"));
            if code != 139 && !dropped {
                return (code, String::from_utf8_lossy(&out.stdout).into_owned());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("{cmd:?} in {name} kept dying of SIGSEGV or losing the agent");
    }

    /// `sh -c SCRIPT` in `name`, which must exit 0; its stdout.
    pub fn sh(&self, name: &str, script: &str) -> String {
        let (code, out) = self.exec(name, &["sh", "-c", script]);
        assert_eq!(code, 0, "{script:?} in {name} exited {code}: {out}");
        out
    }

    /// A lifecycle command (`start`, `checkpoint restore`, `fork`) that restores a guest, tried
    /// again when the restored guest's agent crashed; `retry` is what to run after a failure
    /// (`fork` leaves a stopped sandbox behind, which `start` then wakes).
    pub fn restore_like(&self, args: &[&str], retry: &[&str]) {
        let mut argv = args;
        for attempt in 1..=crate::linux::ATTEMPTS {
            let out = self.run(argv);
            if out.status.success() {
                return;
            }
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                attempt < crate::linux::ATTEMPTS
                    && (err.contains("segfault")
                        || err.contains("did not answer")
                        || err.contains("exited before the agent")),
                "cairn {argv:?} failed: {err}"
            );
            argv = retry;
        }
    }

    /// `cairn ls --json` (not echoed: tests poll it).
    pub fn ls(&self) -> serde_json::Value {
        let out = self.command(&["ls", "--json"]).output().unwrap();
        assert!(out.status.success(), "cairn ls failed");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The `cairn ls --json` row of `name`.
    pub fn row(&self, name: &str) -> serde_json::Value {
        self.ls()
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no sandbox {name} in `cairn ls`"))
    }

    /// The sandbox directory of `name`.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.home.path().join("sandboxes").join(name)
    }

    /// Disk blocks used by each path, counted the way `du` counts one invocation: a file with
    /// several links counts once, for the first path that holds it. Bytes, in `paths`' order.
    pub fn du(&self, paths: &[&Path]) -> Vec<u64> {
        let out = Command::new("du")
            .args(["-s", "-B1"])
            .args(paths)
            .output()
            .unwrap();
        assert!(out.status.success(), "du failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
            .collect()
    }

    /// The last `n` lines of `name`'s console log.
    pub fn console_tail(&self, name: &str, n: usize) -> String {
        let text = std::fs::read_to_string(self.dir(name).join("console.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Default for CairnHome {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for CairnHome {
    fn drop(&mut self) {
        let names: Vec<String> = self
            .command(&["ls", "--json"])
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r["name"].as_str().map(str::to_string))
            .collect();
        for n in names {
            if std::thread::panicking() {
                eprintln!("--- {n}: console tail ---\n{}", self.console_tail(&n, 30));
            }
            let _ = self.command(&["rm", &n]).output();
        }
    }
}
