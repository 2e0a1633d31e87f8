//! Storage benchmark (not a test): write and random-read throughput, index RAM per object,
//! open time after a clean shutdown and after a crash. Results go to benches/results/storage.md.
//!
//! ```text
//! cargo run --release -p vedge-storage --example bench -- throughput <file> <uring|psync> <obj-bytes> <total-bytes> <readers> <secs>
//! cargo run --release -p vedge-storage --example bench -- objects <file> <uring|psync> <count>
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use vedge_storage::{Admit, EngineChoice, Meta, SkipReason, Source, Store, StoreConfig};

/// Counts live heap bytes so the index cost per object is measured, not estimated.
struct Counting;
static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards to the system allocator and only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, Relaxed);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as i64 - l.size() as i64, Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn meta() -> Meta {
    Meta {
        head: Bytes::from_static(b"HTTP/1.1 200 OK\r\ncontent-type: video/mp2t\r\n"),
        stored_at: SystemTime::now(),
        expires_at: SystemTime::now() + Duration::from_secs(86400),
        tags: vec!["asset:bench".into()],
        pinned: false,
    }
}

fn engine(s: &str) -> EngineChoice {
    match s {
        "uring" => EngineChoice::Uring,
        "psync" => EngineChoice::Psync,
        _ => EngineChoice::Auto,
    }
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / (1 << 20) as f64
}

async fn write_all(s: &Store, n: u64, body: &Bytes) {
    for i in 0..n {
        let key = format!("bench/obj-{i}");
        loop {
            match s.insert(key.as_bytes(), meta(), body.clone(), Source::Push) {
                Admit::Queued => break,
                Admit::Skipped(SkipReason::Busy) => s.flush().await,
                Admit::Skipped(r) => panic!("insert skipped: {}", r.as_str()),
            }
        }
    }
    s.flush().await;
}

async fn throughput(path: &str, eng: &str, obj: u64, total: u64, readers: usize, secs: u64) {
    let mut cfg = StoreConfig::new(path, total + total / 4 + (1 << 30));
    cfg.size = cfg.size / (1 << 20) * (1 << 20);
    cfg.engine = engine(eng);
    cfg.reformat = true;
    let s = Store::open(cfg).await.expect("open");
    let st = s.stats();
    println!(
        "engine={} direct_io={} regions={}",
        st.engine.as_str(),
        st.direct_io,
        st.regions
    );
    let body = Bytes::from(vec![0x5au8; obj as usize]);
    let n = total / obj;
    let t = Instant::now();
    write_all(&s, n, &body).await;
    let d = t.elapsed();
    let st = s.stats();
    println!(
        "write: {n} objects x {obj} B in {:.2}s = {:.0} MiB/s payload ({:.0} MiB/s device bytes)",
        d.as_secs_f64(),
        mbps(n * obj, d),
        mbps(st.bytes_written, d)
    );
    let done = Arc::new(AtomicU64::new(0));
    let misses = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let deadline = t + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for r in 0..readers {
        let s = s.clone();
        let done = done.clone();
        let misses = misses.clone();
        tasks.push(tokio::spawn(async move {
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (r as u64 + 1);
            while Instant::now() < deadline {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = format!("bench/obj-{}", x % n);
                match s.lookup(key.as_bytes()).await {
                    Some(h) => {
                        done.fetch_add(h.body.len() as u64, Relaxed);
                    }
                    None => {
                        misses.fetch_add(1, Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("reader");
    }
    let d = t.elapsed();
    let bytes = done.load(Relaxed);
    println!(
        "read: {readers} concurrent lookups, {:.2}s: {:.0} MiB/s, {:.0} objects/s, misses {}",
        d.as_secs_f64(),
        mbps(bytes, d),
        bytes as f64 / obj as f64 / d.as_secs_f64(),
        misses.load(Relaxed)
    );
    println!("corrupt_reads={}", s.stats().corrupt_reads);
    s.close().await.expect("close");
}

async fn objects(path: &str, eng: &str, count: u64) {
    // Small payloads (one 4 KiB block each) make this an index benchmark, not a disk one.
    let size = (count * 4096 + count * 4096 / 8 + (1 << 30)) / (1 << 20) * (1 << 20);
    let mut cfg = StoreConfig::new(path, size);
    cfg.engine = engine(eng);
    cfg.reformat = true;
    let s = Store::open(cfg.clone()).await.expect("open");
    let body = Bytes::from(vec![7u8; 3000]);
    let t = Instant::now();
    write_all(&s, count, &body).await;
    println!("wrote {count} objects in {:.1}s", t.elapsed().as_secs_f64());
    s.close().await.expect("close");
    cfg.reformat = false;

    let before = LIVE.load(Relaxed);
    let t = Instant::now();
    let s = Store::open(cfg.clone()).await.expect("open clean");
    let open_clean = t.elapsed();
    let after = LIVE.load(Relaxed);
    let st = s.stats();
    println!(
        "clean open: {:.3}s, objects {}, heap after open {} B = {:.1} B/object (index table alone {:.1} B/object)",
        open_clean.as_secs_f64(),
        st.objects,
        after - before,
        (after - before) as f64 / st.objects as f64,
        st.index_bytes as f64 / st.objects as f64
    );
    // Crash: drop without close (no snapshot, superblock left dirty).
    drop(s);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let s = Store::open(cfg.clone()).await.expect("open after crash");
    println!(
        "open after crash: {:.3}s, objects {}",
        t.elapsed().as_secs_f64(),
        s.stats().objects
    );
    s.close().await.expect("close");
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let arg = |i: usize| a.get(i).cloned().unwrap_or_default();
    let num = |i: usize| arg(i).parse::<u64>().expect("number");
    match arg(1).as_str() {
        "throughput" => rt.block_on(throughput(
            &arg(2),
            &arg(3),
            num(4),
            num(5),
            num(6) as usize,
            num(7),
        )),
        "objects" => rt.block_on(objects(&arg(2), &arg(3), num(4))),
        _ => eprintln!("usage: see the module docs of storage/examples/bench.rs"),
    }
}
