//! Idle stops take an automatic checkpoint each time (`ckpt-<unix ms>`, named by the VMM); left
//! alone they pile up. The rule: every named checkpoint is kept, and the newest
//! [`KEEP_AUTOMATIC`] automatic ones; older automatic ones are deleted (their layers merge into
//! their children, so every kept checkpoint stays restorable) when a sandbox stops.

use std::path::Path;
use std::time::Duration;

use crate::vmm_api;

/// Automatic checkpoints kept per sandbox (the newest ones).
pub const KEEP_AUTOMATIC: usize = 3;

/// Whether `name` is an automatic checkpoint's (`ckpt-` followed by digits only).
pub fn is_automatic(name: &str) -> bool {
    name.strip_prefix("ckpt-")
        .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
}

/// Of `names` (oldest first), the automatic checkpoints to delete so that `keep` remain, never
/// `head`.
pub fn to_prune<'a>(names: &[&'a str], keep: usize, head: Option<&str>) -> Vec<&'a str> {
    let auto: Vec<&str> = names.iter().copied().filter(|n| is_automatic(n)).collect();
    let excess = auto.len().saturating_sub(keep);
    auto.into_iter()
        .take(excess)
        .filter(|n| Some(*n) != head)
        .collect()
}

/// Delete the automatic checkpoints beyond [`KEEP_AUTOMATIC`] through the running VMM at `api`
/// (its head is never deleted). Returns the names deleted; best effort: a failure stops pruning.
pub fn prune_automatic(api: &Path, head: Option<&str>) -> Vec<String> {
    let Ok(list) = vmm_api::client(api, Duration::from_secs(30)).list_checkpoints() else {
        return Vec::new();
    };
    let names: Vec<&str> = list.iter().map(|c| c.name.as_str()).collect();
    let deleter = vmm_api::client(api, Duration::from_secs(120));
    let mut done = Vec::new();
    for n in to_prune(&names, KEEP_AUTOMATIC, head) {
        if deleter.delete_checkpoint(n).is_err() {
            break;
        }
        done.push(n.to_string());
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_named_ones_and_the_newest_automatic_ones() {
        assert!(is_automatic("ckpt-1733400000000"));
        for named in ["ckpt-", "ckpt-1a", "base", "ckpt_1", "my-ckpt-1"] {
            assert!(!is_automatic(named), "{named}");
        }
        let names = [
            "base", "ckpt-1", "ckpt-2", "mine", "ckpt-3", "ckpt-4", "ckpt-5",
        ];
        assert_eq!(to_prune(&names, 3, Some("ckpt-5")), ["ckpt-1", "ckpt-2"]);
        assert_eq!(to_prune(&names, 3, Some("ckpt-1")), ["ckpt-2"]);
        assert!(to_prune(&names, 10, None).is_empty());
        assert!(to_prune(&["a", "b"], 0, None).is_empty());
    }
}
