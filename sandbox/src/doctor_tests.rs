//! `cairn doctor` against crafted state: rows, directories and checkpoint stores as crashes
//! leave them (no KVM, no VMM).

use super::*;
use cairn_snapshot::checkpoint::{CheckpointMeta, MemoryMeta, META_FORMAT_VERSION};

const DEAD_PID: u32 = u32::MAX - 1;

fn home() -> (tempfile::TempDir, Home) {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path()).unwrap();
    (dir, home)
}

/// A row for `name` in `state`, with its directory (and `vm.json` when `config`).
fn row(home: &Home, name: &str, state: State, pid: Option<u32>, config: bool) -> Paths {
    let paths = home.paths(name);
    fs::create_dir_all(&paths.checkpoints).unwrap();
    if config {
        fs::write(&paths.config, "{}").unwrap();
    }
    home.registry()
        .unwrap()
        .insert(&Record {
            pid,
            idle_timeout: 0,
            ..paths.record(name, state)
        })
        .unwrap();
    paths
}

/// A complete checkpoint `ckpt` (just its `meta.json`, which is what marks it complete).
fn checkpoint(paths: &Paths, ckpt: &str, created_unix_ms: u64) {
    let dir = paths.checkpoints.join(ckpt);
    fs::create_dir_all(&dir).unwrap();
    CheckpointMeta {
        name: ckpt.into(),
        parent: None,
        created_unix_ms,
        format_version: META_FORMAT_VERSION,
        cpu_template: None,
        memory: MemoryMeta {
            dirty_mib: 1.0,
            layer_file: "mem.layer".into(),
        },
        disks: vec![],
        pause_ms: 1.0,
        write_ms: 1.0,
        total_ms: 0.0,
        files: Default::default(),
    }
    .save(&dir.join("meta.json"))
    .unwrap();
}

fn about<'a>(f: &'a [Finding], name: &str) -> Vec<&'a Finding> {
    f.iter()
        .filter(|x| x.sandbox.as_deref() == Some(name))
        .collect()
}

#[test]
fn a_healthy_home_has_no_findings() {
    let (_d, home) = home();
    row(&home, "ok", State::Stopped, None, true);
    let paths = home.paths("ok");
    checkpoint(&paths, "c1", 1);
    home.registry().unwrap().set_head("ok", Some("c1")).unwrap();
    assert_eq!(run(&home, false).unwrap(), vec![]);
}

#[test]
fn a_dead_vmm_with_checkpoints_is_stopped_at_the_store_head() {
    let (_d, home) = home();
    let paths = row(&home, "s", State::Running, Some(DEAD_PID), true);
    checkpoint(&paths, "old", 1);
    checkpoint(&paths, "new", 2);
    // The VMM took "new" but the CLI died before recording it: the store's HEAD wins.
    home.registry().unwrap().set_head("s", Some("old")).unwrap();
    CheckpointStore::open(&paths.checkpoints)
        .unwrap()
        .set_head(Some("new"))
        .unwrap();
    fs::write(&paths.api, "").unwrap();
    fs::write(paths.dir.join("vsock.sock_52"), "").unwrap();
    let f = run(&home, false).unwrap();
    let mine = about(&f, "s");
    assert!(mine[0].found.contains("VMM is gone"), "{f:?}");
    assert!(mine[0].did.contains("stopped at checkpoint new"), "{f:?}");
    assert_eq!(
        mine.iter().filter(|x| x.found.contains("socket")).count(),
        2
    );
    let r = home.registry().unwrap().get("s").unwrap();
    assert_eq!((r.state, r.pid), (State::Stopped, None));
    assert_eq!(r.head_checkpoint.as_deref(), Some("new"));
    assert!(!paths.api.exists());
    // Repaired: a second run finds nothing.
    assert_eq!(run(&home, false).unwrap(), vec![]);
    assert_eq!(sandbox::liveness(&r), sandbox::Liveness::Stopped);
}

#[test]
fn without_a_checkpoint_it_is_cold_and_without_a_config_it_is_removed() {
    let (_d, home) = home();
    row(&home, "cold", State::Running, Some(DEAD_PID), true);
    let gone = row(&home, "half", State::Creating, Some(DEAD_PID), false);
    let f = run(&home, false).unwrap();
    assert!(about(&f, "cold")[0].did.contains("marked it cold"), "{f:?}");
    assert!(about(&f, "half")[0].did.contains("removed it"), "{f:?}");
    let reg = home.registry().unwrap();
    let r = reg.get("cold").unwrap();
    assert_eq!(r.state, State::Cold);
    assert_eq!(sandbox::liveness(&r), sandbox::Liveness::Cold);
    assert!(reg.get("half").is_err());
    assert!(!gone.dir.exists());
    assert_eq!(run(&home, false).unwrap(), vec![]);
}

