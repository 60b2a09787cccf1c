//! libFuzzer entry point of [`cks_fuzz::api_request`] (`make fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cks_fuzz::api_request(data));
