//! The synthetic catalogue shared by `vedge origin` (`/cat/<id>.ts`) and `vedge bench zipf`:
//! every object's size and bytes are a pure function of its id, so a 16 GiB catalogue needs no
//! files and any cache's answer can be checked byte for byte by the client.
//!
//! - size: `1 MiB + h(id) mod 1 MiB`, in [1 MiB, 2 MiB);
//! - bytes: a slice of one 3 MiB pseudo-random pattern starting at `id * ODD mod 1 MiB`. The
//!   start is a bijection on ids below 2^20, so two objects of such a catalogue never share
//!   their bytes (a cache that answers with the wrong object fails the check), and the origin
//!   serves every body as a `Bytes` slice without copying or computing anything.
//!
//! Popularity: [`Zipf`] draws ranks with P(rank k) proportional to 1/(k+1)^s from a precomputed
//! CDF (binary search); rank k asks for object id k (sizes are hashed, so popularity and size
//! are independent).

use std::sync::OnceLock;

use bytes::Bytes;

/// Smallest object.
pub const MIN_SIZE: u64 = 1 << 20;
/// Sizes are in `[MIN_SIZE, MIN_SIZE + SIZE_SPREAD)`.
pub const SIZE_SPREAD: u64 = 1 << 20;
/// Distinct start offsets in the pattern (ids below this have distinct bytes).
const OFFSETS: u64 = 1 << 20;
/// The pattern covers the last byte of the largest object at the largest offset.
const PATTERN_LEN: usize = (OFFSETS + MIN_SIZE + SIZE_SPREAD) as usize;
/// An odd multiplier: `id * ODD mod 2^20` permutes ids below 2^20.
const ODD: u64 = 0x9E37_79B9;

/// URL path of object `id`.
pub fn path(id: u64) -> String {
    format!("/cat/{id}.ts")
}

/// The id in a `/cat/<id>.ts` path (`None` for anything else).
pub fn parse_path(path: &str) -> Option<u64> {
    let id = path.strip_prefix("/cat/")?.strip_suffix(".ts")?;
    // Only plain decimal digits: one object has one path (no "+1", no leading zeros).
    if id.is_empty()
        || !id.bytes().all(|b| b.is_ascii_digit())
        || (id.len() > 1 && id.starts_with('0'))
    {
        return None;
    }
    id.parse().ok()
}

/// SplitMix64 finaliser: a cheap, well-mixed hash of the id.
fn mix(id: u64) -> u64 {
    let mut z = id.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Size in bytes of object `id`.
pub fn size(id: u64) -> u64 {
    MIN_SIZE + mix(id) % SIZE_SPREAD
}

fn offset(id: u64) -> usize {
    (id.wrapping_mul(ODD) % OFFSETS) as usize
}

fn pattern() -> &'static Bytes {
    static PATTERN: OnceLock<Bytes> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut v = Vec::with_capacity(PATTERN_LEN);
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        while v.len() < PATTERN_LEN {
            // xorshift64*: fast and without short cycles.
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        v.truncate(PATTERN_LEN);
        Bytes::from(v)
    })
}

/// The whole body of object `id` (a slice of the shared pattern: no copy).
pub fn body(id: u64) -> Bytes {
    let off = offset(id);
    pattern().slice(off..off + size(id) as usize)
}

/// Whether `chunk` is what object `id` holds at byte `at` (false if it runs past the end).
pub fn matches(id: u64, at: u64, chunk: &[u8]) -> bool {
    let end = at.saturating_add(chunk.len() as u64);
    if end > size(id) {
        return false;
    }
    let off = offset(id) + at as usize;
    pattern()[off..off + chunk.len()] == *chunk
}

/// Total bytes of objects `0..n`.
pub fn total_bytes(n: u64) -> u64 {
    (0..n).map(size).sum()
}

/// The fewest objects (from id 0) whose sizes add up to at least `bytes` (at least 1).
pub fn objects_for_bytes(bytes: u64) -> u64 {
    let mut total = 0;
    let mut n = 0;
    while total < bytes || n == 0 {
        total += size(n);
        n += 1;
    }
    n
}

/// Zipf(s) over ranks `0..n`: P(k) proportional to 1/(k+1)^s.
#[derive(Debug, Clone)]
pub struct Zipf {
    /// cdf[k] = P(rank <= k); the last entry is 1.
    cdf: Vec<f64>,
}

