//! The host client's side of the wire: arbitrary bytes from a (possibly hostile) guest, read as
//! the client reads them (hello, then agent messages). Tree paths from the guest must never
//! resolve outside the destination.
#![no_main]

use cairn_agent::proto::{join_relative, AgentMsg, FrameReader, FrameWriter, Hello, TreeMsg};
use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path};

fuzz_target!(|data: &[u8]| {
    let mut reader = FrameReader::new(data);
    if let Ok(Some(hello)) = reader.read::<Hello>() {
        let _ = hello.check();
    }
    while let Ok(Some(msg)) = reader.read::<AgentMsg>() {
        if let AgentMsg::Tree(TreeMsg::Entry { path, .. }) = &msg {
            if let Ok(joined) = join_relative(Path::new("/dest"), path) {
                let rest = joined
                    .strip_prefix("/dest")
                    .expect("stays under the destination");
                assert!(
                    rest.components().all(|c| matches!(c, Component::Normal(_))),
                    "{path:?}"
                );
            }
        }
        let mut w = FrameWriter::new(Vec::new());
        w.write(&msg).expect("a decoded message re-encodes");
        let again: AgentMsg = FrameReader::new(w.get_ref().as_slice())
            .read()
            .unwrap()
            .unwrap();
        assert_eq!(again, msg);
    }
});
