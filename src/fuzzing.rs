//! Request-integrity properties (keys, Range, freshness arithmetic) that must hold on any input,
//! shared by the cargo-fuzz targets (fuzz/) and a unit test that replays the committed corpus,
//! so CI checks them without a fuzzer. A leaf module: it reads `cache` and `http`, nothing reads it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use crate::cache::key::{
    cache_key, encode_key, normalize_host, normalize_path, normalize_query, request_key, Scheme,
};
use crate::cache::object::CachedObject;
use crate::cache::policy::{
    self, age_value, delta_seconds, expires_lifetime_values, CacheControl, ClassTtl, ContentClass,
    Decision, DecisionInput, Freshness, TtlRules, MAX_DELTA, MAX_DELTA_SECS,
};
use crate::cache::status::CacheStatus;
use crate::http::body::Body;
use crate::http::range;
use crate::http::response::{build, Ask, CacheInfo, Source};

/// Splits `data` into up to `n` text fields at `\n` (the last one takes the rest), lossily.
fn fields(data: &[u8], n: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let mut out: Vec<String> = text.splitn(n, '\n').map(str::to_string).collect();
    out.resize(n, String::new());
    out
}

fn scheme_of(b: Option<&u8>) -> Scheme {
    match b {
        Some(b) if b & 1 == 1 => Scheme::Https,
        _ => Scheme::Http,
    }
}

/// Host and path normalisation and the key encoding. Input: a scheme byte, then
/// `host\ntarget\nhost2\ntarget2`. Checks: normalisation is idempotent and leaves no delimiter
/// or dot segment; a key splits back into exactly its normalised parts; two requests share a key
/// exactly when their normalised parts are equal; the lenient `cache_key` never merges an
/// invalid request with a different one.
pub fn check_key(data: &[u8]) {
    let scheme = scheme_of(data.first());
    let f = fields(data.get(1..).unwrap_or_default(), 4);
    let drop = ["token".to_string()];
    let mut parts = Vec::new();
    for (host, target) in [(&f[0], &f[1]), (&f[2], &f[3])] {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target.as_str(), None),
        };
        let h = normalize_host(host, scheme);
        if let Ok(h) = &h {
            assert_eq!(normalize_host(h, scheme).as_ref(), Ok(h), "{host:?}");
            assert!(
                !h.contains(['|', '/', '?', '@', ' ', '\0', '\\', '%']),
                "{h:?}"
            );
            assert!(!h.is_empty() && h.len() <= 255 + 6);
        }
        let p = normalize_path(path);
        if let Ok(p) = &p {
            assert_eq!(normalize_path(p).as_ref(), Ok(p), "{path:?}");
            assert!(p.starts_with('/') && !p.contains(['?', '|', '\0', '\\', '#']));
            assert!(!p.split('/').any(|s| s == "." || s == ".."), "{p:?}");
        }
        let q = query.map(|q| normalize_query(q, &drop)).unwrap_or_default();
        assert_eq!(normalize_query(&q, &drop), q);
        assert!(!q.contains(['\0', '#', ' ']));
        match (&h, &p) {
            (Ok(h), Ok(p)) => {
                let key = encode_key(scheme, h, p, query, &drop);
                assert_eq!(request_key(scheme, host, target, &drop).as_ref(), Ok(&key));
                assert_eq!(
                    split_key(&key),
                    (scheme.as_str(), h.as_str(), p.as_str(), q.as_str())
                );
                if scheme == Scheme::Http {
                    assert_eq!(cache_key(host, target, &drop), key);
                }
                parts.push(Some((h.clone(), p.clone(), q, key)));
            }
            _ => {
                assert!(request_key(scheme, host, target, &drop).is_err());
                let key = cache_key(host, target, &drop);
                let (_, kh, kp, _) = split_key(&key);
                assert!(kh.starts_with('!') || kp.starts_with('!'), "{key:?}");
                parts.push(None);
            }
        }
    }
    if let [Some((h1, p1, q1, k1)), Some((h2, p2, q2, k2))] = &parts[..] {
        assert_eq!(k1 == k2, (h1, p1, q1) == (h2, p2, q2), "{k1:?} / {k2:?}");
    }
}

/// A key's fields: scheme, host, path, kept query (empty when none).
fn split_key(key: &str) -> (&str, &str, &str, &str) {
    let mut it = key.splitn(3, '|');
    let scheme = it.next().unwrap_or_default();
    let host = it.next().unwrap_or_default();
    let rest = it.next().unwrap_or_default();
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    (scheme, host, path, query)
}

