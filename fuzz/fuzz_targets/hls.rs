//! HLS walker: any bytes as a playlist -> no panic, objects unique, in scope, bounded.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vedge_manifest::fuzzing::check_hls(data);
});
