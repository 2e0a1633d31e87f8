//! `live-burst --processes N`: the `vedge-bench` executable started as a user would, its viewers
//! spread over worker processes, the merged report read back from `--json`; and the parent's
//! handling of workers that fail, hang, or lose their parent.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use url::Url;
use vedge_bench::load::Scenario;
use vedge_bench::origin::OriginOptions;
use vedge_bench::workers::{self, Launcher, Spread};

use super::{config, counting_relay, start_origin};

const BENCH: &str = env!("CARGO_BIN_EXE_vedge-bench");

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vedge-bench-{}-{name}", std::process::id()))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// 40 viewers over two worker processes report as one run: every viewer played, the
/// connections the target accepted are the report's, and every merged count is the sum of the
/// processes' (a histogram's count included, so the merge kept every sample).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_spread_over_two_processes_reports_as_one() {
    let (base, _stop) = start_origin(OriginOptions::default()).await;
    let (relay, peers) = counting_relay(base.trim_start_matches("http://").to_string()).await;
    let json = temp_path("spread.json");
    let out = tokio::process::Command::new(BENCH)
        .args(["live-burst", "--target"])
        .arg(format!("http://{relay}/live/it-procs/master.m3u8"))
        .arg("--origin-stats")
        .arg(format!("{base}/__stats"))
        .args(["--viewers", "40", "--duration", "3s", "--scenario", "burst"])
        .args(["--burst-window", "200ms", "--mix", "1,1", "--sources", "4"])
        .args(["--processes", "2", "--json"])
        .arg(&json)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the run ends")
        .expect("vedge-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("2 processes (--processes)"), "{stderr}");
    assert!(stdout.contains("harness: 2 processes"), "{stdout}");
    let r: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    let _ = std::fs::remove_file(&json);

    assert_eq!(u(&r["processes"]), 2);
    assert_eq!(u(&r["viewers"]), 40);
    assert_eq!(u(&r["viewers_started"]), 40);
    assert_eq!(u(&r["viewers_played"]), 40);
    assert_eq!(u(&r["error_total"]), 0, "{}", r["errors"]);
    // One connection per viewer, and the target saw exactly those (plus the parent's one
    // reachability probe; the workers do not probe).
    assert_eq!(u(&r["connections_opened"]), 40);
    assert_eq!(peers.lock().len() as u64, u(&r["connections_opened"]) + 1);

    let by: &Vec<Value> = r["by_process"].as_array().expect("by_process");
    assert_eq!(by.len(), 2);
    let sum = |k: &str| by.iter().map(|p| u(&p[k])).sum::<u64>();
    for p in by {
        assert_eq!(u(&p["viewers"]), 20, "{p}");
        assert!(u(&p["requests"]) > 0, "{p}");
    }
    assert_eq!(sum("viewers"), 40);
    assert_eq!(sum("viewers_played"), 40);
    assert_eq!(sum("requests"), u(&r["requests"]));
    assert_eq!(sum("bytes"), u(&r["bytes"]));
    assert_eq!(sum("connections_opened"), u(&r["connections_opened"]));
    let lag_samples: u64 = by.iter().map(|p| u(&p["timer_lag_ms"]["count"])).sum();
    assert!(lag_samples > 0);
    assert_eq!(u(&r["timer_lag_ms"]["count"]), lag_samples);
    let cpu: f64 = by.iter().map(|p| f(&p["harness_cost"]["cpu_s"])).sum();
    assert!((f(&r["harness_cost"]["cpu_s"]) - cpu).abs() < 1e-6);

    // The merged classes and timeline add up to the totals, and the origin (no cache in
    // between) saw every media request the viewers made.
    let classes = r["classes"].as_object().expect("classes");
    let ok: u64 = classes.values().map(|c| u(&c["ok"])).sum();
    assert_eq!(ok, u(&r["requests"]));
    let timeline: u64 = r["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|s| u(&s["requests"]))
        .sum();
    assert_eq!(timeline, u(&r["requests"]));
    let seg = &r["classes"]["segment"];
    assert_eq!(u(&seg["ttfb_ms"]["count"]), u(&seg["ok"]));
    assert!(u(&seg["ok"]) >= 40 * 3, "{seg}");
    assert_eq!(u(&r["classes"]["master"]["ok"]), 40);
    let media = u(&seg["ok"]) + u(&r["classes"]["init"]["ok"]);
    assert_eq!(u(&r["origin"]["media_requests"]), media, "{}", r["origin"]);
}

/// A worker that fails, or exits without its results, or never reports, makes the run an
/// error within the run's bounds, and a hanging worker is killed.
#[tokio::test]
async fn a_worker_that_fails_or_hangs_voids_the_run() {
    let (base, _stop) = start_origin(OriginOptions::default()).await;
    let mut cfg = config(&base, "/live/it-fail/master.m3u8", Scenario::Burst, 4, 1);
    cfg.timeout = Duration::from_millis(100);
    let spread = |script: &str| {
        let launcher = Launcher {
            exe: "/bin/sh".into(),
            // The worker flags the parent appends land in the script's $0, $1...
            args: vec!["-c".into(), script.into()],
        };
        let mut s = Spread::new(2, launcher, "run-fail".into());
        s.lead = Duration::from_millis(100);
        s.grace = Duration::from_millis(500);
        s
    };
    for (script, says) in [
        ("exit 3", "failed"),
        ("exit 0", "without its results"),
        (
            "echo 'vedge-bench-worker {\"nonsense\":1}'; exit 0",
            "not a worker message",
        ),
    ] {
        let err = workers::run_spread(&cfg, &spread(script), |_| {})
            .await
            .expect_err(script);
        assert!(format!("{err:#}").contains(says), "{script}: {err:#}");
    }
    // Hangs: the parent gives up at the run's end plus the grace, and kills it.
    let pid_file = temp_path("hang.pid");
    let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
    let t0 = std::time::Instant::now();
    let err = workers::run_spread(&cfg, &spread(&script), |_| {})
        .await
        .expect_err("a hanging worker");
    assert!(format!("{err:#}").contains("did not finish"), "{err:#}");
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    let pid = std::fs::read_to_string(&pid_file).expect("pid file");
    let _ = std::fs::remove_file(&pid_file);
    assert!(gone(pid.trim()).await, "worker {pid} still running");
}

/// Whether process `pid` is gone (or a zombie waiting to be reaped) within a few seconds.
async fn gone(pid: &str) -> bool {
    for _ in 0..100 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|s| s.trim_start().starts_with('Z')) =>
            {
                return true
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    false
}

/// The children of `parent`, from /proc.
fn children_of(parent: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name().into_string().ok()?;
        name.parse::<u32>().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{name}/stat")).ok()?;
        // After the command name's closing parenthesis: state, then the parent's pid.
        let ppid: u32 = stat
            .rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == parent).then_some(name)
    })
    .collect()
}

