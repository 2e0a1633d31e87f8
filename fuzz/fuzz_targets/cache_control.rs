//! `Cache-Control` / `Surrogate-Control` through the storability decision: every delta capped at
//! 2^31 s, and the stored object's age, TTL, expiry and head encoding never overflow
//! (`vedge::fuzzing::check_cache_control`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vedge::fuzzing::check_cache_control(data);
});
