//! [`PassSchedule`]: when the reconciler's run loop makes its next pass. It owns the arithmetic
//! of scheduling and coalescing: a pass is due at once on taking the lease, at the requeue time a
//! pass reported (never later than the resync period), a little later after a failed pass, and
//! soon after a watch event, with a burst of events coalesced into one pass.
//!
//! It must not do I/O, sleep or read the clock: the loop passes `now` in and does the waiting, so
//! the rules are tested without time passing.

use std::time::Duration;

use tokio::time::Instant;

/// The shortest wait after a failed pass.
const FAILURE_PAUSE: Duration = Duration::from_secs(5);

/// When the next reconcile pass is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassSchedule {
    next: Instant,
    min_interval: Duration,
    renew_every: Duration,
}

impl PassSchedule {
    /// A schedule with a pass due at `now`, no two passes closer than `min_interval` (also the
    /// time a burst of events is given to settle), and a wake at least every `renew_every` (to
    /// renew the lease).
    pub fn new(now: Instant, min_interval: Duration, renew_every: Duration) -> Self {
        Self {
            next: now,
            min_interval,
            renew_every,
        }
    }

    /// Whether a pass is due at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// This replica just took the lease: a pass is due at once.
    pub fn took_lease(&mut self, now: Instant) {
        self.next = now;
    }

    /// A pass ended at `now`. `wait` is how long until the pass it reported as due (already
    /// capped at the resync period), or `None` when the pass failed as a whole.
    pub fn after_pass(&mut self, now: Instant, wait: Option<Duration>) {
        let wait = wait.unwrap_or(self.min_interval.max(FAILURE_PAUSE));
        self.next = now + wait.max(self.min_interval);
    }

    /// A watch reported a change at `now`: a pass is due within `min_interval`.
    pub fn kick(&mut self, now: Instant) {
        self.next = self.next.min(now + self.min_interval);
    }

    /// How long the loop lets a burst of events settle after a kick before it looks again.
    pub fn settle(&self) -> Duration {
        self.min_interval
    }

    /// When the loop wakes next if nothing happens: the next pass while `leading`, and in any
    /// case in time to renew (or try to take) the lease.
    pub fn wake_at(&self, now: Instant, leading: bool) -> Instant {
        let renew = now + self.renew_every;
        if leading { self.next.min(renew) } else { renew }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn schedule(now: Instant) -> PassSchedule {
        PassSchedule::new(now, SECOND, 5 * SECOND)
    }

    #[test]
    fn a_pass_is_due_at_start_and_on_taking_the_lease() {
        let now = Instant::now();
        let mut s = schedule(now);
        assert!(s.is_due(now));
        s.after_pass(now, Some(60 * SECOND));
        assert!(!s.is_due(now + 10 * SECOND));
        s.took_lease(now + 10 * SECOND);
        assert!(s.is_due(now + 10 * SECOND));
    }

    #[test]
    fn the_next_pass_follows_the_requeue_but_never_closer_than_the_minimum() {
        let now = Instant::now();
        let mut s = schedule(now);
        s.after_pass(now, Some(30 * SECOND));
        assert!(!s.is_due(now + 29 * SECOND));
        assert!(s.is_due(now + 30 * SECOND));
        s.after_pass(now, Some(Duration::ZERO));
        assert!(!s.is_due(now));
        assert!(s.is_due(now + SECOND));
    }

    #[test]
    fn a_failed_pass_is_retried_after_a_pause() {
        let now = Instant::now();
        let mut s = schedule(now);
        s.after_pass(now, None);
        assert!(!s.is_due(now + 4 * SECOND));
        assert!(s.is_due(now + FAILURE_PAUSE));
    }

    #[test]
    fn events_bring_the_pass_forward_and_a_burst_makes_one_pass() {
        let now = Instant::now();
        let mut s = schedule(now);
        s.after_pass(now, Some(60 * SECOND));
        // A burst within the settle time: the pass stays at the first event's deadline.
        s.kick(now);
        s.kick(now + s.settle() / 2);
        assert!(!s.is_due(now + s.settle() / 2));
        assert!(s.is_due(now + SECOND));
        // An event never pushes a sooner pass later.
        s.after_pass(now, Some(2 * SECOND));
        s.kick(now + 10 * SECOND);
        assert!(s.is_due(now + 2 * SECOND));
    }

    #[test]
    fn the_loop_wakes_for_the_pass_or_the_lease_whichever_is_first() {
        let now = Instant::now();
        let mut s = schedule(now);
        s.after_pass(now, Some(2 * SECOND));
        assert_eq!(s.wake_at(now, true), now + 2 * SECOND);
        // Not leading: only the lease matters.
        assert_eq!(s.wake_at(now, false), now + 5 * SECOND);
        s.after_pass(now, Some(60 * SECOND));
        assert_eq!(s.wake_at(now, true), now + 5 * SECOND);
    }
}
