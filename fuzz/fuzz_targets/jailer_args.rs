//! Fuzzes `cairn_jailer::args::parse` with arbitrary argument vectors: it must never panic, and whatever
//! it accepts must satisfy the checks the rest of the jailer relies on.
#![no_main]

use cairn_jailer::args::{parse, validate_id, Command};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Arguments are separated by NUL bytes, as in /proc/<pid>/cmdline.
    let argv: Vec<String> = data
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if let Ok(Command::Run(a)) = parse(&argv) {
        assert!(validate_id(&a.id).is_ok());
        assert!(a.chroot_base.is_absolute());
        assert!(!a
            .chroot_base
            .components()
            .any(|c| c == std::path::Component::ParentDir));
        assert!(a.exec_file.file_name().is_some());
        for c in &a.cgroups {
            assert!(!c.file.contains('/') && !c.controller().is_empty() && !c.value.contains('\n'));
        }
        if let Some(p) = &a.parent_cgroup {
            assert!(
                !p.starts_with('/') && !p.split('/').any(|c| c == ".." || c == "." || c.is_empty())
            );
        }
        let limits = a.effective_limits();
        assert!(limits
            .iter()
            .any(|l| l.kind == cairn_jailer::args::ResourceKind::NoFile));
        for b in &a.binds {
            for p in [&b.host, &b.jail] {
                assert!(p.is_absolute());
                assert!(!p.components().any(|c| matches!(
                    c,
                    std::path::Component::ParentDir | std::path::Component::CurDir
                )));
            }
            assert!(b.jail != std::path::Path::new("/") && !b.jail.starts_with("/dev"));
        }
        assert!(cairn_jailer::bind::check_overlaps(&a.binds).is_ok());
    }
});
