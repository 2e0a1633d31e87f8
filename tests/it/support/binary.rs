//! The real `vedge` binary under test: `vedge serve` as a child process on free loopback ports,
//! with the admin API on (token `ADMIN_TOKEN`), for what only a process shows (signals, restarts
//! on the same store, argv and exit codes). Dropping a `BinaryEdge` kills the process.
//!
//! ```ignore
//! let v = BinaryEdge::start(&origin.url(), ["--ram-size", "64MiB"]);
//! v.ready().await;
//! let r = v.get(v.port, "/a.ts").await.expect("answers");
//! ```

use std::ffi::OsStr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::edge::{read_raw, RawResp};

/// The admin bearer token every `BinaryEdge` runs with.
pub const ADMIN_TOKEN: &str = "test-token-123";

/// A loopback port free at the time of the call (the child binds it a moment later).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
    l.local_addr().expect("probe addr").port()
}

/// A running `vedge serve`.
pub struct BinaryEdge {
    child: Child,
    /// Viewer port.
    pub port: u16,
    /// Admin port (metrics, health).
    pub admin: u16,
}

impl BinaryEdge {
    /// Spawns `vedge serve` in front of `origin` with `extra` flags appended (logs at `warn` to
    /// the test's stderr). Call `ready` before sending requests.
    pub fn start<I, S>(origin: &str, extra: I) -> BinaryEdge
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        BinaryEdge::spawn(origin, extra, Stdio::inherit(), "warn", None)
    }

    /// Like `start`, with the child's soft open-file limit lowered to `soft` before it runs
    /// (the hard limit is left alone), as a shell with `ulimit -Sn` would start it.
    pub fn start_with_soft_nofile<I, S>(origin: &str, extra: I, soft: u64) -> BinaryEdge
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        BinaryEdge::spawn(origin, extra, Stdio::inherit(), "warn", Some((soft, false)))
    }

    /// Like `start`, with both the child's open-file limits lowered to `limit` (it cannot raise
    /// them back), for what a process does at its descriptor limit.
    pub fn start_with_nofile<I, S>(origin: &str, extra: I, limit: u64) -> BinaryEdge
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        BinaryEdge::spawn(origin, extra, Stdio::inherit(), "warn", Some((limit, true)))
    }

    /// The process id, for reading `/proc/<pid>/*`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Like `start`, with the process's log (at `info`, stderr: tracing and any panic message)
    /// written to `log`, for tests that scan it (e.g. for "panicked").
    pub fn start_logged<I, S>(origin: &str, extra: I, log: &std::path::Path) -> BinaryEdge
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let file = std::fs::File::create(log).expect("create the edge's log file");
        BinaryEdge::spawn(origin, extra, Stdio::from(file), "info", None)
    }

    fn spawn<I, S>(
        origin: &str,
        extra: I,
        stderr: Stdio,
        level: &str,
        nofile: Option<(u64, bool)>,
    ) -> BinaryEdge
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let (port, admin) = (free_port(), free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vedge"));
        // (soft limit, and whether the hard limit comes down with it)
        if let Some((soft, hard_too)) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec only getrlimit/setrlimit run (async-signal-safe),
            // on the child's own limits.
            unsafe {
                cmd.pre_exec(move || {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                        lim.rlim_cur = soft.min(lim.rlim_max);
                        if hard_too {
                            lim.rlim_max = lim.rlim_cur;
                        }
                        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--admin-token", ADMIN_TOKEN, "--origin", origin])
            .args(["--log", level])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn vedge");
        BinaryEdge { child, port, admin }
    }

    /// `GET path` on `port` (the viewer or the admin one) with `Connection: close`; `None` if
    /// the connection fails.
    pub async fn get(&self, port: u16, path: &str) -> Option<RawResp> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        Some(read_raw(&mut s).await)
    }

    /// Waits (bounded, 30 s: a debug build starting while every other test runs on two cores
    /// once took longer than 10) until the admin health check answers 200.
    pub async fn ready(&self) {
        for _ in 0..600 {
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

    /// A gauge or counter from /metrics (0 when absent).
    pub async fn metric(&self, name: &str) -> u64 {
        let r = self
            .get(self.admin, "/metrics")
            .await
            .expect("metrics answer");
        metric_in(&r.text(), name)
    }

    /// Sends `sig` (one that does not stop the process, e.g. SIGHUP) and returns at once.
    pub fn notify(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Sends `sig` and waits for the process to exit.
    pub fn signal(&mut self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        let _ = self.child.wait();
    }
}

impl Drop for BinaryEdge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gauge or counter (unlabelled) in a /metrics answer `text` (0 when absent).
pub fn metric_in(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}
