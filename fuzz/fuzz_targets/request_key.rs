//! Host + path normalisation and the cache key: idempotent, no delimiter or dot segment left,
//! a key splits back into its parts, and two requests share a key only when their normalised
//! parts are equal (`vedge::fuzzing::check_key`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vedge::fuzzing::check_key(data);
});
