//! Tests of the command-line parser.
use super::*;

const BASE: &[&str] = &[
    "--id",
    "vm-1",
    "--exec-file",
    "/usr/bin/cairn-vmm",
    "--uid",
    "123",
    "--gid",
    "456",
];

fn with(extra: &[&str]) -> Vec<String> {
    BASE.iter().chain(extra).map(|s| s.to_string()).collect()
}

fn run(extra: &[&str]) -> JailerArgs {
    match parse(&with(extra)) {
        Ok(Command::Run(a)) => *a,
        other => panic!("unexpected {other:?}"),
    }
}

fn err(argv: &[&str]) -> ArgsError {
    parse(argv).expect_err("should be rejected")
}

fn err_with(extra: &[&str]) -> ArgsError {
    parse(&with(extra)).expect_err("should be rejected")
}

#[test]
fn minimal() {
    let a = run(&[]);
    assert_eq!(a.id, "vm-1");
    assert_eq!(a.exec_file, PathBuf::from("/usr/bin/cairn-vmm"));
    assert_eq!((a.uid, a.gid), (123, 456));
    assert_eq!(a.chroot_base, PathBuf::from(DEFAULT_CHROOT_BASE));
    assert_eq!(a.cgroup_version, CgroupVersion::V1);
    assert!(!a.daemonize && !a.new_pid_ns && !a.userfaultfd);
    assert!(a.netns.is_none() && a.parent_cgroup.is_none());
    assert!(a.cgroups.is_empty() && a.vmm_args.is_empty() && a.binds.is_empty());
    assert_eq!(
        a.effective_limits(),
        vec![ResourceLimit {
            kind: ResourceKind::NoFile,
            value: 2048
        }]
    );
}

#[test]
fn everything() {
    let a = run(&[
        "--chroot-base-dir",
        "/tmp/jails",
        "--netns",
        "/var/run/netns/x",
        "--daemonize",
        "--new-pid-ns",
        "--cgroup-version",
        "2",
        "--cgroup",
        "pids.max=64",
        "--cgroup=cpuset.cpus=0-1",
        "--parent-cgroup",
        "a/b",
        "--resource-limit",
        "fsize=1024",
        "--resource-limit=no-file=100",
        "--userfaultfd",
        "--",
        "--api-sock",
        "/run/api.sock",
        "--",
    ]);
    assert_eq!(a.chroot_base, PathBuf::from("/tmp/jails"));
    assert_eq!(a.netns, Some(PathBuf::from("/var/run/netns/x")));
    assert!(a.daemonize && a.new_pid_ns && a.userfaultfd);
    assert_eq!(a.cgroup_version, CgroupVersion::V2);
    assert_eq!(
        a.cgroups,
        vec![
            CgroupSetting {
                file: "pids.max".into(),
                value: "64".into()
            },
            CgroupSetting {
                file: "cpuset.cpus".into(),
                value: "0-1".into()
            },
        ]
    );
    assert_eq!(a.cgroups[1].controller(), "cpuset");
    assert_eq!(a.parent_cgroup.as_deref(), Some("a/b"));
    assert_eq!(
        a.effective_limits(),
        vec![
            ResourceLimit {
                kind: ResourceKind::Fsize,
                value: 1024
            },
            ResourceLimit {
                kind: ResourceKind::NoFile,
                value: 100
            },
        ]
    );
    assert_eq!(a.vmm_args, vec!["--api-sock", "/run/api.sock", "--"]);
    let ctrls: Vec<_> = needed_controllers(&a.cgroups).into_iter().collect();
    assert_eq!(ctrls, vec!["cpuset", "pids"]);
}

#[test]
fn binds() {
    let a = run(&["--bind", "/srv/s:/sandbox", "--bind=/k/vmlinux:/kernel:ro"]);
    assert_eq!(
        a.binds,
        vec![
            BindMount {
                host: "/srv/s".into(),
                jail: "/sandbox".into(),
                read_only: false
            },
            BindMount {
                host: "/k/vmlinux".into(),
                jail: "/kernel".into(),
                read_only: true
            },
        ]
    );
    for (extra, expect) in [
        (&["--bind", "relative:/x"][..], "must be absolute"),
        (&["--bind", "/a:/dev/kvm"][..], "/dev"),
        (&["--bind", "/a:/x", "--bind", "/b:/x/y"][..], "overlap"),
    ] {
        let e = err_with(extra).to_string();
        assert!(e.contains("--bind") && e.contains(expect), "{extra:?}: {e}");
    }
}

