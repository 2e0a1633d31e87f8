//! vedge-storage integration tests: one binary, a file per concern. Every store test runs on
//! both engines (io_uring and psync) through `support::ENGINES`.

mod support;

mod admission;
mod crash;
mod eviction;
mod faults;
mod purge;
mod read_memory;
mod reclaim;
mod roundtrip;
