//! The link's JSON messages (both directions): anything a peer sends is
//! either refused or decodes to a message that encodes and decodes back to
//! itself, and whose accessors (`ctrl`, `fd_count`) and version check work.
#![no_main]

use leapio_link::proto::{check_version, ToHost, ToRuntime};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = serde_json::from_slice::<ToHost>(data) {
        assert_eq!(m.fd_count(), 0);
        if let ToHost::Hello {
            major,
            minor,
            software,
        } = &m
        {
            let _ = check_version(*major, *minor, software, "leapio-fuzz");
        }
        let bytes = serde_json::to_vec(&m).expect("encode");
        let back: ToHost = serde_json::from_slice(&bytes).expect("decode what we encoded");
        assert_eq!(back, m);
    }
    if let Ok(m) = serde_json::from_slice::<ToRuntime>(data) {
        let _ = m.ctrl();
        assert!(m.fd_count() <= leapio_link::frame::MAX_FDS);
        let bytes = serde_json::to_vec(&m).expect("encode");
        let back: ToRuntime = serde_json::from_slice(&bytes).expect("decode what we encoded");
        assert_eq!(back, m);
    }
});
