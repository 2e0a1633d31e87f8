//! The miss path in one room: the edge's shared state (`edge`), the tiers under it (`tiers`:
//! RAM over the SSD store), the request state machine (`request`), the fill driver that fetches
//! from the origin once per key and streams into the fill (`fill`), pass-through (`pass`),
//! what a request names (`target`: validated host, normalised path, route, key), signed URLs
//! (`signed`: the token check before the cache, and the token carried into manifests, whose
//! content coding `coding` undoes),
//! a 508 caused by a leader's own `CDN-Loop` kept from its collapsed viewers (`loop_answer`),
//! invalidation by unsafe methods (`invalidate`), admission priority under load (`admission`),
//! the live edge (`llhls`: LL-HLS blocking reloads and live-window retention; `prefetch`:
//! fetching what live manifests announce) and request errors (`error`); `assets`
//! remembers which objects the stored manifests reference (purge by asset); `vary_cap` bounds
//! the `Vary` variants stored per object. The viewer side
//! (`http`) calls in through `http::server::Handler`; nothing here accepts connections, and
//! only `origin` opens outbound ones.

/// Manifests up to this size are read on the worker that stored them: the asset index's
/// references (`tiers`) and the LL-HLS scan and prefetch planning (`llhls`). Larger ones are
/// read on the blocking pool: reading costs time in their size (a playlist of 300,000 segments
/// held a worker, and every viewer on it, for a good part of a second), while the live playlists
/// whose prompt reading matters are kilobytes.
pub const READ_INLINE: usize = 256 << 10;

pub mod admission;
pub mod assets;
pub mod chain_limit;
pub mod coding;
pub mod compress;
pub mod edge;
pub mod error;
pub mod fill;
pub mod fill_limit;
pub mod hint_range;
pub mod invalidate;
pub mod llhls;
pub mod loop_answer;
pub mod pass;
pub mod per_viewer;
pub mod prefetch;
pub mod range_pass;
pub mod request;
pub mod signed;
pub mod slice;
pub mod spelling;
pub mod target;
pub mod tiers;
pub mod vary_cap;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::config::ServerConfig;
use crate::http::body::Body;
use crate::http::limits::Limits;
use crate::http::server::Handler;
use crate::metrics::Metrics;
use crate::zerocopy::ZeroCopy;

pub use edge::Edge;
pub use tiers::Tier;

impl Handler for Arc<Edge> {
    fn handle(
        &self,
        req: Request<Incoming>,
        peer: Option<SocketAddr>,
    ) -> impl Future<Output = Response<Body>> + Send {
        request::handle(self, req, peer)
    }

    fn server_config(&self) -> &ServerConfig {
        &self.config.server
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn zero_copy(&self) -> &Arc<ZeroCopy> {
        &self.zero_copy
    }

    fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }
}
