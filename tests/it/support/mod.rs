//! Shared test support: a scripted origin (`origin`), a cleartext h2 origin that can send
//! GOAWAY mid-stream (`h2_origin`), a raw-TCP origin that frames requests as
//! nginx does (`strict_origin`), an https origin (`tls_origin`), EdgeAuth tokens and a token-route edge (`token`), an in-process edge launcher with
//! a client (`edge`) and a launcher for the real `vedge` binary (`binary`). All bind
//! `127.0.0.1:0` (the binary: free loopback ports) and stop on drop.

#![allow(dead_code)] // Each feature file uses a different part of the toolkit.

pub mod binary;
pub mod edge;
pub mod h2_origin;
pub mod origin;
pub mod strict_origin;
pub mod tls_origin;
pub mod token;

pub use edge::{edge_config, ttl, until, TestEdge};
pub use origin::{Fault, Gate, Origin, Script};