#[test]
fn incomplete_checkpoints_rows_without_dirs_and_dirs_without_rows_are_cleaned() {
    let (_d, home) = home();
    let paths = row(&home, "s", State::Stopped, None, true);
    checkpoint(&paths, "c1", 1);
    home.registry().unwrap().set_head("s", Some("c1")).unwrap();
    fs::create_dir_all(paths.checkpoints.join("c2")).unwrap(); // no meta.json: interrupted
    let lost = row(&home, "lost", State::Stopped, None, true);
    fs::remove_dir_all(&lost.dir).unwrap();
    let stray = home.paths("stray");
    fs::create_dir_all(&stray.dir).unwrap();
    fs::create_dir_all(home.images()).unwrap();
    let tmp = home.images().join(format!("rootfs-x-2g.tmp{DEAD_PID}"));
    fs::write(&tmp, "").unwrap();
    let unused = home.images().join("rootfs-x-3g.ext4");
    fs::write(&unused, "").unwrap();
    let used = home.images().join("rootfs-x-4g.ext4");
    fs::write(&used, "").unwrap();
    fs::hard_link(&used, paths.dir.join("disk.img")).unwrap();

    // Jails: the live sandbox's stays, one whose sandbox is gone goes.
    let kept = sandbox::jail::jail_dir(&paths).join("root");
    fs::create_dir_all(&kept).unwrap();
    let orphan = sandbox::jail::jail_dir(&home.paths("gone")).join("root");
    fs::create_dir_all(orphan.join("dev")).unwrap();

    let f = run(&home, false).unwrap();
    assert!(about(&f, "s")[0].found.contains("c2"), "{f:?}");
    assert!(
        f.iter().any(|x| x.found.contains("belongs to no sandbox")),
        "{f:?}"
    );
    assert!(kept.exists());
    assert!(!orphan.parent().unwrap().exists());
    assert!(about(&f, "lost")[0]
        .did
        .contains("removed the registry row"));
    assert!(about(&f, "stray")[0].found.contains("no registry row"));
    assert!(f.iter().any(|x| x.found.contains("unfinished root image")));
    assert!(!paths.checkpoints.join("c2").exists());
    assert!(paths.checkpoints.join("c1").exists());
    assert!(home.registry().unwrap().get("lost").is_err());
    assert!(!stray.dir.exists());
    assert!(!tmp.exists());
    assert!(!unused.exists());
    assert!(used.exists());
    assert_eq!(run(&home, false).unwrap(), vec![]);
}

#[test]
fn a_locked_sandbox_is_left_alone_and_a_dry_run_changes_nothing() {
    let (_d, home) = home();
    let paths = row(&home, "busy", State::Running, Some(DEAD_PID), true);
    let held = FileLock::acquire(&paths.lock, Mode::Exclusive).unwrap();
    let f = run(&home, false).unwrap();
    assert!(about(&f, "busy")[0].did.contains("left it alone"), "{f:?}");
    drop(held);

    let f = run(&home, true).unwrap();
    assert!(
        about(&f, "busy")[0]
            .did
            .starts_with("would have: marked it cold"),
        "{f:?}"
    );
    assert_eq!(
        home.registry().unwrap().get("busy").unwrap().state,
        State::Running
    );
    // A crafted lock file is no obstacle once nobody holds it.
    assert_eq!(run(&home, false).unwrap().len(), 1);
    assert_eq!(
        home.registry().unwrap().get("busy").unwrap().state,
        State::Cold
    );
}

