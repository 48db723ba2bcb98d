#![no_main]
//! Fuzz target: the properties in `fuzz/checks.rs` (`checks::body`).

#[path = "../checks.rs"]
#[allow(dead_code)] // each target uses one of the checks
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::body(data));
