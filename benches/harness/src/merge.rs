//! A worker process's measurements as data (`Part`, sent to its parent as JSON) and their merge
//! into one [`Recorder`]: counts are added, histograms merged bucket by bucket (a percentile of
//! the whole run is never an average of the processes' percentiles), per-second rows added by
//! the second since the shared start instant, the first request of each media object kept from
//! the process that sent it earliest. The merged recorder then goes through the same
//! `report::build` as a one-process run.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::cost::HarnessCost;
use crate::load::{hist, ClassStats, FirstRequest, Recorder, Second};
use crate::viewer::Class;

/// A histogram as its recorded buckets: (highest value equivalent to the bucket, count). Each
/// value falls back into the bucket it came from when recorded again, so the round trip keeps
/// every percentile, the max and the count exactly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hist(pub Vec<(u64, u64)>);

impl Hist {
    pub fn of(h: &Histogram<u64>) -> Hist {
        Hist(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    /// Adds these buckets to `into` (values outside its bounds are clamped, as recording is).
    pub fn add_to(&self, into: &mut Histogram<u64>) {
        for &(v, n) in &self.0 {
            let _ = into.record_n(v.clamp(1, into.high()), n);
        }
    }

    pub fn histogram(&self) -> Histogram<u64> {
        let mut h = hist();
        self.add_to(&mut h);
        h
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassPart {
    pub requests: u64,
    pub ok: u64,
    pub bytes: u64,
    pub ttfb: Hist,
    pub total: Hist,
    pub wait: Hist,
    pub cache: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecondPart {
    pub requests: u64,
    pub bytes: u64,
    pub errors: u64,
    pub stalls: u64,
    pub seg_ttfb: Hist,
    pub seg_total: Hist,
    pub lag_max_us: u64,
}

/// The first request of one media object, its send time as microseconds since the run's start
/// (every process starts at the same wall-clock instant, so these compare across processes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirstPart {
    pub path: String,
    pub hit_or_collapsed: bool,
    pub ttfb_us: u64,
    pub sent_us: u64,
}

/// Everything one worker process measured: its recorder, its viewers' outcomes and its cost.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Part {
    /// The viewers this process ran (its share).
    pub viewers: u64,
    pub classes: BTreeMap<Class, ClassPart>,
    pub errors: BTreeMap<String, u64>,
    pub seconds: Vec<SecondPart>,
    pub stalls: u64,
    pub stalled_us: u64,
    pub watched_us: u64,
    pub startup: Hist,
    pub parse_errors: u64,
    pub viewers_started: u64,
    pub pool_wait: Hist,
    pub timer_lag: Hist,
    pub connections_opened: u64,
    pub live_latency: Hist,
    pub first_requests: Vec<FirstPart>,
    pub skipped: u64,
    pub played: u64,
    pub cost: HarnessCost,
    /// How late past the shared start instant the process was ready to start its viewers.
    pub start_late_us: u64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Part {
    /// What `rec` measured, with the run loop's outcome and the process's cost.
    pub fn of(
        rec: &Recorder,
        viewers: u64,
        skipped: u64,
        played: u64,
        cost: HarnessCost,
        start_late: Duration,
    ) -> Part {
        Part {
            viewers,
            classes: rec
                .classes
                .iter()
                .map(|(c, s)| {
                    (
                        *c,
                        ClassPart {
                            requests: s.requests,
                            ok: s.ok,
                            bytes: s.bytes,
                            ttfb: Hist::of(&s.ttfb),
                            total: Hist::of(&s.total),
                            wait: Hist::of(&s.wait),
                            cache: s.cache.clone(),
                        },
                    )
                })
                .collect(),
            errors: rec.errors.clone(),
            seconds: rec
                .seconds
                .iter()
                .map(|s| SecondPart {
                    requests: s.requests,
                    bytes: s.bytes,
                    errors: s.errors,
                    stalls: s.stalls,
                    seg_ttfb: Hist::of(&s.seg_ttfb),
                    seg_total: Hist::of(&s.seg_total),
                    lag_max_us: s.lag_max_us,
                })
                .collect(),
            stalls: rec.stalls,
            stalled_us: micros(rec.stalled),
            watched_us: micros(rec.watched),
            startup: Hist::of(&rec.startup),
            parse_errors: rec.parse_errors,
            viewers_started: rec.viewers_started,
            pool_wait: Hist::of(&rec.pool_wait),
            timer_lag: Hist::of(&rec.timer_lag),
            connections_opened: rec.connections_opened,
            live_latency: Hist::of(&rec.live_latency),
            first_requests: rec
                .first_requests
                .iter()
                .map(|(path, f)| FirstPart {
                    path: path.clone(),
                    hit_or_collapsed: f.hit_or_collapsed,
                    ttfb_us: f.ttfb_us,
                    sent_us: micros(f.sent.saturating_duration_since(rec.start)),
                })
                .collect(),
            skipped,
            played,
            cost,
            start_late_us: micros(start_late),
        }
    }
}

impl Recorder {
    /// Adds what another process measured (over the same start instant) to this recorder.
    pub fn absorb(&mut self, part: &Part) {
        for (class, p) in &part.classes {
            let c = self.classes.entry(*class).or_insert_with(ClassStats::new);
            c.requests += p.requests;
            c.ok += p.ok;
            c.bytes += p.bytes;
            p.ttfb.add_to(&mut c.ttfb);
            p.total.add_to(&mut c.total);
            p.wait.add_to(&mut c.wait);
            for (k, n) in &p.cache {
                *c.cache.entry(k.clone()).or_default() += n;
            }
        }
        for (k, n) in &part.errors {
            *self.errors.entry(k.clone()).or_default() += n;
        }
        for (i, p) in part.seconds.iter().enumerate() {
            let s: &mut Second = self.second(self.start + Duration::from_secs(i as u64));
            s.requests += p.requests;
            s.bytes += p.bytes;
            s.errors += p.errors;
            s.stalls += p.stalls;
            p.seg_ttfb.add_to(&mut s.seg_ttfb);
            p.seg_total.add_to(&mut s.seg_total);
            s.lag_max_us = s.lag_max_us.max(p.lag_max_us);
        }
        self.stalls += part.stalls;
        self.stalled += Duration::from_micros(part.stalled_us);
        self.watched += Duration::from_micros(part.watched_us);
        part.startup.add_to(&mut self.startup);
        self.parse_errors += part.parse_errors;
        self.viewers_started += part.viewers_started;
        part.pool_wait.add_to(&mut self.pool_wait);
        part.timer_lag.add_to(&mut self.timer_lag);
        self.connections_opened += part.connections_opened;
        part.live_latency.add_to(&mut self.live_latency);
        for f in &part.first_requests {
            let this = FirstRequest {
                hit_or_collapsed: f.hit_or_collapsed,
                ttfb_us: f.ttfb_us,
                sent: self.start + Duration::from_micros(f.sent_us),
            };
            let room = self.first_requests.len() < crate::load::FIRST_REQUESTS;
            match self.first_requests.get_mut(&f.path) {
                Some(have) if this.sent < have.sent => *have = this,
                Some(_) => {}
                None if room => {
                    self.first_requests.insert(f.path.clone(), this);
                }
                None => {}
            }
        }
    }

    /// One recorder from the parts of a run whose processes all started at `start`.
    pub fn merged<'a>(start: Instant, parts: impl IntoIterator<Item = &'a Part>) -> Recorder {
        let mut rec = Recorder::new(start);
        for p in parts {
            rec.absorb(p);
        }
        rec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two processes' latencies merged give the percentiles of all samples together, which
    /// the average of the two processes' percentiles does not.
    #[test]
    fn merged_histograms_give_the_percentiles_of_all_samples() {
        let (mut fast, mut slow, mut all) = (hist(), hist(), hist());
        for v in 1..=900u64 {
            let _ = fast.record(v * 10);
            let _ = all.record(v * 10);
        }
        for v in 1..=100u64 {
            let _ = slow.record(1_000_000 + v * 1000);
            let _ = all.record(1_000_000 + v * 1000);
        }
        let mut merged = Hist::of(&fast).histogram();
        Hist::of(&slow).add_to(&mut merged);
        assert_eq!(merged.len(), all.len());
        for q in [0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            assert_eq!(
                merged.value_at_quantile(q),
                all.value_at_quantile(q),
                "quantile {q}"
            );
        }
        assert_eq!(merged.max(), all.max());
        assert_eq!(merged.min(), all.min());
        // The averaged p99 would claim ~0.55 s; the run's p99 is in the slow process's range.
        let averaged = (fast.value_at_quantile(0.99) + slow.value_at_quantile(0.99)) / 2;
        assert!(merged.value_at_quantile(0.99) > averaged);
        // A JSON round trip keeps every bucket.
        let json = serde_json::to_string(&Hist::of(&all)).expect("json");
        let back: Hist = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, Hist::of(&all));
    }

    #[test]
    fn recorders_merge_counts_seconds_and_the_earliest_first_request() {
        let start = Instant::now();
        let mut a = Recorder::new(start);
        let mut b = Recorder::new(start);
        for (r, n, lag) in [(&mut a, 3u64, 500u64), (&mut b, 5, 9000)] {
            let c = r.classes.get_mut(&Class::Segment).expect("class");
            c.requests = n;
            c.ok = n;
            c.bytes = n * 100;
            *c.cache.entry("HIT".into()).or_default() += n;
            for i in 0..n {
                let _ = c.ttfb.record(1000 * (i + 1));
            }
            *r.errors.entry("connect".into()).or_default() += 1;
            r.timer_lag(Duration::from_micros(lag));
            r.second(start + Duration::from_secs(2)).requests += n;
            r.connections_opened = n;
        }
        a.first_requests.insert(
            "/s1.m4s".into(),
            FirstRequest {
                hit_or_collapsed: false,
                ttfb_us: 7,
                sent: start + Duration::from_millis(30),
            },
        );
        b.first_requests.insert(
            "/s1.m4s".into(),
            FirstRequest {
                hit_or_collapsed: true,
                ttfb_us: 9,
                sent: start + Duration::from_millis(10),
            },
        );
        let cost = HarnessCost::sum([], 1);
        let parts = [
            Part::of(&a, 3, 0, 3, cost.clone(), Duration::ZERO),
            Part::of(&b, 5, 1, 5, cost, Duration::ZERO),
        ];
        let json = serde_json::to_string(&parts[1]).expect("json");
        let back: Part = serde_json::from_str(&json).expect("parse");
        let m = Recorder::merged(start, [&parts[0], &back]);
        let seg = &m.classes[&Class::Segment];
        assert_eq!((seg.requests, seg.ok, seg.bytes), (8, 8, 800));
        assert_eq!(seg.ttfb.len(), 8);
        assert_eq!(seg.cache["HIT"], 8);
        assert_eq!(m.errors["connect"], 2);
        assert_eq!(m.connections_opened, 8);
        assert_eq!(m.seconds.len(), 3);
        assert_eq!(m.seconds[2].requests, 8);
        assert_eq!(m.timer_lag.len(), 2);
        let first = &m.first_requests["/s1.m4s"];
        assert!(first.hit_or_collapsed, "the earlier send wins");
        assert_eq!(first.ttfb_us, 9);
    }
}
