//! libFuzzer entry point of [`cks_fuzz::iso_reader`] (`make fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cks_fuzz::iso_reader(data));
