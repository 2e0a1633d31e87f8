//! The admin listener: `/metrics` (Prometheus text) and `/healthz` open; purge (`purge.rs`)
//! and push (`ingest.rs`) behind a bearer token. Runs on its own listener so viewers never reach it.

pub mod fanout;
pub mod ingest;
mod origins;
pub mod purge;

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::body::Body;
use crate::http::conn::{self, Activity, Watched};
use crate::http::response::{not_allowed, text};
use crate::http::server::builder;
use crate::proxy::Edge;

/// Serves the admin API until `shutdown`.
pub async fn serve(edge: Arc<Edge>, listener: TcpListener, shutdown: CancellationToken) {
    // Ingest jobs live as long as the listener.
    let jobs = Arc::new(ingest::IngestJobs::default());
    // Connection tasks: shutdown returns once each has finished its response and closed (or
    // the grace period cut it), like the viewer listener.
    let tasks = TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: the connection stays queued and the next accept
                    // fails at once, so back off instead of spinning a core (as the viewer
                    // accept loop does).
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => continue,
                    }
                }
            },
        };
        let activity = Activity::new();
        let svc = {
            let (edge, jobs, activity) = (edge.clone(), jobs.clone(), activity.clone());
            service_fn(move |req| {
                let (edge, jobs) = (edge.clone(), jobs.clone());
                // Admin bodies are whole (or a job handle): the request ends with the handler.
                let in_flight = activity.request(false, false, None);
                async move {
                    let resp = handle(edge, jobs, req).await;
                    drop(in_flight);
                    Ok::<_, Infallible>(resp)
                }
            })
        };
        let shutdown = shutdown.clone();
        let edge = edge.clone();
        tasks.spawn(async move {
            // The viewer listener's limits with the admin's own timeouts: a scraper or script
            // that opens a connection and sends nothing is closed like any slow client.
            let t = &edge.config.admin.timeouts;
            let builder = builder(
                t,
                &edge.config.server.h2,
                edge.config.server.max_header_size,
                0,
            );
            let io = Watched::new(stream, activity.clone());
            let conn = builder.serve_connection(TokioIo::new(io), svc);
            tokio::pin!(conn);
            let served = async {
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = shutdown.cancelled() => {
                        // Finish the request in flight (h1: no more keep-alive; h2: GOAWAY),
                        // within the grace period; dropped past it, the socket closes.
                        conn.as_mut().graceful_shutdown();
                        let grace = edge.config.server.shutdown_grace;
                        let _ = tokio::time::timeout(grace, conn.as_mut()).await;
                    }
                }
            };
            conn::guard(served, &activity, t, &edge.metrics.limits).await;
        });
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::full(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Whether the request carries the configured bearer token (constant-time compare). The scheme
/// is case-insensitive (RFC 9110 §11.1: `bearer`, `BEARER`) and one or more spaces follow it
/// (§11.4).
fn authorized(edge: &Edge, req: &Request<Incoming>) -> bool {
    let Some(token) = edge.config.admin.token.as_deref() else {
        return false;
    };
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, credentials)| credentials.trim_start_matches(' '))
    else {
        return false;
    };
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn handle(
    edge: Arc<Edge>,
    jobs: Arc<ingest::IngestJobs>,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        // HEAD as GET (RFC 9110 §9.3.2: load balancers check health with either); hyper sends
        // a HEAD's head only.
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let mut out = String::new();
            edge.metrics.render(&mut out);
            let _ = writeln!(
                out,
                "# TYPE vedge_ram_bytes gauge\nvedge_ram_bytes {}\n# TYPE vedge_ram_objects gauge\nvedge_ram_objects {}\n# TYPE vedge_ram_capacity_bytes gauge\nvedge_ram_capacity_bytes {}\n# TYPE vedge_fills_in_flight gauge\nvedge_fills_in_flight {}\n# TYPE vedge_zero_copy_bodies gauge\nvedge_zero_copy_bodies {}\n# TYPE vedge_splice_bytes_total counter\nvedge_splice_bytes_total {}\n# TYPE vedge_splice_pipes gauge\nvedge_splice_pipes {}\n# TYPE vedge_zero_copy_fallbacks_total counter\nvedge_zero_copy_fallbacks_total {}\n# TYPE vedge_zero_copy_map_budget gauge\nvedge_zero_copy_map_budget {}",
                edge.ram.bytes(),
                edge.ram.len(),
                edge.ram.capacity(),
                edge.fills.len(),
                edge.zero_copy.live(),
                edge.zero_copy.splice_bytes(),
                edge.zero_copy.pipes(),
                edge.zero_copy.fallbacks(),
                edge.zero_copy.map_budget()
            );
            let zc = &edge.zero_copy;
            let _ = writeln!(
                out,
                "# TYPE vedge_zero_copy_mappings gauge\nvedge_zero_copy_mappings {}\n# TYPE vedge_zero_copy_fd_budget gauge\nvedge_zero_copy_fd_budget {}",
                zc.mappings(),
                zc.fd_budget()
            );
            let _ = writeln!(
                out,
                "# TYPE vedge_live_state_bytes gauge\nvedge_live_state_bytes {}",
                edge.live.state_bytes()
            );
            if let Some(store) = &edge.store {
                render_store(&store.stats(), &mut out);
            }
            edge.origin.render_metrics(&mut out);
            text(StatusCode::OK, crate::metrics::with_help(&out))
        }
        _ if path.starts_with("/admin/") => {
            if !authorized(&edge, &req) {
                let mut r = text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                return r;
            }
            if ingest::is_route(&path) {
                return ingest::handle(&edge, &jobs, req)
                    .await
                    .unwrap_or_else(|| text(StatusCode::NOT_FOUND, "no such admin endpoint\n"));
            }
            admin(edge, req).await
        }
        (_, "/healthz" | "/metrics") => not_allowed("GET, HEAD"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn admin(edge: Arc<Edge>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET | Method::HEAD, "/admin/origins") => origins::handle(&edge),
        (Method::POST, "/admin/purge") => {
            // Bounded: a purge body is a list of URLs, not a payload. A declared length past
            // the bound is refused before a byte is read.
            const MAX_BODY: usize = 4 << 20;
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > MAX_BODY as u64) {
                return text(StatusCode::PAYLOAD_TOO_LARGE, "purge body: 4 MiB at most\n");
            }
            let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
            let body = match limited.collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    return text(StatusCode::PAYLOAD_TOO_LARGE, "purge body: 4 MiB at most\n")
                }
                Err(_) => return text(StatusCode::BAD_REQUEST, "unreadable purge body\n"),
            };
            match purge::purge(&edge, &body).await {
                // A fan-out that missed a node is not a success: 502 with the per-node report.
                Ok(v) if v["fanout"]["ok"] == false => json(StatusCode::BAD_GATEWAY, v),
                Ok(v) => json(StatusCode::OK, v),
                Err((status, msg)) => text(status, format!("{msg}\n")),
            }
        }
        (_, "/admin/origins") => not_allowed("GET, HEAD"),
        (_, "/admin/purge") => not_allowed("POST"),
        _ => text(StatusCode::NOT_FOUND, "no such admin endpoint\n"),
    }
}

