//! DASH SegmentTimeline (ISO/IEC 23009-1 5.3.9.6) as runs of equal segments: `<S t d r>` with the
//! start inherited from the previous run when `@t` is absent and `@r="-1"` repeated up to the next
//! `S@t` or the period's end. The ingest walk (static MPDs, a known end) and the harness's live
//! viewers (no end: the last open run follows the clock) read timelines through this one place.

use dash_mpd_core::S;

/// `count` segments of `d` ticks from `t` (media timeline ticks, before the presentation time
/// offset). Wide integers: a crafted MPD can push the implied times past `u64`, and each reader
/// decides what that means for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub t: u128,
    pub d: u64,
    /// `None`: `@r` is negative and neither a following `S@t` nor the period's end bounds it,
    /// so the run goes on for as long as the stream does (a live edge).
    pub count: Option<u128>,
}

impl Run {
    /// Where the run ends (the start of the segment after it), if it ends.
    pub fn end(&self) -> Option<u128> {
        let c = self.count?;
        Some(self.t.saturating_add(u128::from(self.d).saturating_mul(c)))
    }
}

/// Why a timeline cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimelineError {
    #[error("SegmentTimeline S@d=0")]
    ZeroDuration,
}

/// The runs of `segments`, one per `S`, in order. `end` is the period's end in the same ticks
/// (`None` when unknown, as for a live stream). Lazy, so that a reader can stop at the first run
/// that takes it over a limit before later ones are looked at.
pub fn runs(segments: &[S], end: Option<u128>) -> Runs<'_> {
    Runs {
        segments,
        i: 0,
        next_t: 0,
        end,
    }
}

/// Iterator returned by [`runs`].
#[derive(Debug, Clone)]
pub struct Runs<'a> {
    segments: &'a [S],
    i: usize,
    next_t: u128,
    end: Option<u128>,
}

impl Iterator for Runs<'_> {
    type Item = Result<Run, TimelineError>;

    fn next(&mut self) -> Option<Self::Item> {
        let s = self.segments.get(self.i)?;
        self.i += 1;
        if s.d == 0 {
            return Some(Err(TimelineError::ZeroDuration));
        }
        let t = s.t.map_or(self.next_t, u128::from);
        let d = u128::from(s.d);
        let count = match s.r {
            Some(r) if r >= 0 => Some(r as u128 + 1),
            None => Some(1),
            // r<0: repeat until the next S@t, else until the end of the period.
            Some(_) => {
                let until = match self.segments.get(self.i).and_then(|n| n.t) {
                    Some(nt) => Some(u128::from(nt)),
                    None => self.end,
                };
                until.map(|u| u.saturating_sub(t).div_ceil(d))
            }
        };
        let run = Run { t, d: s.d, count };
        // An open run has no end: a following S without @t starts where it started.
        self.next_t = run.end().unwrap_or(t);
        Some(Ok(run))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: Option<u64>, d: u64, r: Option<i64>) -> S {
        S {
            t,
            d,
            r,
            ..S::default()
        }
    }

    fn all(segments: &[S], end: Option<u128>) -> Result<Vec<Run>, TimelineError> {
        runs(segments, end).collect()
    }

    #[test]
    fn starts_are_inherited_and_repeats_counted() {
        let tl = [
            s(Some(10), 4, Some(2)),
            s(None, 2, None),
            s(Some(40), 5, Some(-1)),
            s(None, 3, Some(0)),
        ];
        let r = all(&tl, Some(60)).expect("valid");
        assert_eq!(
            r,
            vec![
                Run {
                    t: 10,
                    d: 4,
                    count: Some(3)
                },
                Run {
                    t: 22,
                    d: 2,
                    count: Some(1)
                },
                // Up to the period's end: (60 - 40) / 5.
                Run {
                    t: 40,
                    d: 5,
                    count: Some(4)
                },
                Run {
                    t: 60,
                    d: 3,
                    count: Some(1)
                },
            ]
        );
    }

    #[test]
    fn a_negative_repeat_stops_at_the_next_start_or_stays_open() {
        let tl = [s(Some(0), 4, Some(-1)), s(Some(10), 4, Some(-1))];
        let r = all(&tl, None).expect("valid");
        // ceil(10 / 4): the last one overlaps the next S, as players count it.
        assert_eq!(r[0].count, Some(3));
        assert_eq!(r[1].count, None, "live: no end known");
        assert_eq!(r[1].end(), None);
        assert_eq!(all(&tl, Some(18)).expect("valid")[1].count, Some(2));
    }

    #[test]
    fn zero_durations_are_errors_where_they_occur() {
        let tl = [s(Some(0), 1, None), s(None, 0, None)];
        let mut it = runs(&tl, None);
        assert!(matches!(it.next(), Some(Ok(_))));
        assert_eq!(it.next(), Some(Err(TimelineError::ZeroDuration)));
        assert_eq!(it.next(), None);
    }
}
