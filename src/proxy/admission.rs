//! Admission under overload: `PriorityGate`, a counting semaphore whose waiters carry a
//! priority. When every permit is taken, a released permit goes to the oldest `Urgent` waiter,
//! and to the oldest `Normal` one when no urgent one waits or after `URGENT_RUN` urgent ones in
//! a row were admitted past it. The edge uses it to serve players that report a low buffer
//! first (CMCD `bl` under `cmcd.low_buffer_ms`, `bs`, `su`: `cmcd::Cmcd::urgent`) when a limit
//! is reached, such as a cap on concurrent origin fills.
//!
//! Urgency is the player's own claim, so it buys a place near the front, never the whole
//! queue: with strict priority one client claiming starvation on a stream of cold requests kept
//! every other viewer's fill waiting until its deadline.
//!
//! A permit is handed straight to the waiter it is released to (the count never rises while
//! anyone waits), so a newcomer cannot overtake a queued urgent waiter. A waiter that gives up
//! (its future is dropped, e.g. by the caller's timeout: every wait has one) leaves the queue at
//! once; if a permit reached it in the same instant, the drop passes it on.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// Which queue a waiter joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A player short of media (low buffer, starvation, startup): admitted first.
    Urgent,
    Normal,
}

impl Priority {
    /// `Urgent` when `urgent` holds (e.g. `Cmcd::urgent(cfg.low_buffer_ms)`).
    pub fn urgent_if(urgent: bool) -> Priority {
        if urgent {
            Priority::Urgent
        } else {
            Priority::Normal
        }
    }
}

/// Urgent waiters admitted in a row past a waiting normal one before that one goes: urgent
/// claims still get three of every four permits under contention, and an ordinary waiter is
/// never more than three places behind however many claims arrive after it.
pub const URGENT_RUN: usize = 3;

struct Waiter {
    id: u64,
    tx: oneshot::Sender<()>,
}

struct State {
    available: usize,
    next_id: u64,
    urgent: VecDeque<Waiter>,
    normal: VecDeque<Waiter>,
    /// Urgent waiters admitted in a row while a normal one waited.
    urgent_run: usize,
}

impl State {
    /// The waiter a released permit goes to: the oldest urgent one, unless `URGENT_RUN` of
    /// them went in a row past a waiting normal one.
    fn next_waiter(&mut self) -> Option<Waiter> {
        let normal_due = self.urgent_run >= URGENT_RUN && !self.normal.is_empty();
        if !normal_due {
            if let Some(w) = self.urgent.pop_front() {
                self.urgent_run = if self.normal.is_empty() {
                    0
                } else {
                    self.urgent_run + 1
                };
                return Some(w);
            }
        }
        let w = self.normal.pop_front()?;
        self.urgent_run = 0;
        Some(w)
    }

    /// Hands one permit to the first live waiter (`next_waiter`); without one it goes back
    /// to the count. A waiter whose receiver is gone is skipped (its drop already removed it,
    /// so this is only the race where it is dropping right now).
    fn release(&mut self) {
        while let Some(w) = self.next_waiter() {
            if w.tx.send(()).is_ok() {
                return;
            }
        }
        self.available += 1;
    }
}

/// A semaphore with two classes of waiters. Cloning shares the permits.
#[derive(Clone)]
pub struct PriorityGate {
    state: Arc<Mutex<State>>,
}

/// One admitted unit of work; dropping it releases the permit to the next waiter.
pub struct GatePermit {
    state: Arc<Mutex<State>>,
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        self.state.lock().release();
    }
}

impl PriorityGate {
    pub fn new(permits: usize) -> PriorityGate {
        PriorityGate {
            state: Arc::new(Mutex::new(State {
                available: permits,
                next_id: 0,
                urgent: VecDeque::new(),
                normal: VecDeque::new(),
                urgent_run: 0,
            })),
        }
    }

    /// A permit now, if one is free.
    pub fn try_acquire(&self) -> Option<GatePermit> {
        let mut s = self.state.lock();
        if s.available == 0 {
            return None;
        }
        s.available -= 1;
        Some(GatePermit {
            state: self.state.clone(),
        })
    }

    /// Waits for a permit in `priority`'s queue. Unbounded by itself: wrap it in the caller's
    /// deadline (dropping the future leaves the queue).
    pub fn acquire(&self, priority: Priority) -> Acquire {
        let mut s = self.state.lock();
        if s.available > 0 {
            s.available -= 1;
            return Acquire {
                state: self.state.clone(),
                wait: None,
            };
        }
        let (tx, rx) = oneshot::channel();
        let id = s.next_id;
        s.next_id += 1;
        match priority {
            Priority::Urgent => s.urgent.push_back(Waiter { id, tx }),
            Priority::Normal => s.normal.push_back(Waiter { id, tx }),
        }
        Acquire {
            state: self.state.clone(),
            wait: Some((id, rx)),
        }
    }

    /// Free permits.
    pub fn available(&self) -> usize {
        self.state.lock().available
    }

    /// Waiters queued: (urgent, normal).
    pub fn waiting(&self) -> (usize, usize) {
        let s = self.state.lock();
        (s.urgent.len(), s.normal.len())
    }
}

