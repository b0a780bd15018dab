//! `cairn df`, `push`, `pull`, `gc`: argument handling and output; the work is in
//! `cairn_sandbox::store_sync` and the `cairn-store` crate (docs/storage.md).

use crate::cli::CliError;
use cairn_sandbox::sandbox::Home;
use cairn_sandbox::store_sync;
use clap::Subcommand;
use std::time::Duration;

/// The store's commands (flattened into the top-level command list).
#[derive(Debug, Subcommand)]
pub enum StoreCmd {
    /// Disk use: logical against stored (deduplicated) bytes, per sandbox and in total.
    Df {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Upload a stopped sandbox to the bucket in CAIRN_STORE (only the chunks it lacks).
    Push {
        /// Sandbox name.
        name: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make the bucket's sandbox NAME here (stopped; `cairn start` restores it).
    Pull {
        /// Sandbox name.
        name: String,
        /// Fetch everything now, instead of memory on first touch and disk blocks on first
        /// read at `cairn start` (the default; docs/storage.md).
        #[arg(long, conflicts_with = "lazy")]
        eager: bool,
        /// The default (accepted for compatibility): fetch memory and disk blocks as the
        /// restored guest needs them.
        #[arg(long)]
        lazy: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The page and block server of a lazily pulled sandbox (started by `cairn start` itself).
    #[command(name = "__page-server", hide = true)]
    PageServer {
        /// Sandbox name.
        name: String,
    },
    /// Delete the bucket's chunks that no pushed sandbox names.
    Gc {
        /// Keep unreferenced chunks younger than this (a push in flight may be about to name them).
        #[arg(long, value_name = "SECS", default_value_t = 3600)]
        grace: u64,
        /// Say what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

fn print_json(v: &impl serde::Serialize) -> Result<(), CliError> {
    println!(
        "{}",
        serde_json::to_string(v).map_err(|e| CliError::Io(std::io::Error::other(e)))?
    );
    Ok(())
}

/// Runs a store command.
pub fn run(home: &Home, cmd: StoreCmd) -> Result<u8, CliError> {
    match cmd {
        StoreCmd::Df { json } => {
            let r = store_sync::df(home)?;
            if json {
                print_json(&r)?;
                return Ok(0);
            }
            println!(
                "{:<24} {:>12} {:>12} {:>7}",
                "NAME", "LOGICAL MiB", "STORED MiB", "DEDUP"
            );
            for s in &r.sandboxes {
                let u = &s.usage;
                println!(
                    "{:<24} {:>12.1} {:>12.1} {:>6.2}x",
                    s.name,
                    mib(u.logical_bytes),
                    mib(u.stored_bytes),
                    u.dedup_ratio
                );
            }
            let t = &r.total;
            println!(
                "{:<24} {:>12.1} {:>12.1} {:>6.2}x",
                "total",
                mib(t.logical_bytes),
                mib(t.stored_bytes),
                t.dedup_ratio
            );
        }
        StoreCmd::Push { name, json } => {
            let r = store_sync::push(home, &name)?;
            if json {
                print_json(&r)?;
                return Ok(0);
            }
            println!(
                "{name}: pushed {} files, {} chunks ({} uploaded, {:.1} MiB) in {:.2} s",
                r.files,
                r.chunks,
                r.chunks_uploaded,
                mib(r.bytes_uploaded),
                r.seconds
            );
        }
        StoreCmd::PageServer { name } => {
            cairn_sandbox::store_lazy::run(home, &name)?;
        }
        StoreCmd::Pull {
            name, eager, json, ..
        } => {
            let r = store_sync::pull_as(home, &name, !eager)?;
            if json {
                print_json(&r)?;
                return Ok(0);
            }
            let served = if eager {
                ""
            } else {
                ", its memory and disk fetched as the guest needs them"
            };
            println!(
                "{name}: pulled {} files, {:.1} MiB fetched ({} chunks, {} from the cache) in {:.2} s; stopped (`cairn start {name}` restores it{served})",
                r.files,
                mib(r.bytes_fetched),
                r.chunks_fetched,
                r.chunks_cached,
                r.seconds
            );
        }
        StoreCmd::Gc {
            grace,
            dry_run,
            json,
        } => {
            let r = store_sync::gc(Duration::from_secs(grace), dry_run)?;
            if json {
                print_json(&r)?;
                return Ok(0);
            }
            println!(
                "gc: {} chunks, {} referenced by {} sandboxes, {} kept (younger than {grace} s), {} {} ({:.1} MiB)",
                r.chunks,
                r.referenced,
                r.manifests,
                r.kept_young,
                r.deleted,
                if dry_run { "would be deleted" } else { "deleted" },
                mib(r.bytes_deleted)
            );
        }
    }
    Ok(0)
}
