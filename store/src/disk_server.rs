//! The server side of disk files filled on first read ([`cairn_snapshot::disk::served`]): one
//! VMM's connection, answered from a [`LazySet`].
//!
//! The VMM asks for a range of a file by (device, inode) before it reads it; the server makes
//! every chunk the range touches present (chunk cache, else bucket, checked against its name,
//! written into the sparse file) and answers. A range it cannot have is answered with the
//! reason, which names the sandbox, checkpoint and chunk: the guest's read then fails with an
//! I/O error, and the file is left as it was (never zeros or wrong bytes for that chunk).

use std::io::{self, BufReader};
use std::os::unix::net::UnixStream;

use cairn_snapshot::disk::served::{
    recv_line, send_line, DiskHello, FetchReply, FetchRequest, ServedFile,
};
use cairn_snapshot::disk::FileId;

use crate::chunk::CHUNK_SIZE;
use crate::lazy::{LazySet, Why};

/// Serve one VMM on `stream` until it closes the connection (`Ok`). `on_error` hears each
/// range that could not be had (already prefixed with `context`), before the VMM does.
pub fn serve(
    stream: UnixStream,
    set: &LazySet<'_>,
    context: &str,
    on_error: &dyn Fn(&str),
) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let hello = DiskHello {
        granule: CHUNK_SIZE,
        files: set
            .files()
            .map(|(_, (dev, ino), size)| ServedFile {
                id: FileId { dev, ino },
                size,
            })
            .collect(),
    };
    send_line(&mut writer, &hello)?;
    while let Some(req) = recv_line::<FetchRequest>(&mut reader)? {
        let result = match set.find_id(req.id.dev, req.id.ino) {
            // A file the hello did not list: present, nothing to do.
            None => Ok(()),
            Some(i) => set
                .ensure(i, req.offset, req.len, Why::DiskRead)
                .map_err(|e| format!("{context}: {e}")),
        };
        let error = result.err();
        if let Some(why) = &error {
            on_error(why);
        }
        send_line(&mut writer, &FetchReply { error })?;
    }
    Ok(())
}
