//! vedge: a CDN edge server for HLS and DASH video.
//!
//! Module map:
//! - `config`: raw TOML + CLI -> validated `Config`.
//! - `cli`: the command-line definitions (parsed only in main.rs).
//! - `http`: the viewer side: hyper server, request handling, ranges, responses.
//! - `cache`: keys, policy, collapsing (`lock`), the RAM tier, cached objects.
//! - `origin`: pooled origin client with timeouts, retries, Via and CDN-Loop.
//! - `admin`: admin listener: metrics, health, purge, ingest.
//! - `demo`: the built-in sample origin behind `vedge demo`.
//! - `manifest`, `ingest`: HLS/DASH walking and push pre-warming.
//! - `bench`: the live-burst harness and the live origin simulator.

pub mod bench;
pub mod cache;
pub mod cli;
pub mod config;
pub mod ingest;
pub mod manifest;
