//! `NodeConfig::parse` on arbitrary text: never panics, and every error
//! displays (without panicking) starting with the file name it was given.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use plebnet::config::NodeConfig;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(err) = NodeConfig::parse(Path::new("fuzz.toml"), &text) {
        let shown = err.to_string();
        assert!(shown.starts_with("fuzz.toml"), "error does not name the file: {shown:?}");
    }
});
