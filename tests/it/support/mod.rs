//! Shared test support: a scripted origin (`origin`) and an edge launcher with a client
//! (`edge`). Both bind `127.0.0.1:0` and stop on drop.

#![allow(dead_code)] // Each feature file uses a different part of the toolkit.

pub mod edge;
pub mod origin;

pub use edge::{edge_config, ttl, until, TestEdge};
pub use origin::{Fault, Gate, Origin, Script};
