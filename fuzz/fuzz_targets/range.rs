//! `Range` on a cached object: a resolved range lies inside the object, and the response is 206
//! with exactly those bytes, 416, or 200 with everything (`vedge::fuzzing::check_range`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vedge::fuzzing::check_range(data);
});
