//! Fuzz the VMM's config file parser (`--config-file`, Firecracker's JSON plus cairn's keys): no
//! input may panic; a config that parses must validate or be refused with a message.
#![no_main]

use cairn_vmm::config::parse_vm_config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(cfg) = parse_vm_config(&text) {
        // A config that parsed re-serializes and parses again.
        let json = serde_json::to_string(&cfg).expect("a parsed config serializes");
        let _ = parse_vm_config(&json);
    }
});
