//! `Age`, `Expires` and `Date`: an `Age` is read only when it is a whole number, every lifetime is
//! capped at 2^31 s, and the stored object never overflows a time
//! (`vedge::fuzzing::check_age_expires`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vedge::fuzzing::check_age_expires(data);
});
