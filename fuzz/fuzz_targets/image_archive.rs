//! libFuzzer entry point of [`cks_fuzz::image_archive`] (`make fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cks_fuzz::image_archive(data));
