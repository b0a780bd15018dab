//! `cairn policy` and the network's bad input, without KVM: one-line errors.

use cairn_sandbox::registry::{Registry, State};
use cairn_sandbox::sandbox::Home;
use std::process::Output;

fn cairn(home: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(args).env("CAIRN_HOME", home);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("cairn: "), "{err}");
    err
}

#[test]
fn policy_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path()).unwrap();
    let paths = home.paths("plain");
    std::fs::create_dir_all(&paths.dir).unwrap();
    Registry::open(dir.path())
        .unwrap()
        .insert(&paths.record("plain", State::Stopped))
        .unwrap();
    // A sandbox without network (no net.json): policy is refused, so is show.
    let e = one_line_error(&cairn(
        dir.path(),
        &["policy", "set", "plain", "--allow", "github.com"],
        &[],
    ));
    assert!(e.contains("has no network"), "{e}");
    let e = one_line_error(&cairn(dir.path(), &["policy", "show", "plain"], &[]));
    assert!(e.contains("has no network"), "{e}");
    // A pattern that is no domain pattern is refused before anything else.
    for bad in ["http://github.com", "git*.com", "a..b", "10.0.0.0/8"] {
        let e = one_line_error(&cairn(
            dir.path(),
            &["policy", "set", "plain", "--allow", bad],
            &[],
        ));
        assert!(e.contains("is not a domain pattern"), "{bad}: {e}");
    }
    let e = one_line_error(&cairn(
        dir.path(),
        &["policy", "set", "plain", "--preset", "nope"],
        &[],
    ));
    assert!(e.contains("no policy preset"), "{e}");
    let out = cairn(dir.path(), &["policy", "presets"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("dev"));
}

#[test]
fn a_policy_on_a_rootless_sandbox_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path()).unwrap();
    let paths = home.paths("rl");
    std::fs::create_dir_all(&paths.dir).unwrap();
    Registry::open(dir.path())
        .unwrap()
        .insert(&paths.record("rl", State::Stopped))
        .unwrap();
    let spec = cairn_sandbox::net::NetSpec {
        id: cairn_sandbox::net::net_id(dir.path(), "rl"),
        guest: "10.213.0.2".parse().unwrap(),
        gateway: "10.213.0.1".parse().unwrap(),
        prefix: 30,
        mac: "02:ca:0a:d5:00:02".into(),
        pool: "10.213.0.0/16".into(),
        upstream: vec![],
        rootless: true,
    };
    cairn_sandbox::net::save(&paths, &spec).unwrap();
    let e = one_line_error(&cairn(
        dir.path(),
        &["policy", "set", "rl", "--deny", "*"],
        &[],
    ));
    assert!(e.contains("was made without root"), "{e}");
    assert!(!cairn_sandbox::net::policy_path(&paths).exists());
}
