//! The shield tier: every cache key is owned by one shield node (rendezvous hashing over
//! `[shield] nodes`, the same order function as origin groups' `hash` policy, so adding or
//! removing a node moves only ~1/N of the keys); a fill asks the key's healthy shields in hash
//! order, then (unless `on_all_down = "error"`) the route's own origin group.
//!
//! A shield is an ordinary vedge with the same routes (less `hosts` and `[route.token]`, which
//! the edges check): it gets the viewer's path and the `Host` the edge's route sends its
//! origin, so it builds the same key and collapses the edges' fills into one origin fill. Each shield is a `Target` with its own pool, passive ejection and
//! optional health checks; its `Host` is never rewritten to the shield's own address.

use std::sync::Arc;

use crate::config::{AllDown, Eject, OriginClientConfig, OriginTls, Route, ShieldConfig};
use crate::origin::group::{rendezvous_order, Group, Upstream};
use crate::origin::target::Target;

/// The shield nodes of this edge and how they are used.
pub struct Shield {
    pub cfg: ShieldConfig,
    pub nodes: Vec<Arc<Target>>,
}

impl Shield {
    /// `max_connections`: `origin_client.max_connections_per_origin`, which caps this edge's
    /// connections to each node as to each origin, and so sizes each node's pass slots
    /// (`pass_limit`): one viewer's passes through the tier hold at most their client's share
    /// of the connections to a shield (an edge is an allowed peer there, with no share of its
    /// own), and passes as a whole leave a quarter to fills.
    pub fn new(
        cfg: &ShieldConfig,
        client: &OriginClientConfig,
        max_connections: usize,
    ) -> anyhow::Result<Shield> {
        let nodes = cfg
            .nodes
            .iter()
            .map(|u| {
                let mut t = Target::new(u, client, &OriginTls::default(), max_connections)?;
                // The fill's own `Host` (the route's) goes through: it is what the shield's
                // route keys on.
                t.host = None;
                t.tier = true;
                Ok(Arc::new(t))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Shield {
            cfg: cfg.clone(),
            nodes,
        })
    }

    /// Whether `route`'s fills go through the shields (`shield = false` opts a route out).
    pub fn covers(&self, route: &Route) -> bool {
        self.cfg.covers(route)
    }

    /// Every node in `key`'s hash order (the first owns it), healthy or not.
    pub fn order(&self, key: &str) -> Vec<Arc<Target>> {
        let names: Vec<&str> = self.nodes.iter().map(|t| t.name()).collect();
        rendezvous_order(key, &names)
            .into_iter()
            .map(|i| self.nodes[i].clone())
            .collect()
    }

    /// The upstream for one fill of `route`: the shields, then the route's group.
    pub fn upstream<'a>(&'a self, group: &'a Group) -> ShieldPlan<'a> {
        ShieldPlan {
            shield: self,
            group,
        }
    }
}

/// A key's healthy shields in hash order, then (with `on_all_down = "origin"`) the origin
/// group's own plan: a shield that fails before its head is retried on the key's next shield,
/// or on the origin when it was the last one standing; one that could not be connected to, or
/// that could not reach its own origin (`reached_no_origin`), hands the fill to the next
/// candidate whatever came before (`fetch_plan`). A down node is skipped rather than
/// tried: its keys move to their second choice, which every edge agrees on.
pub struct ShieldPlan<'a> {
    shield: &'a Shield,
    group: &'a Group,
}

impl Upstream for ShieldPlan<'_> {
    fn plan(&self, key: &str) -> Vec<Arc<Target>> {
        let mut plan: Vec<Arc<Target>> = self
            .shield
            .order(key)
            .into_iter()
            .filter(|t| t.is_healthy())
            .collect();
        if plan.is_empty() {
            tracing::debug!(key, "no healthy shield for the key");
        }
        if self.shield.cfg.on_all_down == AllDown::Origin {
            plan.extend(self.group.plan(key));
        }
        plan
    }

    fn retries_status(&self, status: u16) -> bool {
        self.shield.cfg.retry_on.contains(&status)
    }

    fn eject(&self) -> &Eject {
        &self.shield.cfg.eject
    }
}

/// Whether a shield's answer reports its upstream's failure rather than its own: the last
/// `Cache-Status` member (the shield's own, which it appends last, RFC 9211 §2) says `fwd`
/// (it forwarded the request) or `fwd-status` (the status the next hop answered), as a vedge
/// shield's 502-504 does when its origin failed, timed out or could not be reached. Such an
/// answer is the origin's failure for one request, which any viewer can ask for again and
/// again (a path the origin is slow on: three requests at once): it says the shield is up, so
/// it never ejects the shield. A shield that fails itself (refuses, hangs, answers without
/// `Cache-Status`, as other caches do) still counts.
pub fn relays_upstream_status(headers: &http::HeaderMap) -> bool {
    crate::cache::upstream::nearest_member(headers).is_some_and(|m| {
        m.params()
            .iter()
            .any(|(k, _)| k == "fwd-status" || k == "fwd")
    })
}

