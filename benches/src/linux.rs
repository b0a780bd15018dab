//! Process start → the Linux guest's `cairn-guest-ready` marker, cairn side by side with QEMU
//! (`-M microvm`, from Debian's qemu-system-x86) on the same kernel, initramfs and command line
//! from `guest/build`.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{
    figure, guest_build, linux_config, qemu_microvm, vmm_bin, write_vm_config, Options, Outcome,
};

const MARKER: &[u8] = b"cairn-guest-ready";

/// Time from spawning `cmd` to `MARKER` on its stdout (the child is killed afterwards).
fn time_to_marker(mut cmd: Command, timeout: Duration) -> Result<f64, String> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let result = loop {
        if start.elapsed() > timeout {
            break Err(format!("no marker within {timeout:?}"));
        }
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break Err("the guest's output ended before the marker".into()),
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(MARKER.len()).any(|w| w == MARKER) {
                    break Ok(start.elapsed().as_secs_f64());
                }
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// `cairn-bench linux`: cairn and QEMU, `--runs` boots each (default 3), 256 MiB, 1 vCPU.
pub fn linux(opts: &Options) -> Outcome {
    let mut out = Outcome {
        figures: vec![],
        failures: vec![],
    };
    let (kernel, initrd, args) = match guest_build(&[]) {
        Ok(g) => g,
        Err(e) => {
            out.failures.push(e);
            return out;
        }
    };
    let runs = opts.runs.min(5);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vm.json");
    write_vm_config(&cfg, &linux_config(&kernel, &initrd, &args)).unwrap();
    let timeout = Duration::from_secs(300);
    let mut add = |name: &str, samples: Vec<Result<f64, String>>| {
        let (ok, errs): (Vec<_>, Vec<_>) = samples.into_iter().partition(Result::is_ok);
        out.failures.extend(
            errs.into_iter()
                .filter_map(Result::err)
                .map(|e| format!("{name}: {e}")),
        );
        let ok: Vec<f64> = ok.into_iter().filter_map(Result::ok).collect();
        if !ok.is_empty() {
            out.figures.push(figure(name.to_string(), ok, "s"));
        }
    };
    let cairn: Vec<_> = (0..runs)
        .map(|_| {
            let mut cmd = Command::new(vmm_bin());
            cmd.args(["--no-api", "--config-file"]).arg(&cfg);
            time_to_marker(cmd, timeout)
        })
        .collect();
    add(
        "Linux: process start -> cairn-guest-ready, cairn-vmm",
        cairn,
    );
    let qemu = which("qemu-system-x86_64");
    match qemu {
        None => out
            .failures
            .push("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)".into()),
        Some(q) => {
            let samples: Vec<_> = (0..runs)
                .map(|_| {
                    let cmd = qemu_microvm(&q, &kernel, &initrd, &args);
                    time_to_marker(cmd, timeout)
                })
                .collect();
            add(
                "Linux: process start -> cairn-guest-ready, QEMU microvm",
                samples,
            );
        }
    }
    out
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.exists())
}
