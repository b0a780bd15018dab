//! `cairn logs NAME [-f]`: the sandbox's `console.log` (guest serial output, VMM messages and
//! wake notices); with `-f`, followed until the sandbox is removed (or Ctrl-C).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::time::Duration;

use crate::sandbox::{io_err, Home, SandboxError};

/// Copy the console log of `name` to `out`; with `follow`, keep copying what is appended until
/// the sandbox's directory is gone.
pub fn logs(
    home: &Home,
    name: &str,
    follow: bool,
    out: &mut impl Write,
) -> Result<(), SandboxError> {
    let r = home.registry()?.get(name)?;
    let paths = home.paths(&r.name);
    let mut f = match File::open(&paths.console) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(format!("open {}", paths.console.display()))(e)),
    };
    let mut pos = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(file) = f.as_mut() {
            // A log that shrank (recreated) is read again from its start.
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if len < pos {
                pos = 0;
            }
            file.seek(SeekFrom::Start(pos))
                .map_err(io_err(format!("read {}", paths.console.display())))?;
            loop {
                let n = file
                    .read(&mut buf)
                    .map_err(io_err(format!("read {}", paths.console.display())))?;
                if n == 0 {
                    break;
                }
                pos += n as u64;
                out.write_all(&buf[..n])
                    .and_then(|()| out.flush())
                    .map_err(io_err("write logs"))?;
            }
        }
        if !follow || !paths.dir.exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
        if f.is_none() {
            f = File::open(&paths.console).ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::State;

    #[test]
    fn prints_the_console_log_and_follows_it() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path()).unwrap();
        assert!(logs(&home, "nope", false, &mut Vec::new()).is_err());
        let paths = home.paths("box");
        std::fs::create_dir_all(&paths.dir).unwrap();
        home.registry()
            .unwrap()
            .insert(&paths.record("box", State::Stopped))
            .unwrap();
        let mut out = Vec::new();
        logs(&home, "box", false, &mut out).unwrap();
        assert!(out.is_empty(), "no log yet");
        std::fs::write(&paths.console, b"booting\n").unwrap();
        logs(&home, "box", false, &mut out).unwrap();
        assert_eq!(out, b"booting\n");
        // Following: appended lines arrive; removing the sandbox ends it.
        let console = paths.console.clone();
        let sandbox_dir = paths.dir.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&console)
                .unwrap();
            f.write_all(b"later\n").unwrap();
            std::thread::sleep(Duration::from_millis(500));
            std::fs::remove_dir_all(&sandbox_dir).unwrap();
        });
        let mut followed = Vec::new();
        logs(&home, "box", true, &mut followed).unwrap();
        writer.join().unwrap();
        assert_eq!(followed, b"booting\nlater\n");
    }
}
