#![no_main]
//! cargo-fuzz target: the body is `peerlink_core::fuzzing::endpoints`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| peerlink_core::fuzzing::endpoints(data));
