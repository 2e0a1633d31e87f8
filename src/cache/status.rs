//! Cache outcomes, as written in `X-Cache`, `Cache-Status` (RFC 9211), logs and metrics.

/// The `X-Cache` value of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// Served from cache, fresh.
    Hit,
    /// Not in cache; fetched from the origin (alone or as a collapsed reader of one fetch).
    Miss,
    /// Not cacheable (request or response); forwarded to the origin.
    Bypass,
    /// Was cached but had expired; refetched or revalidated.
    Expired,
    /// Served stale (stale-while-revalidate or stale-if-error).
    Stale,
}

impl CacheStatus {
    pub const ALL: [CacheStatus; 5] = [
        CacheStatus::Hit,
        CacheStatus::Miss,
        CacheStatus::Bypass,
        CacheStatus::Expired,
        CacheStatus::Stale,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Bypass => "BYPASS",
            CacheStatus::Expired => "EXPIRED",
            CacheStatus::Stale => "STALE",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}
