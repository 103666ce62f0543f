#![no_main]
//! cargo-fuzz target: the body is `peerlink_core::fuzzing::binary_envelope`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| peerlink_core::fuzzing::binary_envelope(data));
