//! Wall-clock time for freshness decisions, injectable. The edge reads the system clock (stored
//! objects keep their age across restarts); tests use a clock that follows tokio's time, so a
//! TTL test pauses and advances time (`tokio::time::pause` + `advance`) instead of sleeping.

use std::time::SystemTime;

#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// `SystemTime::now()`.
    #[default]
    System,
    /// The system time when the clock was made, plus however far tokio's clock has moved since
    /// (paused, auto-advanced or advanced by hand in tests).
    Tokio {
        epoch: SystemTime,
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock that follows tokio's time; must be made inside a runtime.
    pub fn tokio() -> Clock {
        Clock::Tokio {
            epoch: SystemTime::now(),
            start: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> SystemTime {
        match self {
            Clock::System => SystemTime::now(),
            Clock::Tokio { epoch, start } => *epoch + start.elapsed(),
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
    }
}
