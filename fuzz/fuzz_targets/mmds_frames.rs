//! Fuzz the MMDS network stack: the input is a run of guest frames (each a 2-byte length and
//! the bytes), fed to one stack with a data store, every frame MMDS has for the guest drained
//! after each, the clock moving on. Frames that look like MMDS's get through the quick check
//! (the second byte's low bit picks the MMDS address or another as the destination). Nothing
//! may panic, and MMDS must stop sending in a bounded number of frames.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_devices::mmds::{Mmds, MmdsStack, MmdsVersion};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, mut rest)) = data.split_first() else {
        return;
    };
    let Ok(mut store) = Mmds::new(4096) else {
        return;
    };
    let _ = store.put_data(serde_json::json!({"latest": {"meta-data": {"ami-id": "ami-1"}}}));
    if ctl & 1 != 0 {
        store.set_version(MmdsVersion::V2);
    }
    let ip = Ipv4Addr::new(169, 254, 169, 254);
    let mut stack = MmdsStack::new(ip, Arc::new(Mutex::new(store)));
    let mut now = Instant::now();
    let mut out = vec![0u8; 65536];
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let frame = &rest[2..2 + len];
        rest = &rest[2 + len..];
        if stack.is_mmds_frame(frame) {
            stack.detour_frame(frame, now);
        }
        let mut sent = 0;
        while let Some(n) = stack.write_next_frame(&mut out, now) {
            assert!(n <= out.len());
            sent += 1;
            assert!(sent < 10_000, "MMDS keeps sending");
        }
        now += Duration::from_millis(u64::from(ctl) * 10);
    }
});
