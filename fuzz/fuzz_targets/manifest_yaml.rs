//! libFuzzer entry point of [`cks_fuzz::manifest_yaml`] (`make fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cks_fuzz::manifest_yaml(data));
