//! What the harness itself spends on a run: CPU time and resident memory, in total and per
//! viewer, so a run can tell whether the harness (not the edge) was the limit and how many
//! viewers one harness process can drive.

/// CPU time (user + system) and resident set at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    cpu_s: f64,
    rss_kib: u64,
}

/// The harness's cost over a run (in the report's `harness_cost`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HarnessCost {
    /// CPU seconds (user + system) the harness process spent during the run.
    pub cpu_s: f64,
    pub cpu_ms_per_viewer: f64,
    /// Peak resident set of the process, and its growth over the run.
    pub rss_peak_mib: f64,
    pub rss_growth_mib: f64,
    pub rss_kib_per_viewer: f64,
}

impl Usage {
    pub fn now() -> Usage {
        Usage {
            cpu_s: cpu_seconds(),
            rss_kib: rss_kib(),
        }
    }

    /// The cost from `start` to now, spread over `viewers`.
    pub fn since(&self, start: &Usage, viewers: u64) -> HarnessCost {
        let cpu_s = (self.cpu_s - start.cpu_s).max(0.0);
        let peak = peak_rss_kib().max(self.rss_kib);
        let growth = peak.saturating_sub(start.rss_kib);
        let v = viewers.max(1) as f64;
        HarnessCost {
            cpu_s,
            cpu_ms_per_viewer: cpu_s * 1000.0 / v,
            rss_peak_mib: peak as f64 / 1024.0,
            rss_growth_mib: growth as f64 / 1024.0,
            rss_kib_per_viewer: growth as f64 / v,
        }
    }
}

impl HarnessCost {
    /// The cost of a run spread over several processes: CPU and memory added up (the
    /// processes ran at the same time, so their peaks are counted together), per viewer over
    /// the whole run's `viewers`.
    pub fn sum<'a>(parts: impl IntoIterator<Item = &'a HarnessCost>, viewers: u64) -> HarnessCost {
        let (mut cpu_s, mut peak, mut growth) = (0.0, 0.0, 0.0);
        for p in parts {
            cpu_s += p.cpu_s;
            peak += p.rss_peak_mib;
            growth += p.rss_growth_mib;
        }
        let v = viewers.max(1) as f64;
        HarnessCost {
            cpu_s,
            cpu_ms_per_viewer: cpu_s * 1000.0 / v,
            rss_peak_mib: peak,
            rss_growth_mib: growth,
            rss_kib_per_viewer: growth * 1024.0 / v,
        }
    }
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes a valid local struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Peak resident set (`ru_maxrss`, KiB on Linux).
fn peak_rss_kib() -> u64 {
    // SAFETY: as above.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    ru.ru_maxrss.max(0) as u64
}

/// Current resident set from `/proc/self/statm` (pages), 0 where it cannot be read.
fn rss_kib() -> u64 {
    let page_kib = 4; // x86-64 and aarch64 Linux default page size
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page_kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_spread_over_viewers() {
        let start = Usage::now();
        // Burn a little CPU so the delta is measurable.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        let c = Usage::now().since(&start, 10);
        assert!(c.cpu_s >= 0.0);
        assert!((c.cpu_ms_per_viewer - c.cpu_s * 100.0).abs() < 1e-9);
        assert!(c.rss_peak_mib > 0.0);
    }

    #[test]
    fn costs_of_processes_add_up_and_are_spread_over_all_viewers() {
        let one = |cpu_s: f64, growth_mib: f64| HarnessCost {
            cpu_s,
            cpu_ms_per_viewer: 0.0,
            rss_peak_mib: 100.0,
            rss_growth_mib: growth_mib,
            rss_kib_per_viewer: 0.0,
        };
        let c = HarnessCost::sum(&[one(2.0, 10.0), one(3.0, 30.0)], 1000);
        assert_eq!(c.cpu_s, 5.0);
        assert_eq!(c.cpu_ms_per_viewer, 5.0);
        assert_eq!(c.rss_peak_mib, 200.0);
        assert_eq!(c.rss_growth_mib, 40.0);
        assert!((c.rss_kib_per_viewer - 40.0 * 1024.0 / 1000.0).abs() < 1e-9);
    }
}
