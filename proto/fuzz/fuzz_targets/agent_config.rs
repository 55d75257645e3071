//! Any text through the agent's config parser (`Config::parse`: TOML, strict, validated; it
//! reads no file): never panics, and every refusal names the file it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_agent::Config;

const ORIGIN: &str = "/etc/outpost/agent.toml";

fuzz_target!(|data: &[u8]| {
    // The agent reads its config with `read_to_string`: only valid UTF-8 reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::parse(text, ORIGIN) {
        let msg = e.to_string();
        assert!(msg.contains(ORIGIN), "error does not name the file: {msg}");
    }
});
