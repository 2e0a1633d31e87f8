//! Issue 14's memory limits for zero-copy bodies, on the real binary: bodies kept in memory
//! mappings respect `server.zero_copy_map_budget` (below `vm.max_map_count`), further bodies are
//! served the same from the heap and counted, mapping resumes once bodies are purged, and the
//! open-file limit is raised soft-to-hard at start so descriptors are not the first thing to run
//! out.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::binary::{BinaryEdge, ADMIN_TOKEN};
use crate::support::edge::read_raw;
use crate::support::{Origin, Script};

/// A distinct body of `n` bytes (its first byte names it, so two bodies never match).
fn body(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(37))
        .collect()
}

/// `POST /admin/purge` of `paths` on the edge's admin port.
async fn purge(v: &BinaryEdge, paths: &[&str]) {
    let urls: Vec<String> = paths.iter().map(|p| format!("\"{p}\"")).collect();
    let body = format!(r#"{{"urls":[{}],"host":"edge.test"}}"#, urls.join(","));
    let mut s = TcpStream::connect(("127.0.0.1", v.admin))
        .await
        .expect("admin connects");
    let req = format!(
        "POST /admin/purge HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("send purge");
    let r = read_raw(&mut s).await;
    assert_eq!(r.status(), 200, "{}", r.text());
}

/// A config file setting the mapping budget, in a directory that lives as long as the guard.
fn budget_config(maps: usize) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("vedge.toml");
    std::fs::write(&path, format!("[server]\nzero_copy_map_budget = {maps}\n")).expect("write");
    (dir, path)
}

/// GET `path` and assert the body is `want`, byte for byte; returns the cache status.
async fn get_exact(v: &BinaryEdge, path: &str, want: &[u8]) -> String {
    let r = v.get(v.port, path).await.expect("answers");
    let (head, got) = r.split();
    assert_eq!(r.status(), 200, "{path}: {head}");
    assert!(
        got == want,
        "{path}: {} bytes, not the origin's {}",
        got.len(),
        want.len()
    );
    r.header("x-cache").unwrap_or_default()
}

#[tokio::test]
async fn bodies_beyond_the_mapping_budget_are_served_from_the_heap_and_the_budget_is_never_exceeded(
) {
    const BUDGET: u64 = 2;
    let origin = Origin::start().await;
    // Bodies of one mapping (512 KiB - 2 MiB), a split huge-page body (over 2 MiB with a tail:
    // two mappings) and one under 512 KiB, which never takes a mapping.
    let objects: Vec<(String, Vec<u8>)> = [
        600 << 10,
        700 << 10,
        800 << 10,
        (3 << 20) + 5,
        200 << 10,
        550 << 10,
    ]
    .iter()
    .enumerate()
    .map(|(i, &n)| (format!("/v/o{i}.ts"), body(n, i as u8)))
    .collect();
    for (path, b) in &objects {
        origin.script(
            path,
            Script::ok(b.clone()).header("cache-control", "max-age=600"),
        );
    }
    let (_dir, cfg) = budget_config(BUDGET as usize);
    let v = BinaryEdge::start(
        &origin.url(),
        [
            "--config".as_ref(),
            cfg.as_os_str(),
            "--ram-size".as_ref(),
            "256MiB".as_ref(),
        ],
    );
    v.ready().await;
    assert_eq!(v.metric("vedge_zero_copy_map_budget").await, BUDGET);

    let check = |when: &str, mappings: u64| {
        assert!(
            mappings <= BUDGET,
            "{when}: {mappings} mappings > budget {BUDGET}"
        );
    };
    // Misses, then hits, twice over: the same bytes whichever memory holds them.
    for round in 0..2 {
        for (path, b) in &objects {
            let x = get_exact(&v, path, b).await;
            if round == 1 {
                assert!(x.contains("HIT"), "{path}: {x}");
            }
            check(path, v.metric("vedge_zero_copy_mappings").await);
        }
    }
    for (path, _) in &objects {
        assert_eq!(origin.count(path), 1, "{path} filled once");
    }
    // o0 and o1 took the budget; o2, o3 and o5 fell back to the heap (o4 never asked).
    assert_eq!(v.metric("vedge_zero_copy_mappings").await, 2);
    assert_eq!(v.metric("vedge_zero_copy_bodies").await, 2);
    assert!(v.metric("vedge_zero_copy_fallbacks_total").await >= 3);

    // Purged bodies give their mappings back, and the next large body is mapped again.
    purge(&v, &["/v/o0.ts", "/v/o1.ts"]).await;
    for _ in 0..100 {
        if v.metric("vedge_zero_copy_mappings").await == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(v.metric("vedge_zero_copy_mappings").await, 0);
    let fresh = body((2 << 20) + 4096 + 7, 99);
    origin.script(
        "/v/fresh.ts",
        Script::ok(fresh.clone()).header("cache-control", "max-age=600"),
    );
    let fallbacks = v.metric("vedge_zero_copy_fallbacks_total").await;
    get_exact(&v, "/v/fresh.ts", &fresh).await;
    get_exact(&v, "/v/fresh.ts", &fresh).await;
    assert_eq!(
        v.metric("vedge_zero_copy_mappings").await,
        2,
        "a split huge-page body holds both mappings of the budget"
    );
    assert_eq!(v.metric("vedge_zero_copy_fallbacks_total").await, fallbacks);
    // Full again: the next large body falls back, and is still right.
    let small = body(600 << 10, 7);
    origin.script(
        "/v/small.ts",
        Script::ok(small.clone()).header("cache-control", "max-age=600"),
    );
    get_exact(&v, "/v/small.ts", &small).await;
    get_exact(&v, "/v/small.ts", &small).await;
    assert!(v.metric("vedge_zero_copy_fallbacks_total").await > fallbacks);
    check("end", v.metric("vedge_zero_copy_mappings").await);
}

/// `Max open files` soft and hard limits of process `pid`.
fn nofile(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut n = line["Max open files".len()..]
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(u64::MAX));
    (n.next().expect("soft"), n.next().expect("hard"))
}

#[tokio::test]
async fn the_open_file_limit_is_raised_soft_to_hard_at_start_and_the_descriptor_budget_follows_it()
{
    let origin = Origin::start().await;
    let v = BinaryEdge::start_with_soft_nofile(&origin.url(), std::iter::empty::<&str>(), 256);
    v.ready().await;
    let (soft, hard) = nofile(v.pid());
    assert_eq!(soft, hard, "soft limit raised to the hard one");
    // A quarter of the raised limit (capped at 65,536), not of the 256 it was started with.
    let want = (hard / 4).min(1 << 16);
    assert_eq!(v.metric("vedge_zero_copy_fd_budget").await, want);
}
