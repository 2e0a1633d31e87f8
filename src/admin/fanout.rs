//! Fan-out purge (`"fanout": true`): the same purge sent to every `[cluster]` node's admin API,
//! shields first, then edges — an edge purged before its shield would refill the stale copy
//! from it. Each node is reported with its outcome and time; a node that is down or refuses is
//! a failure in the report, never skipped.

use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Request};
use http_body_util::BodyExt;

use crate::config::{ClusterNode, ClusterRole, OriginTls};
use crate::http::body::Body;
use crate::origin::Target;
use crate::proxy::Edge;

/// A node's answer is read up to this size (it is a small JSON report).
const MAX_ANSWER: usize = 64 << 10;

/// The nodes' reports of one fan-out, phase by phase.
pub struct Fanout {
    body: bytes::Bytes,
    /// The purge's `soft`: a node's answer must say the same.
    soft: bool,
    nodes: Vec<serde_json::Value>,
}

/// The purge API's own answer (`purge::purge`), which only a node that ran the purge sends: a
/// 2xx without it (a proxy's `204`, a portal's HTML page) purged nothing.
#[derive(serde::Deserialize)]
struct NodeAnswer {
    purged: u64,
    soft: bool,
    /// Required to be there; its counts are the node's business.
    #[serde(rename = "selected")]
    _selected: serde_json::Map<String, serde_json::Value>,
}

/// At most this much of an answer that is not the purge API's goes into the report.
const ANSWER_EXCERPT: usize = 200;

impl Fanout {
    /// `body` is forwarded with `fanout` turned off, so the nodes do not fan out again.
    pub fn new(body: &[u8]) -> Fanout {
        let mut forwarded: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        if let Some(obj) = forwarded.as_object_mut() {
            obj.insert("fanout".into(), false.into());
        }
        Fanout {
            soft: forwarded["soft"].as_bool().unwrap_or(false),
            body: bytes::Bytes::from(forwarded.to_string()),
            nodes: Vec::new(),
        }
    }

    /// Purges every `[cluster]` node of `role`, concurrently, and records their outcomes.
    pub async fn phase(&mut self, edge: &Edge, role: ClusterRole) {
        let phase = edge
            .config
            .tier
            .cluster
            .nodes
            .iter()
            .filter(|n| n.role == role)
            .map(|n| purge_node(edge, n, self.body.clone(), self.soft));
        self.nodes
            .extend(futures_util::future::join_all(phase).await);
    }

    /// The report: `ok` only when every node purged.
    pub fn report(self) -> serde_json::Value {
        let ok = self.nodes.iter().all(|n| n["ok"] == true);
        serde_json::json!({ "ok": ok, "nodes": self.nodes })
    }
}

/// Whether this node is an edge of a tier (it has shields): then its own purge waits for the
/// shields', like every other edge's; a shield (or a lone node) purges itself first.
pub fn local_after_shields(edge: &Edge) -> bool {
    edge.config.tier.shield.is_some()
}

/// One node's purge, bounded by `[cluster] timeout`.
async fn purge_node(
    edge: &Edge,
    node: &ClusterNode,
    body: bytes::Bytes,
    soft: bool,
) -> serde_json::Value {
    let started = Instant::now();
    let timeout = edge.config.tier.cluster.timeout;
    let outcome = tokio::time::timeout(timeout, send(edge, node, body)).await;
    let ms = started.elapsed().as_millis() as u64;
    let mut report = serde_json::json!({
        "admin": node.admin.as_str().trim_end_matches('/'),
        "role": node.role.as_str(),
        "ms": ms,
    });
    let (ok, extra) = match outcome {
        Err(_) => (
            false,
            serde_json::json!({ "error": format!("no answer in {timeout:?}") }),
        ),
        Ok(Err(e)) => (false, serde_json::json!({ "error": e })),
        Ok(Ok((status, answer))) => {
            let mut extra = serde_json::json!({ "status": status });
            // Success is the purge API's own report, not any 2xx: something else answering
            // at the node's address (a proxy, a portal) purged nothing.
            let ok = if !(200..300).contains(&status) {
                extra["error"] = String::from_utf8_lossy(&answer).trim().into();
                false
            } else {
                match serde_json::from_slice::<NodeAnswer>(&answer) {
                    Ok(a) if a.soft == soft => {
                        extra["purged"] = a.purged.into();
                        true
                    }
                    Ok(_) => {
                        extra["error"] =
                            "the node answered for a purge of another kind (soft)".into();
                        false
                    }
                    Err(_) => {
                        extra["error"] = format!(
                            "answered {status} without the purge API's report (is something \
                             other than the node's admin API at this address?): {:?}",
                            excerpt(&answer)
                        )
                        .into();
                        false
                    }
                }
            };
            (ok, extra)
        }
    };
    report["ok"] = ok.into();
    if let (Some(r), Some(e)) = (report.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    if !ok {
        tracing::warn!(node = node.admin.as_str(), report = %report, "fan-out purge failed on a node");
    }
    report
}

/// The start of an answer, for the report.
fn excerpt(answer: &[u8]) -> String {
    let text = String::from_utf8_lossy(answer);
    let text = text.trim();
    match text.char_indices().nth(ANSWER_EXCERPT) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

async fn send(
    edge: &Edge,
    node: &ClusterNode,
    body: bytes::Bytes,
) -> Result<(u16, bytes::Bytes), String> {
    let target = Target::new(
        &node.admin,
        &edge.config.origin_client,
        &OriginTls::default(),
        0,
    )
    .map_err(|e| format!("{e:#}"))?;
    let mut req = Request::new(Body::full(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = target
        .uri("/admin/purge")
        .map_err(|_| "bad admin URL".to_string())?;
    let h = req.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let auth = HeaderValue::from_str(&format!("Bearer {}", node.token))
        .map_err(|_| "token is not a header value".to_string())?;
    h.insert(header::AUTHORIZATION, auth);
    let resp = target
        .client
        .request(req)
        .await
        .map_err(|e| format!("unreachable: {e}"))?;
    let status = resp.status().as_u16();
    let answer = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("answer unreadable: {e}"))?
        .to_bytes();
    Ok((status, answer))
}
