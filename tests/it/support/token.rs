//! EdgeAuth tokens for token-route tests: one key, tokens valid now, and an edge whose `/v/`
//! route checks them.

use std::time::{SystemTime, UNIX_EPOCH};

use vedge::auth::edgeauth::{generate, TokenSpec};
use vedge::config::{RawRoute, RawToken, TokenAlgorithm};

use crate::support::{edge_config, Origin, TestEdge};

/// The token routes' key (hex).
pub const KEY: &str = "7a5c2be9f42a1f32cd889d1cf775f05d0cd162bd2871d00fe705ab28c9bba5a5";

pub fn hex(k: &str) -> Vec<u8> {
    (0..k.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&k[i..i + 2], 16).expect("hex"))
        .collect()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// A token for `acl`, valid from a minute ago for an hour; `id` makes otherwise equal tokens
/// distinct.
pub fn token_for(acl: &str, id: Option<&str>) -> String {
    token_with(&TokenSpec {
        start: Some(now() - 60),
        exp: now() + 3600,
        acl: vec![acl],
        id,
        ..TokenSpec::default()
    })
}

pub fn token_with(spec: &TokenSpec<'_>) -> String {
    generate(spec, &hex(KEY), TokenAlgorithm::Sha256)
}

/// A route token config with `KEY` and the defaults.
pub fn raw_token() -> RawToken {
    RawToken {
        key: Some(KEY.into()),
        ..RawToken::default()
    }
}

/// An edge in front of `origin` whose `/v/` route checks tokens configured as `t`.
pub async fn token_edge(origin: &Origin, t: RawToken) -> TestEdge {
    let mut raw = edge_config(origin);
    raw.routes.push(RawRoute {
        prefix: "/v/".into(),
        origin: origin.url(),
        token: Some(t),
        ..RawRoute::default()
    });
    TestEdge::start(raw).await
}