/// `Range` against a cached object. Input: 8 bytes of object length, then the header value.
/// Checks: a parsed range resolves to nothing or to a non-empty span inside the object; served
/// from bytes (length below 64 KiB), the response is 206 with exactly that span, 416, or 200 with
/// everything, its `Content-Length` matching the body.
pub fn check_range(data: &[u8]) {
    let Some((len_bytes, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let len = u64::from_le_bytes(*len_bytes);
    let value = String::from_utf8_lossy(rest);
    let parsed = range::parse_value(&value);
    if let Some(r) = parsed {
        if let Some((start, end)) = r.resolve(len) {
            assert!(
                start < end && end <= len,
                "{value:?} on {len}: {start}..{end}"
            );
            match r {
                range::ByteRange::FromTo(a, _) | range::ByteRange::From(a) => {
                    assert_eq!(start, a)
                }
                range::ByteRange::Suffix(n) => assert_eq!(end - start, n.min(len)),
            }
        }
    }
    let small = len % (64 * 1024);
    let Ok(hv) = HeaderValue::from_str(&value) else {
        return;
    };
    let mut req = HeaderMap::new();
    req.insert(header::RANGE, hv);
    // What the response sees (a value that is not visible ASCII is no Range at all).
    let parsed = range::parse(&req);
    let body: Bytes = (0..small).map(|i| i as u8).collect();
    let resp = build(
        &Ask {
            method: &Method::GET,
            headers: &req,
        },
        StatusCode::OK,
        &HeaderMap::new(),
        Source::Bytes(body.clone()),
        CacheInfo {
            status: CacheStatus::Hit,
            cache_status: "vedge; hit".into(),
            age: Some(0),
        },
    );
    let content_length = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(policy::content_length_value);
    let status = resp.status();
    let got = match resp.into_body() {
        Body::Full(b) => b.unwrap_or_default(),
        Body::Stream { .. } => panic!("cached bytes never stream"),
    };
    assert_eq!(content_length, Some(got.len() as u64));
    match parsed.map(|r| r.resolve(small)) {
        Some(Some((start, end))) => {
            assert_eq!(status, StatusCode::PARTIAL_CONTENT);
            assert_eq!(got, body.slice(start as usize..end as usize));
        }
        // §14.1.1: a suffix range is satisfiable on an empty body, answered whole.
        Some(None)
            if small == 0 && matches!(parsed, Some(range::ByteRange::Suffix(n)) if n > 0) =>
        {
            assert_eq!(status, StatusCode::OK);
            assert!(got.is_empty());
        }
        Some(None) => assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE),
        None => {
            assert_eq!(status, StatusCode::OK);
            assert_eq!(got, body);
        }
    }
}

/// `Cache-Control`/`Surrogate-Control` through the whole storability decision. Input: a byte of
/// class and stale factor, then the header value. Checks: every delta is capped at 2^31 s, the
/// stored freshness is too, and an object carrying it computes its age, remaining TTL and expiry
/// and round-trips through the store's head encoding without overflow.
pub fn check_cache_control(data: &[u8]) {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let value = String::from_utf8_lossy(rest);
    let cc = CacheControl::parse_value(&value);
    for v in [
        cc.max_age,
        cc.s_maxage,
        cc.stale_while_revalidate,
        cc.stale_if_error,
    ]
    .into_iter()
    .flatten()
    {
        assert!(v <= MAX_DELTA_SECS, "{value:?}");
    }
    let Ok(hv) = HeaderValue::from_str(&value) else {
        return;
    };
    let mut h = HeaderMap::new();
    let name = if ctl & 0x80 == 0 {
        header::CACHE_CONTROL
    } else {
        header::HeaderName::from_static("surrogate-control")
    };
    h.insert(name, hv);
    decide_and_store(&h, ctl, Duration::from_millis(u64::from(ctl) * 997));
}

/// `Age`, `Expires` and `Date`. Input: `age\nexpires\ndate`, the first byte also choosing the
/// class. Checks: `Age` is read only when it is a whole number, and capped; `Expires - Date` is
/// capped; the decision and the stored object stay within the caps.
pub fn check_age_expires(data: &[u8]) {
    let ctl = data.first().copied().unwrap_or(0);
    let f = fields(data, 3);
    let (age, expires, date) = (&f[0], &f[1], &f[2]);
    let trimmed = age.trim();
    let digits = !trimmed.is_empty() && trimmed.bytes().all(|c| c.is_ascii_digit());
    match age_value(age) {
        Some(d) => {
            assert!(digits, "{age:?} read as an Age");
            assert!(d <= MAX_DELTA);
            assert_eq!(Some(d.as_secs()), delta_seconds(trimmed));
        }
        None => assert!(!digits, "{age:?} ignored"),
    }
    let now = SystemTime::now();
    let parsed_date = httpdate::parse_http_date(date).ok();
    let life = expires_lifetime_values(Some(expires), parsed_date, now);
    assert!(life <= MAX_DELTA);
    let mut h = HeaderMap::new();
    for (name, v) in [
        (header::AGE, age),
        (header::EXPIRES, expires),
        (header::DATE, date),
    ] {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(name, v);
        }
    }
    decide_and_store(&h, ctl, Duration::ZERO);
}

