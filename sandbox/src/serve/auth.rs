//! The bearer token: made on first start, kept 0600 in `CAIRN_HOME`, checked in constant time.

use super::{io_err, ServeError};
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The token's file name in `CAIRN_HOME`.
pub const TOKEN_FILE: &str = "serve.token";

/// Reads `$CAIRN_HOME/serve.token`, making it (32 random bytes, hex) if missing. A token file
/// that others can read is narrowed to 0600.
pub fn load_or_make_token(home: &Path) -> Result<String, ServeError> {
    let path = home.join(TOKEN_FILE);
    match fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => {
            let mode = fs::metadata(&path)
                .map_err(io_err(format!("stat {}", path.display())))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                eprintln!(
                    "cairn serve: {} was readable by others; narrowed to 0600",
                    path.display()
                );
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                    .map_err(io_err(format!("chmod {}", path.display())))?;
            }
            return Ok(t.trim().to_string());
        }
        _ => {}
    }
    let mut raw = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(io_err("read /dev/urandom"))?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = home.join(format!("{TOKEN_FILE}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(format!("create {}", tmp.display())))?;
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, &path).map_err(io_err(format!("rename to {}", path.display())))?;
    Ok(token)
}

/// Compares two tokens without an early exit on the first differing byte.
pub fn same_token(given: &str, want: &str) -> bool {
    let (a, b) = (given.as_bytes(), want.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let t = load_or_make_token(dir.path()).unwrap();
        assert_eq!(t.len(), 64);
        let path = dir.path().join(TOKEN_FILE);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_or_make_token(dir.path()).unwrap(), t);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_make_token(dir.path()).unwrap(), t);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abd", "abc"));
        assert!(!same_token("ab", "abc"));
        assert!(!same_token("", "abc"));
    }
}
