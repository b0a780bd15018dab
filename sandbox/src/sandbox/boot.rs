//! Creating a sandbox: its VMM config, the first boot, waiting for the guest agent, and
//! reading the console log for the story when that fails.

use super::{
    check_kvm, check_socket_path, io_err, jail, kill_vmm, reap, spawn_vmm, validate_name,
    vmm_alive, CreateOptions, Home, Paths, SandboxError,
};
use crate::image;
use crate::lock::{FileLock, Mode};
use crate::registry::{Record, Registry, RegistryError, State};
use crate::rootdisk;
use cairn_agent::client::Client;
use cairn_agent::proto::AGENT_PORT;
use cairn_vmm_api::config::{
    BootSourceConfig, CairnConfig, DriveConfig, EntropyConfig, MachineConfig, VmConfig, VsockConfig,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

/// The VMM config of a new sandbox: with a root disk image, the kernel boots from the disk
/// (no initrd); without one, from the initramfs, the disk then being blank.
pub fn vm_config(paths: &Paths, img: &image::GuestImage, opts: &CreateOptions) -> VmConfig {
    let boot_source = match &img.rootfs {
        Some(_) => BootSourceConfig {
            kernel_image_path: img.kernel.clone(),
            initrd_path: None,
            boot_args: Some(format!("{} {}", img.boot_args, rootdisk::ROOT_ARGS)),
        },
        None => BootSourceConfig {
            kernel_image_path: img.kernel.clone(),
            initrd_path: Some(img.initrd.clone()),
            boot_args: Some(img.boot_args.clone()),
        },
    };
    VmConfig {
        boot_source: Some(boot_source),
        machine_config: MachineConfig {
            vcpu_count: opts.cpus,
            mem_size_mib: opts.mem_mib as usize,
            ..MachineConfig::default()
        },
        drives: vec![DriveConfig {
            is_read_only: Some(false),
            ..DriveConfig::new("disk", paths.disk.clone(), img.rootfs.is_some())
        }],
        vsock: Some(VsockConfig {
            vsock_id: None,
            guest_cid: 3,
            uds_path: paths.vsock.clone(),
        }),
        entropy: Some(EntropyConfig::default()),
        cpu_config: img.cpu_config.is_some().then(|| paths.cpu_config.clone()),
        cairn: CairnConfig {
            checkpoint_dir: Some(paths.checkpoints.clone()),
            ..Default::default()
        },
        ..VmConfig::default()
    }
}

/// The last `n` lines of the console log, joined with ` | `.
pub fn console_tail(paths: &Paths, n: usize) -> String {
    let mut f = match File::open(&paths.console) {
        Ok(f) => f,
        Err(_) => return String::from("(no console log)"),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(8192)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

pub(crate) fn boot_error(paths: &Paths, reason: impl Into<String>) -> SandboxError {
    SandboxError::Boot {
        reason: reason.into(),
        log: paths.console.clone(),
        tail: console_tail(paths, 5),
    }
}

pub(crate) fn spinner(msg: String) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        pb.set_style(style);
    }
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Waits until the guest agent answers (its hello on a new connection); returns how long that
/// took and the connected client, whose open connection the caller's first request uses (a
/// woken sandbox's exec then costs one vsock connection, not two). Only console output after
/// `console_from` is searched for an agent crash (the log is appended across starts).
pub fn wait_agent(
    paths: &Paths,
    pid: u32,
    timeout: Duration,
    what: &str,
    console_from: u64,
) -> Result<(Duration, Client), SandboxError> {
    let start = Instant::now();
    let pb = spinner(what.to_string());
    let mut crash_seen: Option<Instant> = None;
    // A woken sandbox's agent answers within a few hundred ms, a booting one within tens of
    // seconds: poll quickly at first, then back off.
    let mut pause = Duration::from_millis(10);
    let result = loop {
        let attempt = Client::connect_uds_timeout(&paths.vsock, AGENT_PORT, Duration::from_secs(5));
        if let Ok(client) = attempt {
            break Ok((start.elapsed(), client));
        }
        if !vmm_alive(pid) {
            reap(pid);
            break Err(boot_error(
                paths,
                "cairn-vmm exited before the agent answered",
            ));
        }
        match (agent_crash(paths, console_from), crash_seen) {
            // The guest's init restarts the agent after a short backoff and says so on the
            // console: give it that long before calling the crash final.
            (Some(line), Some(t)) if t.elapsed() > RESPAWN_GRACE => {
                break Err(boot_error(
                    paths,
                    format!("the guest agent crashed before answering: {line}"),
                ));
            }
            (Some(_), None) => crash_seen = Some(Instant::now()),
            (None, _) => crash_seen = None,
            _ => {}
        }
        if start.elapsed() > timeout {
            break Err(boot_error(
                paths,
                format!("the guest agent did not answer within {timeout:?}"),
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
    };
    pb.finish_and_clear();
    result
}

pub(crate) fn console_len(paths: &Paths) -> u64 {
    fs::metadata(&paths.console).map(|m| m.len()).unwrap_or(0)
}

/// How long a reported agent crash may go without the guest init's restart line before the
/// wait gives up.
const RESPAWN_GRACE: Duration = Duration::from_secs(15);

/// The guest kernel's report of the agent dying (`cairn-agent[N]: segfault at ...`) in the
/// console output after `from`, if the agent was not restarted after it (the guest init prints
/// `cairn-agent exited (status N); restarting`): then it will not answer, and waiting is
/// pointless.
pub(crate) fn agent_crash(paths: &Paths, from: u64) -> Option<String> {
    let mut f = File::open(&paths.console).ok()?;
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut buf = Vec::new();
    f.take(1 << 20).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let mut crash = None;
    for l in text.lines() {
        if l.contains("cairn-agent[")
            && (l.contains("segfault") || l.contains("general protection"))
        {
            crash = Some(l.trim().to_string());
        } else if l.contains("cairn-agent exited") && l.contains("restarting") {
            crash = None;
        }
    }
    crash
}

/// Creates, boots and records the sandbox `name`; returns its row.
pub fn create(home: &Home, name: &str, opts: &CreateOptions) -> Result<Record, SandboxError> {
    validate_name(name)?;
    // With a store configured, the name's lease first (docs/storage.md, "leases").
    let leased = crate::store_sync::lease_for_create(home, name)?;
    let made = create_unleased(home, name, opts);
    if leased {
        crate::store_sync::create_leased(home, name, made.is_ok());
    }
    made
}

fn create_unleased(home: &Home, name: &str, opts: &CreateOptions) -> Result<Record, SandboxError> {
    crate::host_fit::check(opts.cpus, opts.mem_mib)?;
    check_kvm()?;
    let mut reg = home.registry()?;
    if reg.get(name).is_ok() {
        return Err(RegistryError::NameTaken(name.to_string()).into());
    }
    let pb = spinner("guest image (guest/build; the first run builds a kernel)".into());
    let t = Instant::now();
    let img = image::guest_image();
    pb.finish_and_clear();
    if std::env::var_os("CAIRN_TIMES").is_some() {
        eprintln!(
            "{name}: guest image in {:.0} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    let mut img = img?;
    if let Some(named) = &opts.image {
        img.rootfs = Some(crate::image_store::rootfs_of(home, named)?);
    }
    if let Some(note) = &img.note {
        eprintln!("cairn: note: {note}");
    }
    let paths = home.paths(name);
    check_socket_path(&paths.api)?;
    check_socket_path(&paths.vsock)?;
    let t = Instant::now();
    let golden_key = crate::golden::key_for(home, &img, opts);
    if std::env::var_os("CAIRN_TIMES").is_some() {
        eprintln!(
            "{name}: golden key in {:.0} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    if let Some(k) = golden_key
        .as_deref()
        .filter(|k| crate::golden::lookup(home, k).is_some())
    {
        return crate::golden::create_from(home, k, name, opts);
    }
    fs::create_dir_all(&paths.dir).map_err(io_err(format!("create {}", paths.dir.display())))?;
    let _lock = FileLock::acquire(&paths.lock, Mode::Exclusive)
        .map_err(io_err(format!("lock {}", paths.lock.display())))?;
    let record = Record {
        cpus: opts.cpus,
        mem_mib: opts.mem_mib,
        disk_gib: opts.disk_gib,
        idle_timeout: opts.idle_timeout,
        ..paths.record(name, State::Creating)
    };
    // The row claims the name (atomically): a racing create of the same name stops here.
    reg.insert(&record)?;
    let booted = prepare_new(home, &mut reg, name, &paths, &img, opts).and_then(|()| {
        let took = cold_boot(&mut reg, &paths, name, opts.boot_timeout, "booting")?;
        eprintln!("{name}: agent answered after {:.1} s", took.1.as_secs_f64());
        Ok(took.0)
    });
    match booted {
        Ok(pid) => {
            reg.set_state(name, State::Running, Some(pid))?;
            // Before a golden checkpoint is kept: its guest has then read and written the
            // files every create from it rewrites (see `golden::keep_from`).
            crate::identity::apply_to(home, name);
            if let Some(k) = &golden_key {
                crate::golden::keep_from(home, &mut reg, name, k, &img);
            }
            if opts.idle_timeout > 0 {
                crate::idle::spawn_watcher(home, name, &paths)?;
            }
            Ok(reg.get(name)?)
        }
        Err(e) => {
            // Leave nothing half-made behind, but keep the console log's story in the error.
            if let Ok(r) = reg.get(name) {
                if let Some(pid) = r.pid {
                    kill_vmm(pid);
                }
            }
            let _ = reg.remove(name);
            crate::net::remove(&paths);
            let _ = fs::remove_dir_all(jail::jail_dir(&paths));
            let _ = fs::remove_dir_all(&paths.dir);
            Err(e)
        }
    }
}

/// Makes a new sandbox's disk and VMM config: the disk is a link to the shared root image
/// grown to `--disk` GiB (see [`rootdisk`]), or a blank sparse file without a root image.
/// A sandbox made by root is jailed (see [`jail`]): its config names in-jail paths.
pub(crate) fn prepare_new(
    home: &Home,
    reg: &mut Registry,
    name: &str,
    paths: &Paths,
    img: &image::GuestImage,
    opts: &CreateOptions,
) -> Result<(), SandboxError> {
    fs::create_dir_all(&paths.checkpoints).map_err(io_err("create the checkpoint dir"))?;
    match &img.rootfs {
        Some(rootfs) => {
            rootdisk::root_disk(&home.images(), rootfs, opts.disk_gib, &paths.disk)?;
        }
        None => {
            let disk = File::create(&paths.disk)
                .map_err(io_err(format!("create {}", paths.disk.display())))?;
            disk.set_len(opts.disk_gib << 30)
                .map_err(io_err(format!("size {}", paths.disk.display())))?;
        }
    }
    if let Some(template) = &img.cpu_config {
        fs::copy(template, &paths.cpu_config).map_err(io_err(format!(
            "copy the CPU template {}",
            template.display()
        )))?;
    }
    let mut cfg = if jail::wanted(opts.no_jail) {
        let initrd = img.rootfs.is_none().then_some(img.initrd.as_path());
        jail::assign(paths, &img.kernel, initrd)?;
        let in_jail = image::GuestImage {
            kernel: jail::IN_JAIL_KERNEL.into(),
            initrd: jail::IN_JAIL_INITRD.into(),
            ..img.clone()
        };
        vm_config(&jail::vmm_view(paths, true), &in_jail, opts)
    } else {
        vm_config(paths, img, opts)
    };
    if !opts.no_network {
        let owner = jail::load(paths)?.map(|s| (s.uid, s.gid));
        let spec = crate::net::create_for(home, reg, paths, name, owner)?;
        cfg.network_interfaces = vec![crate::net::vm_config_entry(&spec)];
    }
    let what = format!("write {}", paths.config.display());
    let text = serde_json::to_vec(&cfg).map_err(|e| io_err(what.clone())(e.into()))?;
    fs::write(&paths.config, text).map_err(io_err(what))
}

/// Boots the sandbox's VMM from its config (`vm.json`): the kernel, and the disk as the
/// checkpoint store left it (the head's layers plus the active delta). Records the pid, waits
/// for the agent; returns the pid and how long the agent took.
pub(crate) fn cold_boot(
    reg: &mut Registry,
    paths: &Paths,
    name: &str,
    timeout: Duration,
    verb: &str,
) -> Result<(u32, Duration), SandboxError> {
    let from = console_len(paths);
    let vmm = jail::vmm_view(paths, jail::load(paths)?.is_some());
    let pid = spawn_vmm(
        paths,
        &[
            "--api-sock".as_ref(),
            vmm.api.as_os_str(),
            "--config-file".as_ref(),
            vmm.config.as_os_str(),
        ],
    )?;
    reg.set_state(name, State::Creating, Some(pid))?;
    let (took, _) = wait_agent(paths, pid, timeout, &format!("{verb} {name}"), from)?;
    crate::net::guest::after_agent(paths, false)?;
    Ok((pid, took))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::Home;

    #[test]
    fn config_has_every_piece() {
        let home = tempfile::tempdir().unwrap();
        let paths = Home::at(home.path()).unwrap().paths("s");
        let mut img = image::GuestImage {
            kernel: "/k".into(),
            initrd: "/i".into(),
            boot_args: "console=ttyS0".into(),
            rootfs: None,
            cpu_config: None,
            note: None,
        };
        let cfg = vm_config(&paths, &img, &CreateOptions::default());
        let boot = cfg.boot_source.clone().unwrap();
        assert_eq!(
            boot.initrd_path.as_deref(),
            Some(std::path::Path::new("/i"))
        );
        assert!(cfg.cpu_config.is_none());
        img.cpu_config = Some("/cache/emulated.json".into());
        let with_template = vm_config(&paths, &img, &CreateOptions::default());
        assert_eq!(with_template.cpu_config, Some(paths.cpu_config.clone()));
        img.cpu_config = None;
        assert!(!cfg.drives[0].is_root_device);
        img.rootfs = Some("/r/rootfs.ext4".into());
        let root = vm_config(&paths, &img, &CreateOptions::default());
        let root_boot = root.boot_source.clone().unwrap();
        assert!(root_boot.initrd_path.is_none());
        let args = root_boot.boot_args.unwrap();
        assert!(args.starts_with("console=ttyS0 root=/dev/vda rw"), "{args}");
        assert!(args.contains("noinit_itable"), "{args}");
        assert!(root.drives[0].is_root_device);
        assert_eq!(cfg.machine_config.vcpu_count, 1);
        assert_eq!(cfg.drives[0].path_on_host, paths.disk);
        assert_eq!(cfg.vsock.as_ref().unwrap().uds_path, paths.vsock);
        assert_eq!(cfg.cairn.checkpoint_dir.as_ref(), Some(&paths.checkpoints));
        assert!(cfg.entropy.is_some());
        // What is written is what the VMM reads back, rules included.
        let text = serde_json::to_string(&root).unwrap();
        let back = cairn_vmm_api::config::parse_vm_config(&text).unwrap();
        cairn_vmm_api::config::Validate::validate(&back).unwrap();
        assert_eq!(back, root);
    }

    #[test]
    fn an_agent_crash_on_the_console_is_found_after_the_offset() {
        let home = tempfile::tempdir().unwrap();
        let paths = Home::at(home.path()).unwrap().paths("s");
        fs::create_dir_all(&paths.dir).unwrap();
        let old = "[ 1.0] cairn-agent[26]: segfault at 0 ip 1 sp 2 error 4\n";
        fs::write(&paths.console, old).unwrap();
        let from = console_len(&paths);
        assert_eq!(agent_crash(&paths, from), None);
        let new = format!("{old}cairn-guest-ready\n[ 2.0] cairn-agent[27]: segfault at 0 ip 3\n");
        fs::write(&paths.console, &new).unwrap();
        let line = agent_crash(&paths, from).unwrap();
        assert!(line.contains("cairn-agent[27]"), "{line}");
        assert!(console_tail(&paths, 1).contains("[27]"));
        // Restarted by the guest init: not final.
        let restarted = format!("{new}cairn-agent exited (status 139); restarting\n");
        fs::write(&paths.console, &restarted).unwrap();
        assert_eq!(agent_crash(&paths, from), None);
    }
}
