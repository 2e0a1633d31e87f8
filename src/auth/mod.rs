//! Signed URLs: validating Akamai EdgeAuth Token 2.0 tokens (`edgeauth`), finding a token in a
//! request and taking it out again (`source`), and carrying a viewer's token into the URIs of a
//! manifest so players that do not copy query strings keep presenting it (`propagate`). Pure
//! functions over bytes and the route's `TokenConfig`: no I/O, no clock of its own (the caller
//! passes the time), no secret in any error or log line.

pub mod edgeauth;
pub mod propagate;
pub mod source;

/// Why a request was refused (403). One `as_str` for the response body, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token in any configured source.
    Missing,
    /// Not a token: unknown or repeated fields, no `exp` or `hmac`, bad numbers, too long.
    Malformed,
    /// `exp` (plus the clock skew) has passed.
    Expired,
    /// `st` (minus the clock skew) is still ahead.
    NotYetValid,
    /// The path matches none of the token's `acl` patterns.
    Acl,
    /// The token names another client address.
    Ip,
    /// The HMAC does not match under any configured key (forged, altered, or a `url` token for
    /// another path).
    Hmac,
}

impl Refusal {
    pub const ALL: [Refusal; 7] = [
        Refusal::Missing,
        Refusal::Malformed,
        Refusal::Expired,
        Refusal::NotYetValid,
        Refusal::Acl,
        Refusal::Ip,
        Refusal::Hmac,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not-yet-valid",
            Refusal::Acl => "acl",
            Refusal::Ip => "ip",
            Refusal::Hmac => "hmac",
        }
    }

    /// Position in `ALL` (the metrics array index).
    pub fn index(self) -> usize {
        self as usize
    }
}
