//! Start-up figures with the anchors' tiny guest (`tests/guests/ticker64.S`).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_tests::guests;

use crate::util::{figure, vm_config, vmm_bin, Figure, Options};

fn config(dir: &std::path::Path, mem_mib: usize) -> std::path::PathBuf {
    vm_config(dir, guests::TICKER64, mem_mib, false, None).unwrap()
}

/// Process start (`--no-api --config-file`) to the guest's first serial byte.
pub fn start_to_first_byte(opts: &Options) -> Vec<Figure> {
    let dir = tempfile::tempdir().unwrap();
    let mut out = vec![];
    for &mem in &opts.mem {
        let cfg = config(dir.path(), mem);
        let mut samples = vec![];
        for _ in 0..opts.runs {
            let start = Instant::now();
            let mut child = Command::new(vmm_bin())
                .args(["--no-api", "--config-file"])
                .arg(&cfg)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            let mut first = [0u8; 1];
            child
                .stdout
                .as_mut()
                .unwrap()
                .read_exact(&mut first)
                .unwrap();
            samples.push(start.elapsed().as_secs_f64() * 1e3);
            let _ = child.kill();
            let _ = child.wait();
        }
        out.push(figure(
            format!("process start -> first guest serial byte, {mem} MiB"),
            samples,
            "ms",
        ));
    }
    out
}

fn smaps_rss_kib(pid: u32, guest_bytes: u64) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let (mut total, mut guest) = (0u64, 0u64);
    let mut current_size = 0u64;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            let mut range = first.split('-');
            let a = u64::from_str_radix(range.next().unwrap(), 16).unwrap_or(0);
            let b = u64::from_str_radix(range.next().unwrap_or("0"), 16).unwrap_or(0);
            current_size = b - a;
        } else if let Some(rest) = line.strip_prefix("Rss:") {
            let kib: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            total += kib;
            if current_size == guest_bytes {
                guest += kib;
            }
        }
    }
    (total, guest)
}

/// VMM memory overhead: RSS of everything but the guest's RAM mapping, once the guest has
/// touched all its memory.
pub fn memory_overhead(opts: &Options) -> Vec<Figure> {
    let dir = tempfile::tempdir().unwrap();
    let mut out = vec![];
    for &mem in &opts.mem {
        let cfg = config(dir.path(), mem);
        let mut samples = vec![];
        for _ in 0..opts.runs.min(3) {
            let mut child = Command::new(vmm_bin())
                .args(["--no-api", "--config-file"])
                .arg(&cfg)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.as_mut().unwrap();
            // Wait for "S\nT\n.": all memory touched, first pass of the loop done.
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut b = [0u8; 1];
            while !String::from_utf8_lossy(&seen).contains("T\n.") && Instant::now() < deadline {
                if stdout.read(&mut b).unwrap() == 0 {
                    break;
                }
                seen.push(b[0]);
            }
            let (total, guest) = smaps_rss_kib(child.id(), (mem as u64) << 20);
            samples.push((total - guest) as f64 / 1024.0);
            let _ = child.kill();
            let _ = child.wait();
        }
        out.push(figure(
            format!("VMM overhead (RSS minus guest RAM), {mem} MiB guest"),
            samples,
            "MiB",
        ));
    }
    out
}
