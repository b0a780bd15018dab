//! Sequential virtio-blk throughput inside the Linux guest (1 MiB reads and writes with the
//! guest's own `dd`), cairn side by side with QEMU microvm on the same kernel and initramfs.
//! Commands go in through the serial console, so both VMMs run exactly the same guest work.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{
    figure, guest_build, linux_config, qemu_microvm, vmm_bin, write_vm_config, Options, Outcome,
};
use cairn_vmm_api::config::{DriveConfig, VmConfig};

/// MiB moved per `dd` (the guest kernel is emulated on the project's host: keep it small).
const MIB: u32 = 8;

/// A VMM child whose serial console (stdin/stdout) the bench drives; killed on drop.
pub(crate) struct Console {
    child: std::process::Child,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Console {
    pub(crate) fn spawn(mut cmd: Command) -> Result<Self, String> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{cmd:?}: {e}"))?;
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut stdout = child.stdout.take().ok_or("no stdout")?;
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Ok(Self { child, out })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    pub(crate) fn wait_for(&self, marker: &str, timeout: Duration) -> Result<String, String> {
        let start = Instant::now();
        loop {
            let t = self.text();
            if t.contains(marker) {
                return Ok(t);
            }
            if start.elapsed() > timeout {
                return Err(format!("no {marker:?} within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn send(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.child.stdin.as_mut().ok_or("no stdin")?;
        stdin
            .write_all(line.as_bytes())
            .map_err(|e| e.to_string())?;
        stdin.flush().map_err(|e| e.to_string())
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// MiB/s from `busybox time`'s `real\t0m 2.34s` line before `marker` (busybox `dd` here does not
/// print a rate). The time covers the `dd` process from start to exit, its exec included (about
/// 1.5 s of emulated kernel work on the project's host), the same for both VMMs.
fn dd_rate(text: &str, marker: &str) -> Option<f64> {
    let before = &text[..text.rfind(marker)?];
    let line = before
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("real"))?;
    let spec = line.trim_start().trim_start_matches("real").trim();
    let (min, sec) = spec.split_once('m')?;
    let secs = min.trim().parse::<f64>().ok()? * 60.0
        + sec.trim().trim_end_matches('s').parse::<f64>().ok()?;
    (secs > 0.0).then(|| f64::from(MIB) / secs)
}

fn run_dd(mut console: Console) -> Result<(f64, f64), String> {
    console.wait_for("cairn-guest-ready", Duration::from_secs(300))?;
    std::thread::sleep(Duration::from_secs(1));
    // The markers are computed by the shell, so the echoed command line never matches them.
    let read_cmd =
        format!("busybox time dd if=/dev/vda of=/dev/null bs=1M count={MIB} 2>&1; echo BENCH-$((1+1))-READ\n");
    console.send(&read_cmd)?;
    let t = console.wait_for("BENCH-2-READ", Duration::from_secs(600))?;
    let read = dd_rate(&t, "BENCH-2-READ").ok_or_else(|| format!("no dd figure in: {t}"))?;
    let write_cmd =
        format!("busybox time dd if=/dev/zero of=/dev/vda bs=1M count={MIB} conv=fsync 2>&1; echo BENCH-$((1+1))-WRITE\n");
    console.send(&write_cmd)?;
    let t = console.wait_for("BENCH-2-WRITE", Duration::from_secs(600))?;
    let write = dd_rate(&t, "BENCH-2-WRITE").ok_or_else(|| format!("no dd figure in: {t}"))?;
    Ok((read, write))
}

/// `cairn-bench block [--runs N]` (default 1 run per VMM: each boots Linux).
pub fn block(opts: &Options) -> Outcome {
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
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let cfg = dir.path().join("vm.json");
    let config = VmConfig {
        drives: vec![DriveConfig {
            is_read_only: Some(false),
            ..DriveConfig::new("bench", disk.clone(), false)
        }],
        ..linux_config(&kernel, &initrd, &args)
    };
    write_vm_config(&cfg, &config).unwrap();
    let runs = opts.runs.clamp(1, 3);
    let mut collect = |name: &str, make: &dyn Fn() -> Result<Console, String>| {
        let (mut reads, mut writes) = (vec![], vec![]);
        for _ in 0..runs {
            match make().and_then(run_dd) {
                Ok((r, w)) => {
                    reads.push(r);
                    writes.push(w);
                }
                Err(e) => out.failures.push(format!("{name}: {e}")),
            }
        }
        if !reads.is_empty() {
            out.figures.push(figure(
                format!("virtio-blk sequential 1 MiB reads, {name}"),
                reads,
                "MiB/s",
            ));
            out.figures.push(figure(
                format!("virtio-blk sequential 1 MiB writes (fsync), {name}"),
                writes,
                "MiB/s",
            ));
        }
    };
    collect("cairn-vmm", &|| {
        let mut cmd = Command::new(vmm_bin());
        cmd.args(["--no-api", "--config-file"]).arg(&cfg);
        Console::spawn(cmd)
    });
    collect("QEMU microvm", &|| {
        let mut cmd = qemu_microvm(
            std::path::Path::new("qemu-system-x86_64"),
            &kernel,
            &initrd,
            &args,
        );
        cmd.arg("-drive")
            .arg(format!(
                "id=d0,file={},format=raw,if=none,cache=none",
                disk.display()
            ))
            .args(["-device", "virtio-blk-device,drive=d0"]);
        Console::spawn(cmd)
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_busybox_dd_output() {
        let t = "8+0 records in\n8+0 records out\nreal\t0m 2.00s\nuser\t0m 0.00s\nsys\t0m 1.90s\nBENCH-2-READ\n";
        let r = dd_rate(t, "BENCH-2-READ").unwrap();
        assert!((r - f64::from(MIB) / 2.0).abs() < 1e-9);
        assert_eq!(dd_rate("nothing", "BENCH-2-READ"), None);
    }
}
