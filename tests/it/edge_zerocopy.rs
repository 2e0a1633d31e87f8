//! Bodies of 512 KiB and more in the RAM tier live in anonymous pages (sent with `vmsplice` +
//! `splice`, `vedge::zerocopy`); smaller ones stay on the heap and are copied.
//! The bytes on the wire must be exactly what a heap body would give: whole objects, ranges at
//! odd offsets, HEAD, and several responses pipelined on one keep-alive connection (head bytes
//! sent with MSG_MORE, then the pages). Each test runs twice, with `server.zero_copy` on and
//! off: off, the same bytes go out and the edge's zero-copy counters never move.

use std::time::Duration;

use http::{Method, StatusCode};
use vedge::config::RawConfig;

use crate::support::{edge_config, Fault, Origin, Script, TestEdge};

/// The edge config for `origin` with `server.zero_copy` set to `zero_copy`.
fn config(origin: &Origin, zero_copy: bool) -> RawConfig {
    let mut raw = edge_config(origin);
    raw.server.zero_copy = Some(zero_copy);
    raw
}

/// Asserts that an edge running with `server.zero_copy = false` placed no body in zero-copy
/// memory and sent nothing with `splice`.
fn assert_untouched(edge: &TestEdge) {
    let zc = &edge.edge.zero_copy;
    assert!(!zc.enabled());
    assert_eq!(zc.live(), 0, "no zero-copy body with zero_copy off");
    assert_eq!(zc.splice_bytes(), 0, "no splice with zero_copy off");
    assert_eq!(zc.pipes(), 0, "no pipe with zero_copy off");
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 253) as u8).collect()
}

#[tokio::test]
async fn large_hits_are_sent_from_anonymous_pages_byte_for_byte() {
    large_hits_byte_for_byte(true).await;
}

#[tokio::test]
async fn large_hits_without_zero_copy_carry_the_same_bytes() {
    large_hits_byte_for_byte(false).await;
}

