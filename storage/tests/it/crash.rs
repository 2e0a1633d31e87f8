//! Crash loop: a child process writes bursts and prints every acknowledged key; the parent
//! SIGKILLs it at varying points, reopens, and checks every acknowledged object is served
//! intact and nothing corrupt is ever served.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use vedge_storage::{EngineChoice, Source, Store, StoreConfig};

use crate::support::*;

const CYCLES: usize = 50;
const BURST: usize = 40;

/// Every child opens a fresh region after recovery, so 50 cycles need over 50 regions: the
/// store must never evict here, or "acknowledged object lost" would be a legitimate eviction.
fn crash_cfg(path: &Path, engine: EngineChoice) -> StoreConfig {
    let mut c = StoreConfig::new(path, 160 << 20);
    c.region_size = 1 << 20;
    c.engine = engine;
    c.admit_window = Duration::ZERO;
    c
}

fn len_for(cycle: usize, i: usize) -> usize {
    1 + (cycle * 7919 + i * 104_729) % 24_000
}

/// The child side; runs only when the parent re-executes this test binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of crash_loop"]
async fn crash_child() {
    let Ok(dir) = std::env::var("VEDGE_CRASH_DIR") else {
        return;
    };
    let engine = if std::env::var("VEDGE_CRASH_ENGINE").as_deref() == Ok("uring") {
        EngineChoice::Uring
    } else {
        EngineChoice::Psync
    };
    let cycle: usize = std::env::var("VEDGE_CRASH_CYCLE").unwrap().parse().unwrap();
    let s = Store::open(crash_cfg(&Path::new(&dir).join("store"), engine))
        .await
        .unwrap();
    println!("READY");
    let mut tasks = Vec::new();
    for i in 0..BURST {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("c{cycle}-{i}");
            let len = len_for(cycle, i);
            let m = meta(&key, &[], false);
            if s.insert_durable(key.as_bytes(), m, body_for(&key, len), Source::Push)
                .await
                .is_ok()
            {
                println!("ACK {key} {len}");
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    println!("DONE");
    // Clean close on some cycles if the parent has not killed us yet.
    if cycle % 5 == 4 {
        s.close().await.unwrap();
        println!("CLOSED");
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test]
async fn crash_loop_every_acknowledged_object_survives_sigkill() {
    let exe = std::env::current_exe().unwrap();
    for (engine, name) in [
        (EngineChoice::Uring, "uring"),
        (EngineChoice::Psync, "psync"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let c = crash_cfg(&dir.path().join("store"), engine);
        let mut acked: BTreeMap<String, usize> = BTreeMap::new();
        let mut all: BTreeMap<String, usize> = BTreeMap::new();
        for cycle in 0..CYCLES {
            for i in 0..BURST {
                all.insert(format!("c{cycle}-{i}"), len_for(cycle, i));
            }
            let mut child = Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "crash::crash_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("VEDGE_CRASH_DIR", dir.path())
                .env("VEDGE_CRASH_ENGINE", name)
                .env("VEDGE_CRASH_CYCLE", cycle.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let out = child.stdout.take().unwrap();
            let (tx, rx) = mpsc::channel();
            let reader = std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            // Kill at a different point each cycle: before the first ack, mid-burst, after all.
            let kill_after = (cycle * 13) % (BURST + 5);
            let mut acks = 0;
            let mut ready = false;
            while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
                if line.ends_with("READY") {
                    ready = true;
                    if kill_after == 0 {
                        break;
                    }
                }
                if let Some(rest) = line.strip_prefix("ACK ") {
                    let (k, l) = rest.split_once(' ').unwrap();
                    acked.insert(k.to_string(), l.parse().unwrap());
                    acks += 1;
                    if acks >= kill_after {
                        break;
                    }
                }
                if line == "DONE" && cycle % 5 != 4 || line == "CLOSED" {
                    break;
                }
            }
            assert!(ready, "cycle {cycle}: child never opened the store");
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            reader.join().unwrap();
            // Everything the child printed before dying was acknowledged.
            for line in rx.try_iter() {
                if let Some(rest) = line.strip_prefix("ACK ") {
                    let (k, l) = rest.split_once(' ').unwrap();
                    acked.insert(k.to_string(), l.parse().unwrap());
                }
            }
            let s = Store::open(c.clone())
                .await
                .unwrap_or_else(|e| panic!("cycle {cycle}: reopen failed: {e}"));
            // A region is reclaimed only when the last free one is opened: two free ones left
            // mean nothing was.
            let st = s.stats();
            assert!(
                st.regions_in_use + 1 < st.regions,
                "cycle {cycle}: the store filled up; enlarge it"
            );
            for (k, len) in &all {
                match s.lookup(k.as_bytes()).await {
                    Some(hit) => {
                        assert!(
                            hit.body == body_for(k, *len),
                            "cycle {cycle} ({name}): {k} served corrupt"
                        );
                    }
                    None => assert!(
                        !acked.contains_key(k),
                        "cycle {cycle} ({name}): acknowledged {k} lost"
                    ),
                }
            }
            assert_eq!(s.stats().corrupt_reads, 0, "cycle {cycle} ({name})");
            if cycle % 2 == 0 {
                s.close().await.unwrap();
            } else {
                drop(s);
            }
        }
        assert!(
            acked.len() > CYCLES * BURST / 3,
            "{name}: only {} acks over {CYCLES} cycles",
            acked.len()
        );
    }
}
