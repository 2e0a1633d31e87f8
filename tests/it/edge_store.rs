//! Issue 3's acceptance, end to end with the real binary: `vedge serve --store` in front of an
//! origin; fetch segments; stop vedge (SIGTERM, and separately SIGKILL); stop the origin; start
//! vedge again on the same store: every segment fetched before is a HIT from disk. On the
//! io_uring engine (auto) and on psync.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::edge::{read_raw, RawResp};
use crate::support::origin::{Origin, Script};

const TOKEN: &str = "test-token-123";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
    l.local_addr().expect("probe addr").port()
}

struct Vedge {
    child: Child,
    port: u16,
    admin: u16,
}

impl Vedge {
    fn start(origin: &str, store: &Path, engine: &str) -> Vedge {
        let (port, admin) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_vedge"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--admin-token", TOKEN, "--origin", origin])
            .arg("--store")
            .arg(store)
            .args(["--store-size", "64MiB", "--store-region-size", "4MiB"])
            .args(["--io-engine", engine, "--log", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn vedge");
        Vedge { child, port, admin }
    }

    async fn get(&self, port: u16, path: &str) -> Option<RawResp> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        Some(read_raw(&mut s).await)
    }

    /// Waits (bounded) until the viewer port answers.
    async fn ready(&self) {
        for _ in 0..200 {
            if self
                .get(self.admin, "/healthz")
                .await
                .is_some_and(|r| r.status() == 200)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("vedge did not come up");
    }

    /// A gauge or counter from /metrics.
    async fn metric(&self, name: &str) -> u64 {
        let r = self
            .get(self.admin, "/metrics")
            .await
            .expect("metrics answer");
        let text = r.text();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    }

    fn signal(&mut self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        let _ = self.child.wait();
    }
}

impl Drop for Vedge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn restart_serves_from_disk(engine: &str, sig: i32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("vedge.store");
    let origin = Origin::start().await;
    let paths: Vec<String> = (0..3).map(|i| format!("/vod/seg_{i}.m4s")).collect();
    let bodies: Vec<Vec<u8>> = (0..3u8)
        .map(|i| {
            (0..300_000u32)
                .map(|b| (b as u8) ^ i.wrapping_mul(37))
                .collect()
        })
        .collect();
    for (p, b) in paths.iter().zip(&bodies) {
        origin.script(p, Script::ok(b.clone()).header("content-type", "video/mp4"));
    }

    let mut v = Vedge::start(&origin.url(), &store, engine);
    v.ready().await;
    for p in &paths {
        let r = v.get(v.port, p).await.expect("first fetch");
        assert_eq!(r.status(), 200);
        assert_eq!(r.header("x-cache").as_deref(), Some("MISS"));
    }
    // Writes are asynchronous: wait (bounded) until the store holds all three.
    for _ in 0..200 {
        if v.metric("vedge_store_objects").await >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        v.metric("vedge_store_objects").await,
        3,
        "{engine}: not all stored"
    );
    v.signal(sig);
    drop(origin);

    let v = Vedge::start("http://127.0.0.1:9", &store, engine);
    v.ready().await;
    for (p, b) in paths.iter().zip(&bodies) {
        let r = v.get(v.port, p).await.expect("fetch after restart");
        let (_, body) = r.split();
        assert_eq!(
            r.status(),
            200,
            "{engine}/{sig}: {p}: {}",
            r.text().lines().next().unwrap_or("")
        );
        assert_eq!(
            r.header("x-cache").as_deref(),
            Some("HIT"),
            "{engine}/{sig}: {p}"
        );
        assert!(
            r.header("cache-status")
                .is_some_and(|c| c.contains("detail=disk")),
            "{engine}/{sig}: {p}: {:?}",
            r.header("cache-status")
        );
        assert_eq!(body, &b[..], "{engine}/{sig}: {p}: body differs");
    }
}

#[tokio::test]
async fn sigterm_then_restart_hits_from_disk_uring() {
    restart_serves_from_disk("auto", libc::SIGTERM).await;
}

#[tokio::test]
async fn sigkill_then_restart_hits_from_disk_uring() {
    restart_serves_from_disk("auto", libc::SIGKILL).await;
}

#[tokio::test]
async fn sigterm_then_restart_hits_from_disk_psync() {
    restart_serves_from_disk("psync", libc::SIGTERM).await;
}

#[tokio::test]
async fn sigkill_then_restart_hits_from_disk_psync() {
    restart_serves_from_disk("psync", libc::SIGKILL).await;
}
