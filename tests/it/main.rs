//! The integration-test binary: real servers on `127.0.0.1:0`, one module per feature.
//! `support` holds the scripted origin and the edge launcher shared by all of them.

mod support;

mod abuse;
mod adversarial;
mod adversarial2;
mod adversarial3;
mod adversarial4;
mod adversarial5;
mod adversarial6;
mod adversarial7;
mod adversarial8;
mod cmcd;
mod conformance;
mod conformance2;
mod conformance5;
mod cors;
mod edge_basics;
mod edge_bypass;
mod edge_collapse;
mod edge_faults;
mod edge_freshness;
mod edge_ranges;
mod edge_store;
mod edge_vary;
mod edge_zerocopy;
mod https_origin;
mod ingest;
mod limits;
mod llhls;
mod module_graph;
mod origin_groups;
mod origin_trickle;
mod preconnect;
mod prefetch;
mod purge;
mod security;
mod semantics;
mod shutdown;
mod slices;
mod tier;
mod tier_hostile;
mod tier_prefetch;
mod tls;
mod tokens;
mod zerocopy_budget;