#[test]
fn help_and_version() {
    assert_eq!(parse(&["--help"]), Ok(Command::Help));
    assert_eq!(parse(&["-h"]), Ok(Command::Help));
    assert_eq!(parse(&["-V"]), Ok(Command::Version));
    assert_eq!(parse(&with(&["--version"])), Ok(Command::Version));
    // Help does not hide a malformed command line.
    assert!(parse(&["--help", "--bogus"]).is_err());
}

#[test]
fn missing_required() {
    assert_eq!(err(&[]), ArgsError::MissingRequired("--id"));
    assert_eq!(
        err(&["--id", "a"]),
        ArgsError::MissingRequired("--exec-file")
    );
    assert_eq!(
        err(&["--id", "a", "--exec-file", "/x"]),
        ArgsError::MissingRequired("--uid")
    );
    assert_eq!(
        err(&["--id", "a", "--exec-file", "/x", "--uid", "1"]),
        ArgsError::MissingRequired("--gid")
    );
}

#[test]
fn unknown_and_positional() {
    assert_eq!(
        err_with(&["--bogus"]),
        ArgsError::UnknownFlag("--bogus".into())
    );
    assert_eq!(
        err_with(&["--bogus=1"]),
        ArgsError::UnknownFlag("--bogus".into())
    );
    assert_eq!(err_with(&["-x"]), ArgsError::UnknownFlag("-x".into()));
    assert_eq!(
        err_with(&["stray"]),
        ArgsError::UnexpectedArgument("stray".into())
    );
    assert_eq!(err_with(&["-"]), ArgsError::UnexpectedArgument("-".into()));
}

#[test]
fn missing_values() {
    assert_eq!(err(&["--id"]), ArgsError::MissingValue("--id"));
    assert_eq!(
        err(&["--id", "--uid", "1"]),
        ArgsError::MissingValue("--id")
    );
    assert_eq!(err(&["--id="]), ArgsError::MissingValue("--id"));
    assert_eq!(err_with(&["--cgroup"]), ArgsError::MissingValue("--cgroup"));
    assert_eq!(
        err_with(&["--netns", "--daemonize"]),
        ArgsError::MissingValue("--netns")
    );
    assert_eq!(
        err_with(&["--daemonize=yes"]),
        ArgsError::UnexpectedValue("--daemonize")
    );
}

#[test]
fn duplicates() {
    assert_eq!(err_with(&["--id", "b"]), ArgsError::Duplicate("--id"));
    assert_eq!(err_with(&["--uid", "1"]), ArgsError::Duplicate("--uid"));
    assert_eq!(err_with(&["--gid=1"]), ArgsError::Duplicate("--gid"));
    assert_eq!(
        err_with(&["--exec-file", "/y"]),
        ArgsError::Duplicate("--exec-file")
    );
    for flag in ["--chroot-base-dir", "--netns", "--parent-cgroup"] {
        let e = err_with(&[flag, "/a", flag, "/a"]);
        assert!(
            matches!(e, ArgsError::Duplicate(_) | ArgsError::InvalidValue { .. }),
            "{flag}: {e}"
        );
    }
    assert_eq!(
        err_with(&["--parent-cgroup", "a", "--parent-cgroup", "b"]),
        ArgsError::Duplicate("--parent-cgroup")
    );
    assert_eq!(
        err_with(&["--cgroup-version", "1", "--cgroup-version", "2"]),
        ArgsError::Duplicate("--cgroup-version")
    );
    assert_eq!(
        err_with(&["--daemonize", "--daemonize"]),
        ArgsError::Duplicate("--daemonize")
    );
    assert_eq!(
        err_with(&["--new-pid-ns", "--new-pid-ns"]),
        ArgsError::Duplicate("--new-pid-ns")
    );
    assert!(matches!(
        err_with(&["--cgroup", "pids.max=1", "--cgroup", "pids.max=2"]),
        ArgsError::InvalidValue { .. }
    ));
    assert!(matches!(
        err_with(&["--resource-limit", "fsize=1", "--resource-limit", "fsize=2"]),
        ArgsError::InvalidValue { .. }
    ));
}

