#![no_main]
//! cargo-fuzz target: the body is `peerlink_core::fuzzing::envelope`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| peerlink_core::fuzzing::envelope(data));
