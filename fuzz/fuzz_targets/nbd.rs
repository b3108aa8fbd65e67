#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qcow_fuzz::nbd(data));