#[test]
fn bad_ids() {
    let long = "a".repeat(65);
    for id in ["a_b", "a/b", "..", "a b", "é", long.as_str()] {
        assert!(
            matches!(
                err(&["--id", id]),
                ArgsError::InvalidValue { flag: "--id", .. }
            ),
            "{id}"
        );
    }
    assert!(validate_id(&"a".repeat(64)).is_ok());
    assert!(validate_id("Ab-09").is_ok());
    assert!(validate_id("").is_err());
}

#[test]
fn bad_numbers() {
    for v in ["-1", "x", "4294967296", "1.0", "+1", " 1"] {
        assert!(
            matches!(
                err_with(&["--uid", v]),
                ArgsError::InvalidValue { .. }
                    | ArgsError::Duplicate(_)
                    | ArgsError::MissingValue(_)
            ),
            "{v}"
        );
        let argv = ["--id", "a", "--exec-file", "/x", "--uid", "1", "--gid", v];
        assert!(
            matches!(
                err(&argv),
                ArgsError::InvalidValue { .. } | ArgsError::MissingValue(_)
            ),
            "{v}"
        );
    }
    let argv = [
        "--id",
        "a",
        "--exec-file",
        "/x",
        "--uid",
        "4294967295",
        "--gid",
        "0",
    ];
    assert!(matches!(parse(&argv), Ok(Command::Run(a)) if a.uid == u32::MAX));
}

#[test]
fn bad_paths() {
    for base in ["relative", "/a/../b", "/a/./b", "/.."] {
        assert!(
            matches!(
                err_with(&["--chroot-base-dir", base]),
                ArgsError::InvalidValue { .. }
            ),
            "{base}"
        );
    }
    for exec in ["/usr/bin/", "/", "..", "/usr/bin/a b"] {
        let argv = ["--id", "a", "--exec-file", exec, "--uid", "1", "--gid", "1"];
        assert!(
            matches!(
                err(&argv),
                ArgsError::InvalidValue {
                    flag: "--exec-file",
                    ..
                }
            ),
            "{exec}"
        );
    }
    assert!(matches!(
        err_with(&["--netns", "/run/../x"]),
        ArgsError::InvalidValue { .. }
    ));
}

#[test]
fn bad_cgroups() {
    for v in [
        "pids.max",
        "=1",
        "pids=1",
        ".max=1",
        "pids.=1",
        "pids.max=",
        "../pids.max=1",
        "a/b.c=1",
        "pids.max=1\n2",
    ] {
        assert!(
            matches!(err_with(&["--cgroup", v]), ArgsError::InvalidValue { .. }),
            "{v:?}"
        );
    }
    for v in ["0", "3", "v2", ""] {
        assert!(
            matches!(
                err_with(&["--cgroup-version", v]),
                ArgsError::InvalidValue { .. } | ArgsError::MissingValue(_)
            ),
            "{v}"
        );
    }
    for v in ["/abs", "a/../b", "..", "a//b", "a b"] {
        assert!(
            matches!(
                err_with(&["--parent-cgroup", v]),
                ArgsError::InvalidValue { .. }
            ),
            "{v}"
        );
    }
    assert_eq!(
        run(&["--parent-cgroup", "a/b/"]).parent_cgroup.as_deref(),
        Some("a/b")
    );
    assert_eq!(
        run(&["--cgroup", "cpuset.cpus=0,1=2"]).cgroups[0].value,
        "0,1=2"
    );
}

#[test]
fn bad_limits() {
    for v in [
        "fsize",
        "cpu=1",
        "fsize=-1",
        "fsize=x",
        "no-file=",
        "=5",
        "fsize=18446744073709551616",
    ] {
        assert!(
            matches!(
                err_with(&["--resource-limit", v]),
                ArgsError::InvalidValue { .. }
            ),
            "{v}"
        );
    }
}

#[test]
fn messages_are_one_line() {
    for e in [
        err_with(&["--bogus"]),
        err_with(&["--cgroup", "x"]),
        err(&["--id", "a b"]),
    ] {
        let msg = e.to_string();
        assert!(!msg.contains('\n') && !msg.is_empty(), "{msg}");
    }
}
