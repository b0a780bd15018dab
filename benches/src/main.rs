//! `cairn-bench`: cairn's benchmark harness. Every figure is measured from outside, on the
//! `cairn-vmm` binary, the way a user would see it, and printed as a table (and as JSON with
//! `--json`). Numbers are medians over `--runs` runs; the load average is printed with them.
//!
//! ```text
//! cairn-bench boot       [--runs N] [--mem MiB,...]  process start -> first guest serial byte
//! cairn-bench memory     [--mem MiB,...]             VMM memory overhead (RSS minus guest pages)
//! cairn-bench pause      [--runs N] [--mem MiB,...]  PATCH /vm Paused / Resumed round trips
//! cairn-bench snapshot   [--runs N] [--dir D,...]    Full and Diff /snapshot/create
//! cairn-bench restore    [--runs N] [--dir D,...]    process start -> /snapshot/load, -> running
//!                        [--no-cold]                 (cold page cache variant on disks, as root)
//! cairn-bench checkpoint [--runs N] [--dir D,...]    PUT /checkpoints (incremental), restore
//!                        [--drive MiB]               (with a drive: each checkpoint freezes a disk delta)
//! cairn-bench linux      [--runs N]                  Linux boot to ready marker, cairn vs QEMU
//! cairn-bench agent      [--runs N]                  guest agent: exec `true`, put/get MiB/s
//! cairn-bench block      [--runs N]                  virtio-blk 1 MiB sequential MiB/s, cairn vs QEMU
//! cairn-bench sandbox    [--runs N]                  the `cairn` CLI: create, warm exec, wake, fork
//! cairn-bench standby    [--runs N]                  sandbox wake with and without its standby VMM,
//!                                                    alternating pairs; the restore part alone; RSS
//! cairn-bench api        [--runs N]                  `cairn serve`: added exec latency, concurrent execs
//! cairn-bench ports      [--runs N]                  `cairn proxy` / `cairn router` requests, router wake
//! cairn-bench network    [--runs N]                  guest -> host TCP MiB/s through the sandbox network (root)
//! cairn-bench store      [--runs N]                  the S3 store: dedup of forks and checkpoints,
//!                                                    restore on a second host, push/pull MiB/s
//! cairn-bench vs         [--vs FC] [--runs N] [--mem MiB,...] [--dir D,...]
//!                                                    cairn-vmm and Firecracker in alternating pairs:
//!                                                    process start -> first serial byte
//! cairn-bench all        ...                         everything above but `linux` and `vs`
//! ```
//!
//! `--dir` (default `/dev/shm`) is where snapshot and checkpoint files go; give several
//! (`--dir /dev/shm,/var/tmp`) to measure each figure in each.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agent;
mod api;
mod block;
mod boot;
mod checkpoint;
mod linux;
mod network;
mod paired;
mod ports;
mod sandbox;
mod snapshot;
mod standby;
mod store;
mod util;

use util::Outcome;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprintln!(
            "usage: cairn-bench <boot|memory|pause|snapshot|restore|checkpoint|linux|agent|block|sandbox|standby|api|ports|network|store|all> [--runs N] [--mem MiB,...] [--dir PATH,...] [--no-cold] [--json]"
        );
        std::process::exit(2);
    };
    let opts = util::Options::parse(&args[1..]);
    let load_before = util::loadavg();
    let figures = |f: Vec<util::Figure>| Outcome {
        figures: f,
        failures: vec![],
    };
    let out = match cmd.as_str() {
        "boot" => figures(boot::start_to_first_byte(&opts)),
        "memory" => figures(boot::memory_overhead(&opts)),
        "pause" => snapshot::pause(&opts),
        "snapshot" => snapshot::snapshot(&opts),
        "restore" => snapshot::restore(&opts),
        "checkpoint" => checkpoint::checkpoint(&opts),
        "vs" => paired::vs(&opts),
        "linux" => linux::linux(&opts),
        "agent" => agent::agent(&opts),
        "block" => block::block(&opts),
        "sandbox" => sandbox::sandbox(&opts),
        "standby" => standby::standby(&opts),
        "api" => api::api(&opts),
        "ports" => ports::ports(&opts),
        "network" => network::network(&opts),
        "store" => store::store(&opts),
        "all" => {
            let mut r = figures(boot::start_to_first_byte(&opts));
            r.extend(figures(boot::memory_overhead(&opts)));
            r.extend(snapshot::pause(&opts));
            r.extend(snapshot::snapshot(&opts));
            r.extend(snapshot::restore(&opts));
            r.extend(checkpoint::checkpoint(&opts));
            r
        }
        other => {
            eprintln!("unknown benchmark {other:?}");
            std::process::exit(2);
        }
    };
    util::report_outcome(&out, opts.json, &load_before);
    if !out.failures.is_empty() {
        std::process::exit(1);
    }
}