async fn large_hits_byte_for_byte(zero_copy: bool) {
    let origin = Origin::start().await;
    let len = 3 << 20;
    let body = pattern(len);
    // Trickled in chunks, so the fill's body is a concatenation (the copy into its mapping).
    origin.script(
        "/v/big.m4s",
        Script::ok(body.clone())
            .header("cache-control", "max-age=600")
            .trickle(8, Duration::from_millis(80)),
    );
    let edge = TestEdge::start(config(&origin, zero_copy)).await;
    let zc = edge.edge.zero_copy.clone();

    let miss = edge.get("/v/big.m4s").await;
    assert_eq!(miss.x_cache(), "MISS");
    assert_eq!(miss.body, body);
    edge.settle().await;

    let sent_before = zc.splice_bytes();
    let hit = edge.get("/v/big.m4s").await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.h("content-length"), len.to_string());
    assert_eq!(
        hit.body, body,
        "a HIT from anonymous pages carries the same bytes"
    );
    if zero_copy {
        assert!(zc.live() >= 1, "the cached body is a zero-copy body");
        assert!(
            zc.splice_bytes() - sent_before >= len as u64,
            "the HIT went out with vmsplice + splice"
        );
    }

    for (range, start, end) in [
        ("bytes=1-4096", 1, 4097),
        ("bytes=1000003-2500000", 1_000_003, 2_500_001),
        ("bytes=-70001", len - 70_001, len),
    ] {
        let r = edge.get_with("/v/big.m4s", &[("range", range)]).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(&r.body[..], &body[start..end], "{range}");
    }

    let head = edge
        .send(edge.req(Method::HEAD, "/v/big.m4s"), Default::default())
        .await;
    assert_eq!(head.h("content-length"), len.to_string());
    assert!(head.body.is_empty());

    // Three requests pipelined on one connection: each response's head is followed by exactly
    // its body, and the last one closes.
    let host = edge.addr;
    let one = format!("GET /v/big.m4s HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let ranged =
        format!("GET /v/big.m4s HTTP/1.1\r\nHost: {host}\r\nRange: bytes=5-100004\r\n\r\n");
    let last = format!("GET /v/big.m4s HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let raw = edge.raw(format!("{one}{ranged}{last}").as_bytes()).await;
    let mut rest = &raw.bytes[..];
    for want in [&body[..], &body[5..100_005], &body[..]] {
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head")
            + 4;
        let head = std::str::from_utf8(&rest[..end]).expect("ascii head");
        assert!(head.contains("x-cache: HIT"), "{head}");
        let cl: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("content-length")
            .parse()
            .expect("a number");
        assert_eq!(cl, want.len(), "{head}");
        assert_eq!(&rest[end..end + cl], want);
        rest = &rest[end + cl..];
    }
    assert!(rest.is_empty(), "nothing after the third body");
    assert_eq!(origin.count("/v/big.m4s"), 1);
    if !zero_copy {
        assert_untouched(&edge);
    }
}

/// A large body with a known length is written into its mapping as it arrives, so collapsed
/// readers are sent slices of it with `vmsplice` + `splice` while the fill is still running, and
/// a fill that then fails leaves every reader with a short body and nothing cached.
#[tokio::test]
async fn readers_of_a_large_fill_are_sent_from_its_mapping_before_it_ends() {
    readers_of_a_large_fill(true).await;
}

#[tokio::test]
async fn readers_of_a_large_fill_without_zero_copy_get_the_same_bytes() {
    readers_of_a_large_fill(false).await;
}

/// Collapsed readers get a large fill's bytes while it runs, and a short body once it fails;
/// with `zero_copy`, from the fill's mapping with `vmsplice` + `splice`.
async fn readers_of_a_large_fill(zero_copy: bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let origin = Origin::start().await;
    let len = 3 << 18;
    let sent = 1 << 19;
    let body = pattern(len);
    origin.script(
        "/v/live.m4s",
        Script::ok(body.clone())
            .header("cache-control", "max-age=600")
            .fault(Fault::Stall(sent)),
    );
    let edge = TestEdge::start(config(&origin, zero_copy)).await;
    let zc = edge.edge.zero_copy.clone();
    let bodies_before = zc.live();
    let spliced_before = zc.splice_bytes();

    // Three viewers: a leader and two collapsed readers, each reading head + the first 512 KiB.
    let get = format!("GET /v/live.m4s HTTP/1.1\r\nHost: {}\r\n\r\n", edge.addr);
    let mut viewers = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(edge.addr)
            .await
            .expect("connect");
        s.write_all(get.as_bytes()).await.expect("request");
        viewers.push(s);
    }
    let mut received = Vec::new();
    for s in &mut viewers {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        let head_and_body = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let n = s.read(&mut chunk).await.expect("read");
                assert!(n > 0, "the edge closed before the origin stalled");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    if buf.len() - (end + 4) >= sent {
                        return end + 4;
                    }
                }
            }
        })
        .await
        .expect("the first 512 KiB arrive while the origin stalls");
        let head = std::str::from_utf8(&buf[..head_and_body]).expect("ascii head");
        assert!(head.contains(&format!("content-length: {len}")), "{head}");
        assert_eq!(&buf[head_and_body..], &body[..sent]);
        received.push(buf);
    }
    assert_eq!(origin.count("/v/live.m4s"), 1, "one fill for all three");
    assert_eq!(edge.edge.fills.len(), 1, "the fill is still running");
    if zero_copy {
        assert!(
            zc.live() > bodies_before,
            "the fill is being written into a mapping"
        );
        assert!(
            zc.splice_bytes() - spliced_before >= 3 * sent as u64,
            "the readers were sent the fill's bytes with splice before it ended"
        );
    } else {
        assert_untouched(&edge);
    }

    // The origin dies mid-body: every viewer's response ends short and nothing is stored.
    origin.stop();
    for s in &mut viewers {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
            .await
            .expect("the edge ends the response");
        assert!(
            rest.len() < len - sent,
            "a complete-looking body after a failed fill"
        );
    }
    edge.settle().await;
    assert_eq!(edge.edge.ram.len(), 0, "a failed fill is not cached");
    if !zero_copy {
        assert_untouched(&edge);
    }
}

/// A body under 512 KiB stays on the heap and is copied into the socket, zero-copy on or off:
/// measured side by side, referencing its pages (then `sendfile` from a memfd) cost the edge
/// 20-30 % more CPU per 256 KiB hit than the copy.
#[tokio::test]
async fn a_256_kib_hit_is_copied_from_the_heap() {
    let origin = Origin::start().await;
    let body = pattern(256 << 10);
    origin.script(
        "/v/seg.ts",
        Script::ok(body.clone()).header("cache-control", "max-age=600"),
    );
    let edge = TestEdge::start(config(&origin, true)).await;
    let zc = edge.edge.zero_copy.clone();
    assert_eq!(edge.get("/v/seg.ts").await.body, body);
    edge.settle().await;
    let hit = edge.get("/v/seg.ts").await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.body, body);
    assert_eq!(zc.live(), 0, "no zero-copy body under 512 KiB");
    assert_eq!(zc.splice_bytes(), 0);
    assert_eq!(zc.pipes(), 0);
}
