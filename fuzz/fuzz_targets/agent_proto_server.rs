//! The agent's side of the wire: arbitrary bytes from a client, read as the agent reads them
//! (hello, then client messages until the stream ends or breaks). Nothing may panic, allocate
//! more than a frame, or decode into something that does not re-encode to the same message.
#![no_main]

use cairn_agent::proto::{join_relative, ClientMsg, FrameReader, FrameWriter, Hello, TreeMsg};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let mut reader = FrameReader::new(data);
    if let Ok(Some(hello)) = reader.read::<Hello>() {
        let _ = hello.check();
    }
    while let Ok(Some(msg)) = reader.read::<ClientMsg>() {
        if let ClientMsg::Tree(TreeMsg::Entry { path, .. }) = &msg {
            if let Ok(joined) = join_relative(Path::new("/dest"), path) {
                assert!(
                    joined.starts_with("/dest"),
                    "{path:?} escaped to {joined:?}"
                );
            }
        }
        let mut w = FrameWriter::new(Vec::new());
        w.write(&msg).expect("a decoded message re-encodes");
        let again: ClientMsg = FrameReader::new(w.get_ref().as_slice())
            .read()
            .unwrap()
            .unwrap();
        assert_eq!(again, msg);
    }
});
