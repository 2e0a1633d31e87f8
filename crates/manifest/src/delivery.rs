//! LL-HLS delivery directives (RFC 8216bis §6.2.5): `_HLS_msn`, `_HLS_part` and `_HLS_skip` of a
//! playlist request. One reader for the edge (which holds and collapses blocking reloads) and the
//! origin simulator (which produces them), so both refuse the same malformed requests.

/// What a playlist request asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    pub msn: Option<u64>,
    pub part: Option<u64>,
    /// `_HLS_skip=YES` or `v2` (a delta update); any other value is no skip directive.
    pub skip: bool,
}

impl Delivery {
    /// Reads the directives of a query; `Err` (answer 400) when `_HLS_msn` or `_HLS_part` is
    /// malformed, a directive is given twice, or `_HLS_part` comes without `_HLS_msn`. A
    /// directive given twice has no one meaning: a reader taking the first and one taking the
    /// last (or one reading the query after a cache sorted it) would each wait for another
    /// segment.
    pub fn parse(query: Option<&str>) -> Result<Delivery, &'static str> {
        let mut d = Delivery::default();
        let mut skip_seen = false;
        for kv in query.unwrap_or("").split('&') {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "_HLS_msn" => once(&mut d.msn, decimal_integer(v).ok_or("bad _HLS_msn")?)?,
                "_HLS_part" => once(&mut d.part, decimal_integer(v).ok_or("bad _HLS_part")?)?,
                "_HLS_skip" => {
                    if std::mem::replace(&mut skip_seen, true) {
                        return Err("_HLS_skip given twice");
                    }
                    // RFC 8216bis §6.2.5.1 says what `YES` and `v2` ask for and nothing of
                    // another value, which makes it no error: no skip directive, the request
                    // an ordinary one with that query (answered with the whole playlist).
                    d.skip = matches!(v, "YES" | "v2");
                }
                _ => {}
            }
        }
        if d.part.is_some() && d.msn.is_none() {
            return Err("_HLS_part without _HLS_msn");
        }
        Ok(d)
    }
}

/// RFC 8216bis §4.2 `decimal-integer`: digits `0`-`9` only (`u64::from_str` would also take a
/// leading `+`), at most 2^64-1.
fn decimal_integer(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Sets a directive that must not have been set yet.
fn once(field: &mut Option<u64>, v: u64) -> Result<(), &'static str> {
    match field.replace(v) {
        None => Ok(()),
        Some(_) => Err("_HLS_msn or _HLS_part given twice"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_read_and_malformed_ones_refused() {
        assert_eq!(Delivery::parse(None), Ok(Delivery::default()));
        assert_eq!(
            Delivery::parse(Some("a=b&_HLS_msn=4&_HLS_part=2&_HLS_skip=v2")),
            Ok(Delivery {
                msn: Some(4),
                part: Some(2),
                skip: true
            })
        );
        assert!(Delivery::parse(Some("_HLS_part=1")).is_err());
        assert!(Delivery::parse(Some("_HLS_msn=-1")).is_err());
        assert!(Delivery::parse(Some("_HLS_msn=+1")).is_err());
        assert!(Delivery::parse(Some("_HLS_msn=1&_HLS_part=+0")).is_err());
        assert!(Delivery::parse(Some("_HLS_msn=")).is_err());
        assert!(Delivery::parse(Some("_HLS_msn=99999999999999999999")).is_err());
        for other in ["NO", "yes", "", "v3"] {
            let q = format!("_HLS_msn=2&_HLS_skip={other}");
            assert_eq!(
                Delivery::parse(Some(&q)),
                Ok(Delivery {
                    msn: Some(2),
                    part: None,
                    skip: false
                }),
                "{q}"
            );
        }
        assert!(Delivery::parse(Some("_HLS_msn=2&_HLS_msn=3")).is_err());
        assert!(Delivery::parse(Some("_HLS_msn=2&_HLS_part=1&_HLS_part=1")).is_err());
        assert!(Delivery::parse(Some("_HLS_msn=2&_HLS_skip=YES&_HLS_skip=v2")).is_err());
    }
}
