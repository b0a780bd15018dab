//! `cairn image ...`: named images (build, import, ls, rm). The work is in
//! `cairn_sandbox::image_store`; this parses and prints.

use std::path::PathBuf;

use cairn_sandbox::image_store::{self, Source, DEFAULT_PACKAGES};
use cairn_sandbox::sandbox::{Home, SandboxError};
use clap::{ArgGroup, Args, Subcommand};

/// `cairn image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Build a Debian 12 image with debootstrap (needs root and a Debian mirror). Without
    /// --packages: the default development image (git, curl, python3, node, build-essential...).
    Build {
        /// Image name.
        name: String,
        /// Packages to include, comma-separated (replaces the default list).
        #[arg(long, value_delimiter = ',')]
        packages: Option<Vec<String>>,
    },
    /// Import a container image: an OCI image layout directory or a `docker save` archive.
    Import(ImportArgs),
    /// List images.
    Ls {
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove an image (and its golden checkpoints; sandboxes made from it keep working).
    Rm {
        /// Image name.
        name: String,
    },
}

/// `cairn image import NAME (--oci-layout DIR | --docker-archive FILE)`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["oci_layout", "docker_archive"])))]
pub struct ImportArgs {
    /// Image name.
    name: String,
    /// An OCI image layout directory (oci-layout, index.json, blobs/).
    #[arg(long, value_name = "DIR")]
    oci_layout: Option<PathBuf>,
    /// A `docker save` archive (tar).
    #[arg(long, value_name = "FILE")]
    docker_archive: Option<PathBuf>,
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / f64::from(1 << 20))
}

/// Runs an image command.
pub fn run(home: &Home, cmd: ImageCmd) -> Result<u8, SandboxError> {
    match cmd {
        ImageCmd::Build { name, packages } => {
            let pkgs = packages
                .unwrap_or_else(|| DEFAULT_PACKAGES.iter().map(|s| s.to_string()).collect());
            eprintln!(
                "{name}: debootstrap bookworm with {} (minutes; needs root and a mirror)",
                pkgs.join(",")
            );
            let t = std::time::Instant::now();
            let info = image_store::create(home, &name, &Source::Debootstrap(pkgs))?;
            println!(
                "{name}: built in {:.0} s: {} of files, {} disk ({})",
                t.elapsed().as_secs_f64(),
                mib(info.content_bytes),
                mib(info.disk_bytes),
                info.rootfs.display()
            );
        }
        ImageCmd::Import(a) => {
            let source = match (a.oci_layout, a.docker_archive) {
                (Some(d), _) => Source::OciLayout(d),
                (None, Some(f)) => Source::DockerArchive(f),
                (None, None) => unreachable!("clap requires one source"),
            };
            let info = image_store::create(home, &a.name, &source)?;
            println!(
                "{}: imported from {}: {} of files, {} disk",
                a.name,
                info.source,
                mib(info.content_bytes),
                mib(info.disk_bytes)
            );
        }
        ImageCmd::Ls { json } => {
            let images = image_store::list(home);
            if json {
                for i in &images {
                    println!("{}", serde_json::to_string(i).unwrap_or_default());
                }
            } else {
                println!("{:<20} {:>10} {:>10}  SOURCE", "NAME", "FILES", "DISK");
                for i in &images {
                    println!(
                        "{:<20} {:>10} {:>10}  {}",
                        i.name,
                        mib(i.content_bytes),
                        mib(i.disk_bytes),
                        i.source
                    );
                }
                let golden = cairn_sandbox::golden::list(home);
                if !golden.is_empty() {
                    println!("golden checkpoints: {}", golden.len());
                }
            }
        }
        ImageCmd::Rm { name } => {
            image_store::remove(home, &name)?;
            println!("{name}: removed");
        }
    }
    Ok(0)
}