impl Zipf {
    /// `n >= 1` ranks, exponent `s >= 0` (0 is uniform).
    pub fn new(n: u64, s: f64) -> Zipf {
        let n = n.max(1);
        let mut cdf = Vec::with_capacity(n as usize);
        let mut acc = 0.0;
        for k in 0..n {
            acc += ((k + 1) as f64).powf(-s);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        if let Some(last) = cdf.last_mut() {
            *last = 1.0;
        }
        Zipf { cdf }
    }

    /// The rank for a uniform draw `u` in [0, 1).
    pub fn rank(&self, u: f64) -> u64 {
        let i = self.cdf.partition_point(|c| *c <= u);
        i.min(self.cdf.len() - 1) as u64
    }

    /// Probability of rank `k`.
    pub fn probability(&self, k: u64) -> f64 {
        let k = k as usize;
        match k {
            0 => self.cdf[0],
            _ if k < self.cdf.len() => self.cdf[k] - self.cdf[k - 1],
            _ => 0.0,
        }
    }

    pub fn sample(&self, rng: &mut impl rand::Rng) -> u64 {
        self.rank(rng.gen::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    #[test]
    fn sizes_are_between_one_and_two_mib() {
        for id in 0..10_000 {
            let s = size(id);
            assert!((MIN_SIZE..MIN_SIZE + SIZE_SPREAD).contains(&s), "{id}: {s}");
        }
        // Hashed, not constant.
        assert_ne!(size(0), size(1));
    }

    #[test]
    fn bodies_are_deterministic_and_differ_between_objects() {
        let a = body(7);
        assert_eq!(a.len() as u64, size(7));
        assert_eq!(a, body(7));
        assert!(matches(7, 0, &a));
        assert!(matches(7, 1000, &a[1000..5000]));
        // Another object's bytes (or this one's shifted) do not pass the check.
        let b = body(8);
        assert!(!matches(7, 0, &b[..4096]));
        assert!(!matches(7, 1, &a[..4096]));
        // Past the end.
        assert!(!matches(7, size(7) - 10, &a[..20]));
    }

    #[test]
    fn start_offsets_are_distinct_for_a_large_catalogue() {
        let mut seen = std::collections::HashSet::new();
        for id in 0..20_000 {
            assert!(seen.insert(offset(id)), "id {id} shares its offset");
        }
    }

    #[test]
    fn paths_round_trip_and_reject_aliases() {
        assert_eq!(parse_path(&path(42)), Some(42));
        assert_eq!(parse_path("/cat/0.ts"), Some(0));
        for bad in [
            "/cat/.ts",
            "/cat/01.ts",
            "/cat/+1.ts",
            "/cat/1.m4s",
            "/cat/1",
            "/x/1.ts",
        ] {
            assert_eq!(parse_path(bad), None, "{bad}");
        }
        assert_eq!(parse_path("/cat/99999999999999999999999.ts"), None);
    }

    #[test]
    fn a_16_gib_catalogue_is_about_11k_objects() {
        let n = objects_for_bytes(16 << 30);
        assert!((10_500..11_500).contains(&n), "{n}");
        assert!(total_bytes(n) >= 16 << 30);
        assert!(total_bytes(n - 1) < 16 << 30);
        assert_eq!(objects_for_bytes(0), 1);
    }

    #[test]
    fn zipf_draws_follow_the_law() {
        let z = Zipf::new(1000, 1.0);
        // P(0)/P(1) = 2, P(0)/P(9) = 10 for s = 1.
        assert!((z.probability(0) / z.probability(1) - 2.0).abs() < 1e-9);
        assert!((z.probability(0) / z.probability(9) - 10.0).abs() < 1e-9);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut counts = vec![0u64; 1000];
        let draws = 200_000;
        for _ in 0..draws {
            counts[z.sample(&mut rng) as usize] += 1;
        }
        for k in [0usize, 1, 4, 99] {
            let want = z.probability(k as u64) * draws as f64;
            let got = counts[k] as f64;
            assert!(
                (got - want).abs() < 5.0 * want.sqrt() + 5.0,
                "rank {k}: {got} vs {want}"
            );
        }
        assert_eq!(z.rank(0.0), 0);
        assert_eq!(z.rank(0.999_999_999), 999);
        // s = 0: uniform.
        let u = Zipf::new(4, 0.0);
        assert!((u.probability(3) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn a_fixed_seed_gives_the_same_sequence() {
        let z = Zipf::new(500, 1.0);
        let draw = |seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            (0..50).map(|_| z.sample(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }
}
