//! Wall-clock time for freshness decisions, injectable. The edge reads the system clock (stored
//! objects keep their age across restarts); tests use a clock that follows tokio's time, so a
//! TTL test pauses and advances time (`tokio::time::pause` + `advance`) instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// `SystemTime::now()`.
    #[default]
    System,
    /// The system time when the clock was made, plus however far tokio's clock has moved since
    /// (paused, auto-advanced or advanced by hand in tests), plus what `skip` added (for
    /// multi-threaded tests, where tokio's time cannot be paused).
    Tokio {
        epoch: SystemTime,
        start: tokio::time::Instant,
        skipped_ms: Arc<AtomicU64>,
    },
}

impl Clock {
    /// A clock that follows tokio's time; must be made inside a runtime.
    pub fn tokio() -> Clock {
        Clock::Tokio {
            epoch: SystemTime::now(),
            start: tokio::time::Instant::now(),
            skipped_ms: Arc::default(),
        }
    }

    pub fn now(&self) -> SystemTime {
        match self {
            Clock::System => SystemTime::now(),
            Clock::Tokio {
                epoch,
                start,
                skipped_ms,
            } => *epoch + start.elapsed() + Duration::from_millis(skipped_ms.load(Relaxed)),
        }
    }

    /// Moves a tokio clock forward by `by` without touching tokio's timers; the system clock
    /// cannot be moved (a no-op).
    pub fn skip(&self, by: Duration) {
        if let Clock::Tokio { skipped_ms, .. } = self {
            skipped_ms.fetch_add(by.as_millis() as u64, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_advanced_time() {
        let clock = Clock::tokio();
        let t0 = clock.now();
        tokio::time::advance(Duration::from_secs(90)).await;
        let moved = clock.now().duration_since(t0).expect("monotonic");
        assert_eq!(moved.as_secs(), 90);
        clock.skip(Duration::from_secs(10));
        let moved = clock.now().duration_since(t0).expect("monotonic");
        assert_eq!(moved.as_secs(), 100);
    }
}