/// Whether a shield's answer says its request reached no origin: its own `502` with
/// `detail=origin-unreachable` and no `fwd-status` (a vedge's answer when every connection it
/// tried to its upstream failed: nothing was sent there). The same request may go to the key's
/// next node, which may still reach the origin: a shield cut off from its origin then costs its
/// keys one fast extra hop, not a `502` each. Not ejection: the shield is up, and such answers
/// stay `relays_upstream_status`. A `504` (`origin-timeout`) is no such answer: the shield
/// already waited a whole timeout, and the next node would wait as long.
pub fn reached_no_origin(status: http::StatusCode, headers: &http::HeaderMap) -> bool {
    use crate::cache::sfv::BareItem;
    status == http::StatusCode::BAD_GATEWAY
        && crate::cache::upstream::nearest_member(headers).is_some_and(|m| {
            let params = m.params();
            !params.iter().any(|(k, _)| k == "fwd-status")
                && params.iter().any(|(k, v)| {
                    k == "detail"
                        && matches!(v, BareItem::Token(d) | BareItem::String(d)
                            if d == crate::origin::OriginError::Connect.as_str())
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relayed_upstream_status_is_told_from_the_shields_own_failure() {
        let h = |v: &[&str]| {
            let mut m = http::HeaderMap::new();
            for x in v {
                m.append("cache-status", x.parse().unwrap());
            }
            relays_upstream_status(&m)
        };
        assert!(h(&["vedge; fwd=miss; fwd-status=502"]));
        assert!(h(&[
            "origin; hit",
            "vedge; fwd=stale; fwd-status=503; detail=x"
        ]));
        // Its origin could not be reached, or timed out: the shield forwarded the request.
        assert!(h(&["vedge; fwd=miss; detail=origin-unreachable"]));
        assert!(h(&[
            "o; fwd=miss; fwd-status=502, vedge; fwd=miss; detail=origin-timeout"
        ]));
        // The origin's entry forwarded; the shield's own (last) did not.
        assert!(!h(&[
            "o; fwd=miss; fwd-status=502, vedge; detail=overloaded"
        ]));
        // Inside a quoted string it is no parameter.
        assert!(!h(&["vedge; detail=\"a;fwd-status=502\""]));
        assert!(!h(&[]));
        assert!(!h(&["vedge; fwd=miss; fwd-status=502, \"open"]));
    }

    #[test]
    fn only_a_shields_own_unreachable_502_says_no_origin_was_reached() {
        let h = |status: u16, v: &str| {
            let mut m = http::HeaderMap::new();
            m.append("cache-status", v.parse().unwrap());
            reached_no_origin(http::StatusCode::from_u16(status).unwrap(), &m)
        };
        assert!(h(502, "vedge; fwd=miss; detail=origin-unreachable"));
        assert!(h(
            502,
            "o; hit, vedge; fwd=miss; detail=\"origin-unreachable\""
        ));
        // The origin answered (a relayed 502), or the shield timed out: an origin was reached.
        assert!(!h(
            502,
            "vedge; fwd=miss; fwd-status=502; detail=origin-unreachable"
        ));
        assert!(!h(504, "vedge; fwd=miss; detail=origin-timeout"));
        assert!(!h(503, "vedge; fwd=miss; detail=origin-unreachable"));
        // Only the shield's own (last) member counts.
        assert!(!h(
            502,
            "vedge; detail=origin-unreachable, o; fwd=miss; fwd-status=502"
        ));
        assert!(!h(502, "vedge; fwd=miss; detail=origin-protocol"));
    }

    fn shield(nodes: &[&str], on_all_down: AllDown) -> Shield {
        let cfg = ShieldConfig {
            nodes: nodes.iter().map(|n| url::Url::parse(n).unwrap()).collect(),
            on_all_down,
            health: None,
            eject: Eject {
                failures: 1,
                duration: std::time::Duration::from_secs(60),
            },
            retry_on: Vec::new(),
            first_byte_timeout: std::time::Duration::from_secs(1),
            bypass: Vec::new(),
        };
        let client = crate::Config::for_origin("http://o:1")
            .unwrap()
            .origin_client;
        Shield::new(&cfg, &client, 0).unwrap()
    }

    fn group() -> Group {
        let c = crate::Config::for_origin("http://origin:1").unwrap();
        let client = c.origin_client.clone();
        let t = Target::new(&c.routes[0].origin, &client, &OriginTls::default(), 0).unwrap();
        Group::new("/", vec![Arc::new(t)], c.routes[0].group.clone())
    }

    #[test]
    fn a_key_goes_to_its_shield_then_the_next_then_the_origin() {
        let s = shield(&["http://a:1", "http://b:1", "http://c:1"], AllDown::Origin);
        let g = group();
        let plan: Vec<String> = s
            .upstream(&g)
            .plan("k1")
            .iter()
            .map(|t| t.name().to_string())
            .collect();
        assert_eq!(plan.len(), 4);
        assert_eq!(plan[3], "http://origin:1");
        let owner = s.order("k1")[0].clone();
        assert_eq!(plan[0], owner.name());
        assert!(
            s.nodes.iter().all(|t| t.host.is_none()),
            "Host passes through"
        );
    }

    #[test]
    fn an_ejected_shield_hands_its_keys_to_the_next_in_hash_order() {
        let s = shield(&["http://a:1", "http://b:1", "http://c:1"], AllDown::Error);
        let g = group();
        let order = s.order("seg-7.ts");
        let eject = s.cfg.eject;
        order[0].record(
            crate::origin::target::Outcome::Failed(crate::origin::OriginError::Connect),
            std::time::Duration::ZERO,
            &eject,
        );
        let plan = s.upstream(&g).plan("seg-7.ts");
        assert_eq!(plan.len(), 2, "no origin with on_all_down = error");
        assert_eq!(plan[0].name(), order[1].name());
        assert_eq!(plan[1].name(), order[2].name());
        for t in &order[1..] {
            t.record(
                crate::origin::target::Outcome::Failed(crate::origin::OriginError::Connect),
                std::time::Duration::ZERO,
                &eject,
            );
        }
        assert!(s.upstream(&g).plan("seg-7.ts").is_empty());
    }
}
