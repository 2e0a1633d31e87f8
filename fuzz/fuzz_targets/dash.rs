//! DASH walker: any bytes as an MPD -> no panic, expansion within budget, objects in scope.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vedge_manifest::fuzzing::check_dash(data);
});