/// The future `PriorityGate::acquire` returns.
pub struct Acquire {
    state: Arc<Mutex<State>>,
    /// `None` once the permit is ours (granted at once, or received).
    wait: Option<(u64, oneshot::Receiver<()>)>,
}

impl Future for Acquire {
    type Output = GatePermit;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<GatePermit> {
        if let Some((_, rx)) = &mut self.wait {
            match Pin::new(rx).poll(cx) {
                Poll::Pending => return Poll::Pending,
                // The sender lives in the queue until it sends; a closed channel cannot happen
                // while the gate is alive (this future holds it), so either way we are admitted.
                Poll::Ready(_) => self.wait = None,
            }
        }
        Poll::Ready(GatePermit {
            state: self.state.clone(),
        })
    }
}

impl Drop for Acquire {
    /// A waiter that gives up leaves its queue; a permit already sent to it (released in the
    /// instant before the drop) is passed on rather than lost.
    fn drop(&mut self) {
        let Some((id, mut rx)) = self.wait.take() else {
            return;
        };
        let mut s = self.state.lock();
        s.urgent.retain(|w| w.id != id);
        s.normal.retain(|w| w.id != id);
        if rx.try_recv().is_ok() {
            s.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields until `cond` holds (bounded: fails after 1,000 turns).
    async fn turns_until(cond: impl Fn() -> bool) {
        for _ in 0..1000 {
            if cond() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("condition not reached");
    }

    /// Queues one waiter per entry of `queue`, in order, behind a gate of one held permit, then
    /// releases it; returns the waiters' indices in the order they were admitted.
    async fn admitted_in_order(gate: &PriorityGate, queue: &[Priority]) -> Vec<usize> {
        let held = gate.try_acquire().expect("one permit free");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, &p) in queue.iter().enumerate() {
            let (g, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = g.acquire(p).await;
                order.lock().push(i);
                tokio::task::yield_now().await;
            }));
            let g = gate.clone();
            turns_until(move || {
                let (u, n) = g.waiting();
                u + n == i + 1
            })
            .await;
        }
        drop(held);
        for t in tasks {
            t.await.expect("waiter task");
        }
        let order = order.lock().clone();
        order
    }

    #[tokio::test]
    async fn low_buffer_waiters_are_all_admitted_before_others() {
        use Priority::{Normal, Urgent};
        let gate = PriorityGate::new(1);
        // Normal waiters queue first, so FIFO alone would admit them first; FIFO within a class.
        let order =
            admitted_in_order(&gate, &[Normal, Normal, Normal, Urgent, Urgent, Urgent]).await;
        assert_eq!(order, [3, 4, 5, 0, 1, 2]);
        assert_eq!(gate.available(), 1);
    }

    #[tokio::test]
    async fn a_normal_waiter_goes_after_at_most_urgent_run_urgent_ones() {
        let gate = PriorityGate::new(1);
        let queue: Vec<Priority> = std::iter::once(Priority::Normal)
            .chain([Priority::Urgent; 6])
            .collect();
        let order = admitted_in_order(&gate, &queue).await;
        // Three claims of urgency, then the normal waiter that was there first, then the rest.
        assert_eq!(order, [1, 2, 3, 0, 4, 5, 6]);
        assert_eq!(gate.available(), 1);
    }

    #[tokio::test]
    async fn free_permits_are_taken_at_once_whatever_the_priority() {
        let gate = PriorityGate::new(2);
        let a = gate.acquire(Priority::Normal).await;
        let b = gate.acquire(Priority::Urgent).await;
        assert_eq!(gate.available(), 0);
        assert!(gate.try_acquire().is_none());
        drop((a, b));
        assert_eq!(gate.available(), 2);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_the_queue_and_loses_no_permit() {
        let gate = PriorityGate::new(1);
        let held = gate.try_acquire().expect("free");
        let waiting = gate.acquire(Priority::Urgent);
        assert_eq!(gate.waiting(), (1, 0));
        drop(waiting);
        assert_eq!(gate.waiting(), (0, 0));
        // Granted, then dropped before it was polled: the permit comes back.
        let granted = gate.acquire(Priority::Normal);
        drop(held);
        assert_eq!(gate.available(), 0);
        drop(granted);
        assert_eq!(gate.available(), 1);
    }

    #[tokio::test]
    async fn a_timed_out_waiter_does_not_block_the_next() {
        let gate = PriorityGate::new(1);
        let held = gate.try_acquire().expect("free");
        tokio::time::pause();
        let r = tokio::time::timeout(
            std::time::Duration::from_millis(10),
            gate.acquire(Priority::Urgent),
        )
        .await;
        assert!(r.is_err());
        let next = tokio::spawn({
            let gate = gate.clone();
            async move { drop(gate.acquire(Priority::Normal).await) }
        });
        let g = gate.clone();
        turns_until(move || g.waiting() == (0, 1)).await;
        drop(held);
        next.await.expect("next waiter admitted");
        assert_eq!(gate.available(), 1);
    }
}
