//! Origin selection: a route's group of origins and its policy (failover, round-robin,
//! rendezvous hash by cache key), behind the `Upstream` trait so another layer (a shield tier)
//! can plan its own nodes first and fall back to a group's plan.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use crate::config::{Eject, OriginGroup, OriginPolicy};
use crate::origin::target::Target;

/// Picks where a request for a key goes. `plan` lists candidates best first: the fetch tries
/// the first, goes on down the list while nothing reached an origin, and retries another
/// failure once on the next (or the first again when there is only one; `fetch_plan`).
pub trait Upstream: Send + Sync {
    fn plan(&self, key: &str) -> Vec<Arc<Target>>;
    /// Whether an answer with this status is retried (once) like a failed connection.
    fn retries_status(&self, status: u16) -> bool;
    /// Passive ejection settings for the candidates' outcomes.
    fn eject(&self) -> &Eject;
}

/// One route's origins and how one is chosen.
pub struct Group {
    pub prefix: String,
    pub targets: Vec<Arc<Target>>,
    pub cfg: OriginGroup,
    next: AtomicUsize,
}

impl Group {
    pub fn new(prefix: &str, targets: Vec<Arc<Target>>, cfg: OriginGroup) -> Group {
        Group {
            prefix: prefix.to_string(),
            targets,
            cfg,
            next: AtomicUsize::new(0),
        }
    }
}

impl Upstream for Group {
    /// Healthy origins in policy order, then the unhealthy ones in the same order: when every
    /// origin is out, trying one still beats answering 502 without asking.
    fn plan(&self, key: &str) -> Vec<Arc<Target>> {
        let order: Vec<usize> = match self.cfg.policy {
            OriginPolicy::Failover | OriginPolicy::RoundRobin => (0..self.targets.len()).collect(),
            OriginPolicy::Hash => {
                let names: Vec<&str> = self.targets.iter().map(|t| t.name()).collect();
                rendezvous_order(key, &names)
            }
        };
        let (mut healthy, unhealthy): (Vec<usize>, Vec<usize>) = order
            .into_iter()
            .partition(|&i| self.targets[i].is_healthy());
        if self.cfg.policy == OriginPolicy::RoundRobin && !healthy.is_empty() {
            let turn = self.next.fetch_add(1, Relaxed) % healthy.len();
            healthy.rotate_left(turn);
        }
        healthy
            .into_iter()
            .chain(unhealthy)
            .map(|i| self.targets[i].clone())
            .collect()
    }

    fn retries_status(&self, status: u16) -> bool {
        self.cfg.retry_on.contains(&status)
    }

    fn eject(&self) -> &Eject {
        &self.cfg.eject
    }
}

/// Rendezvous (highest random weight) order of `nodes` for `key`: each node scores
/// `hash(node, key)` and the highest wins, so every process with the same node list agrees, and
/// removing a node moves only the keys it owned (to their second choice). The hash is FNV-1a
/// finished with a 64-bit mixer: stable across builds and platforms, unlike `DefaultHasher`.
pub fn rendezvous_order(key: &str, nodes: &[&str]) -> Vec<usize> {
    let mut scored: Vec<(u64, usize)> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (score(n, key), i))
        .collect();
    // Highest score first; the index breaks (astronomically unlikely) ties deterministically.
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, i)| i).collect()
}

fn score(node: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain([0xff]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser: FNV's low bits alone spread poorly over similar names.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_removed_nodes_keys() {
        let all = ["http://a", "http://b", "http://c", "http://d"];
        let less = ["http://a", "http://b", "http://d"];
        let mut moved = 0;
        let mut owned_by_c = 0;
        let mut per_node = [0usize; 4];
        for k in 0..4000 {
            let key = format!("/seg/{k}.ts");
            let before = all[rendezvous_order(&key, &all)[0]];
            per_node[rendezvous_order(&key, &all)[0]] += 1;
            let after = less[rendezvous_order(&key, &less)[0]];
            if before == "http://c" {
                owned_by_c += 1;
            }
            if before != after {
                moved += 1;
                assert_eq!(before, "http://c", "{key} moved from a surviving node");
            }
        }
        assert_eq!(moved, owned_by_c);
        for n in per_node {
            assert!((800..1200).contains(&n), "uneven spread: {per_node:?}");
        }
    }

    #[test]
    fn rendezvous_is_stable_for_a_key() {
        let nodes = ["x", "y", "z"];
        let first = rendezvous_order("k", &nodes);
        assert_eq!(first, rendezvous_order("k", &nodes));
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2], "every node appears once");
    }
}