/// A stand-in VMM: `sleep` copied as `cairn-vmm` (what `vmm_alive` checks), working in `dir`.
fn fake_vmm(bin_dir: &Path, dir: &Path) -> std::process::Child {
    let exe = bin_dir.join("cairn-vmm");
    if !exe.exists() {
        fs::copy("/bin/sleep", &exe).unwrap();
    }
    let child = std::process::Command::new(&exe)
        .arg("60")
        .current_dir(dir)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !sandbox::vmm_alive(child.id()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

#[test]
fn an_unrecorded_vmm_in_a_sandbox_directory_is_found_and_ended() {
    let (d, home) = home();
    let paths = row(&home, "s", State::Stopped, None, true);
    checkpoint(&paths, "c1", 1);
    home.registry().unwrap().set_head("s", Some("c1")).unwrap();
    let mut child = fake_vmm(d.path(), &paths.dir);
    assert_eq!(sandbox::vmms_in(&paths.dir), vec![child.id()]);
    let f = run(&home, false).unwrap();
    let mine = about(&f, "s");
    assert!(mine[0].found.contains("unrecorded cairn-vmm"), "{f:?}");
    // kill_vmm reaps its own children; wait() covers the case where it already has.
    let _ = child.wait();
    assert!(sandbox::vmms_in(&paths.dir).is_empty());
    assert_eq!(
        home.registry().unwrap().get("s").unwrap().state,
        State::Stopped
    );
}

#[test]
fn a_vmm_left_in_the_jail_of_a_removed_sandbox_is_ended_and_the_jail_removed() {
    let (d, home) = home();
    let jail = sandbox::jail::jail_dir(&home.paths("gone"));
    fs::create_dir_all(jail.join("root")).unwrap();
    let mut child = fake_vmm(d.path(), &jail.join("root"));
    assert_eq!(
        sandbox::jail::pids_working_in(&jail.join("root")),
        vec![child.id()]
    );
    let dry = run(&home, true).unwrap();
    assert!(dry[0].found.contains("still run in it"), "{dry:?}");
    assert!(jail.exists());
    let f = run(&home, false).unwrap();
    assert!(f[0].found.contains(&format!("{}", child.id())), "{f:?}");
    let _ = child.wait();
    assert!(!jail.exists());
    assert_eq!(run(&home, false).unwrap(), vec![]);
}

#[test]
fn rm_ends_an_unrecorded_vmm_working_in_the_sandbox() {
    let (d, home) = home();
    let paths = row(&home, "s", State::Stopped, None, true);
    let mut child = fake_vmm(d.path(), &paths.dir);
    assert_eq!(sandbox::vmms_in(&paths.dir), vec![child.id()]);
    sandbox::remove(&home, "s").unwrap();
    let _ = child.wait();
    assert!(!sandbox::vmm_alive(child.id()));
    assert!(!paths.dir.exists());
}

#[test]
fn a_stopped_row_behind_its_store_follows_the_store_on_ls_and_start() {
    let (_d, home) = home();
    let paths = row(&home, "k2", State::Stopped, None, true);
    checkpoint(&paths, "kc18", 1);
    checkpoint(&paths, "kc20", 2);
    // `checkpoint create kc20` was killed after the VMM committed: the row still says kc18.
    home.registry()
        .unwrap()
        .set_head("k2", Some("kc18"))
        .unwrap();
    CheckpointStore::open(&paths.checkpoints)
        .unwrap()
        .set_head(Some("kc20"))
        .unwrap();
    let mut reg = home.registry().unwrap();
    let r = reg.get("k2").unwrap();
    assert_eq!(
        crate::reconcile::follow_store(&mut reg, &r, &paths)
            .unwrap()
            .as_deref(),
        Some("kc20")
    );
    let r = reg.get("k2").unwrap();
    assert_eq!(r.head_checkpoint.as_deref(), Some("kc20"));
    assert_eq!(
        crate::reconcile::follow_store(&mut reg, &r, &paths).unwrap(),
        None
    );
    assert_eq!(run(&home, false).unwrap(), vec![]);
}

/// A stand-in pasta (perl, named `pasta`, with the command line [`crate::net::rootless`]
/// gives pasta) for the sandbox directory `dir`; `with_child`: it runs a child process, as a
/// pasta running its VMM does.
fn fake_pasta(dir: &Path, with_child: bool) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let body = match with_child {
        true => "system('sleep', '30')",
        false => "sleep 30",
    };
    std::process::Command::new("perl")
        .arg0("pasta")
        .args(["-e", body, "--", "sh", "-c", "ip link set pasta0 up", "sh"])
        .arg(dir)
        .process_group(0)
        .spawn()
        .unwrap()
}

#[test]
fn a_pasta_left_by_a_crash_is_found_and_ended_and_a_working_one_is_not() {
    let (_d, home) = home();
    let paths = row(&home, "rl", State::Running, None, true);
    let mut spec = crate::net::NetSpec::test_spec();
    spec.rootless = true;
    crate::net::save(&paths, &spec).unwrap();
    let mut orphan = fake_pasta(&home.paths("gone").dir, false);
    let mut idle = fake_pasta(&paths.dir, false);
    let mut working = fake_pasta(&paths.dir, true);
    // Younger ones are left alone (they may be starting a VMM).
    let early = run(&home, true).unwrap();
    assert!(!format!("{early:?}").contains("pasta pid"), "{early:?}");
    std::thread::sleep(Duration::from_millis(2300));
    let f = run(&home, false).unwrap();
    let says = |pid: u32| {
        f.iter()
            .find(|x| x.found.contains(&format!("pasta pid {pid} ")))
    };
    let o = says(orphan.id()).unwrap_or_else(|| panic!("{f:?}"));
    assert!(o.found.ends_with("which no sandbox owns"), "{o:?}");
    let i = says(idle.id()).unwrap_or_else(|| panic!("{f:?}"));
    assert!(i.found.ends_with("which runs no VMM"), "{i:?}");
    assert!(says(working.id()).is_none(), "{f:?}");
    for c in [&mut orphan, &mut idle] {
        let status = c.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGTERM)
        );
    }
    assert!(working.try_wait().unwrap().is_none());
    // SAFETY: kill(2) on the process group this test made.
    unsafe { libc::kill(-(working.id() as libc::pid_t), libc::SIGKILL) };
    let _ = working.wait();
}