/// The SSD store's counters and gauges in Prometheus text format.
fn render_store(st: &vedge_storage::StoreStats, out: &mut String) {
    let gauges = [
        ("vedge_store_objects", st.objects),
        ("vedge_store_bytes", st.bytes),
        ("vedge_store_pinned_bytes", st.pinned_bytes),
        ("vedge_store_regions", u64::from(st.regions)),
        ("vedge_store_regions_in_use", u64::from(st.regions_in_use)),
        ("vedge_store_index_bytes", st.index_bytes),
        ("vedge_store_purge_marks", st.purge_marks),
    ];
    for (name, v) in gauges {
        let _ = writeln!(out, "# TYPE {name} gauge\n{name} {v}");
    }
    let counters = [
        ("vedge_store_hits_total", st.hits),
        ("vedge_store_misses_total", st.misses),
        ("vedge_store_regions_evicted_total", st.regions_evicted),
        ("vedge_store_skipped_writes_total", st.skipped_writes),
        ("vedge_store_bytes_written_total", st.bytes_written),
        ("vedge_store_reinsertions_total", st.reinsertions),
        ("vedge_store_evictions_total", st.evictions),
        ("vedge_store_corrupt_reads_total", st.corrupt_reads),
        ("vedge_store_read_errors_total", st.read_errors),
        ("vedge_store_pinned_lost_total", st.pinned_lost),
        ("vedge_store_refused_writes_total", st.refused_writes),
        ("vedge_store_write_errors_total", st.write_errors),
    ];
    for (name, v) in counters {
        let _ = writeln!(out, "# TYPE {name} counter\n{name} {v}");
    }
    let _ = writeln!(
        out,
        "# TYPE vedge_store_info gauge\nvedge_store_info{{engine=\"{:?}\",direct_io=\"{}\"}} 1",
        st.engine, st.direct_io
    );
}
