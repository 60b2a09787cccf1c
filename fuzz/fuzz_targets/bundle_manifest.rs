//! libFuzzer entry point of [`cks_fuzz::bundle_manifest`] (`make fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cks_fuzz::bundle_manifest(data));