fn decide_and_store(h: &HeaderMap, ctl: u8, response_delay: Duration) {
    let d = ClassTtl::defaults();
    let (class, rules) = match ctl % 4 {
        0 => (ContentClass::Manifest, d.manifest),
        1 => (ContentClass::Segment, d.segment),
        2 => (ContentClass::Other, d.other),
        _ => (
            ContentClass::Manifest,
            TtlRules {
                min: Some(Duration::MAX),
                ..TtlRules::default()
            },
        ),
    };
    let now = SystemTime::now();
    let decision = policy::decide(&DecisionInput {
        status: StatusCode::OK,
        headers: h,
        rules,
        class,
        negative_ttl: Duration::from_secs(2),
        manifest_stale_factor: u32::from(ctl >> 2).saturating_mul(1 << 20),
        max_object_size: u64::MAX,
        targeted: &[],
        surrogate_device: "vedge",
        response_delay,
        now,
    });
    let Decision::Store(f) = decision else {
        return;
    };
    for d in [
        f.ttl,
        f.initial_age,
        f.stale_while_revalidate,
        f.stale_if_error,
    ] {
        assert!(d <= MAX_DELTA, "{f:?}");
    }
    let mut obj = CachedObject::for_push(StatusCode::OK, h.clone(), Bytes::new(), class, f.ttl);
    obj.freshness = f;
    for at in [now, UNIX_EPOCH, now + MAX_DELTA * 4] {
        let _ = obj.age(at);
        let _ = obj.ttl_left(at);
        let _ = obj.staleness(at);
    }
    let expires = obj.expires_at();
    assert!(expires >= obj.stored_at);
    // Capped durations fit the head's milliseconds (truncated to whole ones).
    let back = CachedObject::decode(&obj.encode_head(), Bytes::new(), Vec::new())
        .expect("an encoded head decodes");
    let ms = |f: &Freshness| {
        [
            f.ttl,
            f.initial_age,
            f.stale_while_revalidate,
            f.stale_if_error,
        ]
        .map(|d| d.as_millis())
    };
    assert_eq!(ms(&back.freshness), ms(&f));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The inputs, then the committed corpus (what the fuzz targets start from).
    #[test]
    fn known_inputs_and_the_corpus_hold_the_properties() {
        check_key(b"\x00cdn/x\n/y.ts\ncdn\n/x/y.ts");
        check_key(b"\x01CDN:443\n/vod/%2e%2e/live/x.ts?b=1&a=2\ncdn\n/live/x.ts?a=2&b=1");
        let mut r = 10u64.to_le_bytes().to_vec();
        r.extend_from_slice(b"bytes=1-18446744073709551615");
        check_range(&r);
        let mut r = 10u64.to_le_bytes().to_vec();
        r.extend_from_slice(b"bytes=18446744073709551615-");
        check_range(&r);
        check_cache_control(b"\x00max-age=9223372036854775807, stale-while-revalidate=1e9");
        check_cache_control(b"\x81s-maxage=99999999999999999999");
        check_age_expires(b"18446744073709551615\ngarbage\n");
        check_age_expires(b"12abc\nFri, 31 Dec 9999 23:59:59 GMT\nSun, 06 Nov 1994 08:49:37 GMT");

        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let mut n = 0;
        for (sub, check) in [
            ("request_key", check_key as fn(&[u8])),
            ("range", check_range),
            ("cache_control", check_cache_control),
            ("age_expires", check_age_expires),
        ] {
            for e in std::fs::read_dir(corpus.join(sub)).expect("corpus dir") {
                let bytes = std::fs::read(e.expect("entry").path()).expect("read");
                check(&bytes);
                n += 1;
            }
        }
        assert!(n >= 8, "corpus has {n} inputs");
    }

    fn text() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..48),
            "[\\x00-\\x7f]{0,40}".prop_map(String::into_bytes),
            "[a-zA-Z0-9.:/%\\[\\]@ -]{0,12}\n/[a-z0-9./%2eEfF]{0,16}(\\?[a-z=&%0-9]{0,8})?\n[a-z.:]{0,8}\n/[a-z./]{0,12}"
                .prop_map(|s| [b"\x01".to_vec(), s.into_bytes()].concat()),
        ]
    }

    proptest::proptest! {
        /// A stand-in for the fuzzer on every `cargo test`: random inputs through each check.
        #[test]
        fn random_inputs_hold_the_properties(data in text(), len in 0..40u64, n in "[0-9]{0,21}", m in "[0-9]{0,21}") {
            check_key(&data);
            check_cache_control(&data);
            check_age_expires(&data);
            check_range(&data);
            for v in [format!("bytes={n}-{m}"), format!("bytes=-{n}"), format!("bytes={n}-")] {
                let mut r = len.to_le_bytes().to_vec();
                r.extend_from_slice(v.as_bytes());
                check_range(&r);
            }
            check_cache_control(format!("\x00max-age={n}, stale-while-revalidate={m}").as_bytes());
            check_age_expires(format!("{n}\n\n").as_bytes());
        }
    }
}