/// A parent killed outright (no chance to clean up) does not leave its workers running: they
/// see their stdin close and exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_exit_when_their_parent_is_killed() {
    let (base, _stop) = start_origin(OriginOptions::default()).await;
    let mut parent = tokio::process::Command::new(BENCH)
        .args(["live-burst", "--target"])
        .arg(format!("{base}/live/it-orphan/master.m3u8"))
        .args(["--viewers", "4", "--duration", "60s", "--processes", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("vedge-bench runs");
    let pid = parent.id().expect("pid");
    let mut workers = Vec::new();
    for _ in 0..100 {
        workers = children_of(pid);
        if workers.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(workers.len(), 2, "two workers started: {workers:?}");
    parent.start_kill().expect("SIGKILL");
    let _ = parent.wait().await;
    for w in &workers {
        assert!(gone(w).await, "worker {w} outlived its parent");
    }
}

/// Workers run the whole run's schedule, split by viewer: the same viewers play as in a
/// one-process run, and the rendition mix is the whole run's (process 0 of 3 runs viewers 0 and
/// 3, one on each rendition), through the library entry point with a launcher of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_run_plays_the_same_viewers_as_one_process() {
    let (base, _stop) = start_origin(OriginOptions::default()).await;
    let cfg = config(&base, "/live/it-same/master.m3u8", Scenario::Burst, 6, 1);
    let one = vedge_bench::live_burst_report(&cfg, |_| {})
        .await
        .expect("one process");
    let mut cfg2 = cfg.clone();
    cfg2.target = Url::parse(&format!("{base}/live/it-same2/master.m3u8")).expect("url");
    cfg2.targets = vec![cfg2.target.clone()];
    let launcher = Launcher {
        exe: BENCH.into(),
        args: [
            "live-burst",
            "--target",
            cfg2.target.as_str(),
            "--viewers",
            "6",
            "--duration",
            "1s",
            "--scenario",
            "burst",
            "--burst-window",
            "200ms",
            "--mix",
            "1,1",
            "--seed",
            "3",
        ]
        .into_iter()
        .map(Into::into)
        .collect(),
    };
    let spread = workers::run_spread(&cfg2, &Spread::new(3, launcher, "same".into()), |_| {})
        .await
        .expect("three processes");
    assert_eq!(spread.processes, 3);
    assert_eq!(spread.by_process.len(), 3);
    for r in [&one, &spread] {
        assert_eq!(r.error_total, 0, "{:?}", r.errors);
        assert_eq!(r.viewers_played, 6);
        assert_eq!(r.classes["master"].ok, 6);
    }
    // The 1:1 mix is the whole run's, not each process's: both renditions, three viewers each.
    let o = spread.origin.as_ref().expect("origin stats");
    assert!(
        o.per_object.iter().any(|(p, _)| p.contains("/r0/")),
        "{o:?}"
    );
    assert!(
        o.per_object.iter().any(|(p, _)| p.contains("/r1/")),
        "{o:?}"
    );
}
