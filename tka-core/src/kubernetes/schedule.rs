//! [`PassSchedule`]: when the reconciler's run loop makes its next pass and renews its lease. It
//! owns the arithmetic of scheduling and coalescing: a pass is due at once on taking the lease, at
//! the requeue time a pass reported (never later than the resync period), a little later after a
//! failed pass, and by the time a watch event says something is due, with a burst of events
//! coalesced into one pass and no two passes closer than the minimum interval. Sessions that
//! are over (an `expiresAt` reached) are ended by an *ending step* at the moment the watched
//! stores say so, without the minimum interval and without a full pass: an ending step only
//! ends what is over, which costs a few requests per session, while a full pass judges every
//! session. The lease is renewed on a timer of its own; a renewal never makes a pass due.
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
    /// When the last pass (or a kick) made the next one due.
    next: Instant,
    /// When the watched stores, as last looked at, make a pass due (replaced at every look).
    watched: Option<Instant>,
    /// No pass before this (the last pass's end plus the minimum interval).
    not_before: Instant,
    /// When the watched stores next hold a session that is over and that no ending step has
    /// tried yet (its `expiresAt`); `None`: no such session.
    ending: Option<Instant>,
    /// When the lease is renewed next.
    renew: Instant,
    min_interval: Duration,
    renew_every: Duration,
}

impl PassSchedule {
    /// A schedule with a pass due at `now`, no two passes closer than `min_interval` (also the
    /// time a burst of events is given to settle), and the lease renewed every `renew_every`
    /// (the first renewal is the caller's, at `now`).
    pub fn new(now: Instant, min_interval: Duration, renew_every: Duration) -> Self {
        Self {
            next: now,
            watched: None,
            not_before: now,
            ending: None,
            renew: now + renew_every,
            min_interval,
            renew_every,
        }
    }

    /// Whether a pass is due at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        now >= self.pass_at()
    }

    /// When the next pass is due.
    pub fn pass_at(&self) -> Instant {
        let next = self.watched.map_or(self.next, |w| w.min(self.next));
        next.max(self.not_before)
    }

    /// When the lease is to be renewed next.
    pub fn renew_at(&self) -> Instant {
        self.renew
    }

    /// Whether the lease is to be renewed (or taken) at `now`.
    pub fn renewal_due(&self, now: Instant) -> bool {
        now >= self.renew
    }

    /// The lease was renewed (or an attempt made) at `now`: the next renewal is a period later.
    /// What is due for a pass does not change.
    pub fn renewed(&mut self, now: Instant) {
        self.renew = now + self.renew_every;
    }

    /// The watched stores were looked at after a change: by what they hold now, something is
    /// due at `at` (`None`: nothing). This replaces what an earlier look said (a session seen
    /// half-made is complete by now); a pass is due by then unless the last pass made one due
    /// sooner, and never closer than the minimum interval after the last pass.
    pub fn due_by(&mut self, at: Option<Instant>) {
        self.watched = at;
    }

    /// The watched stores were looked at: the next session to end is over at `at` (`None`:
    /// none). This replaces what an earlier look said. An ending step is due then, whenever the
    /// last pass or step was: it is not held to the minimum interval.
    pub fn ends_due_by(&mut self, at: Option<Instant>) {
        self.ending = at;
    }

    /// When the next ending step is due, if any.
    pub fn ending_at(&self) -> Option<Instant> {
        self.ending
    }

    /// Whether an ending step is due at `now`.
    pub fn ending_due(&self, now: Instant) -> bool {
        self.ending.is_some_and(|at| now >= at)
    }

    /// An ending step at `now` could not end every session it tried: a full pass (which ends
    /// them again) comes after the pause that follows a failed pass, unless one is due sooner.
    pub fn ending_failed(&mut self, now: Instant) {
        self.next = self.next.min(now + self.min_interval.max(FAILURE_PAUSE));
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
        self.watched = None;
        self.not_before = now + self.min_interval;
    }

    /// A watch reported a change at `now`: a pass is due within `min_interval`.
    pub fn kick(&mut self, now: Instant) {
        self.next = self.next.min(now + self.min_interval);
    }

    /// How long the loop lets a burst of events settle after a kick before it looks again.
    pub fn settle(&self) -> Duration {
        self.min_interval
    }

    /// When a burst of events that began at `now` has settled: after [`Self::settle`], or
    /// sooner when a pass or an ending step is due before that while `leading` (and able to
    /// pass). Settling never delays a pass or an ending already due.
    pub fn settled_at(&self, now: Instant, leading: bool) -> Instant {
        let settled = now + self.settle();
        if leading {
            settled.min(self.work_at())
        } else {
            settled
        }
    }

    /// When the loop wakes next if nothing happens: the next pass or ending step while
    /// `leading` (and able to pass), and in any case in time to renew (or try to take) the
    /// lease.
    pub fn wake_at(&self, now: Instant, leading: bool) -> Instant {
        let renew = self.renew.max(now);
        if leading {
            self.work_at().min(renew)
        } else {
            renew
        }
    }

    /// The next pass or ending step, whichever is first.
    fn work_at(&self) -> Instant {
        self.ending
            .map_or(self.pass_at(), |at| at.min(self.pass_at()))
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
    fn settling_a_burst_never_delays_a_pass_already_due() {
        let now = Instant::now();
        let mut s = schedule(now);
        s.after_pass(now, Some(SECOND + SECOND / 2));
        // Events right after a pass (its own deletions): settled after the settle time, since
        // no pass may come sooner anyway.
        assert_eq!(s.settled_at(now, true), now + s.settle());
        // An event half a second before the next pass is due: settling ends at that pass.
        let event = now + SECOND;
        assert_eq!(s.settled_at(event, true), now + SECOND + SECOND / 2);
        assert!(s.is_due(s.settled_at(event, true)));
        // Not leading, no pass to wait for: the full settle time.
        assert_eq!(s.settled_at(event, false), event + s.settle());
    }

    #[test]
    fn an_ending_is_due_at_the_earliest_expiry_without_the_minimum_interval() {
        let now = Instant::now();
        let mut s = schedule(now);
        s.after_pass(now, Some(3600 * SECOND));
        // A session over a tenth of a second after the last pass: its ending step is due
        // then, not a minimum interval after the pass, and the full pass stays where it was.
        let expiry = now + SECOND / 10;
        s.ends_due_by(Some(expiry));
        assert!(!s.ending_due(now));
        assert!(s.ending_due(expiry));
        assert!(!s.is_due(expiry));
        assert_eq!(s.wake_at(now, true), expiry);
        // Not leading: nothing to end, only the lease.
        assert_eq!(s.wake_at(now, false), now + 5 * SECOND);
        // The next expiry another tenth later: the step after is due then, again without the
        // minimum interval between the two.
        s.ends_due_by(Some(expiry + SECOND / 10));
        assert!(!s.ending_due(expiry));
        assert!(s.ending_due(expiry + SECOND / 10));
        s.ends_due_by(None);
        assert!(!s.ending_due(now + 3000 * SECOND));
        assert_eq!(s.wake_at(now, true), now + 5 * SECOND);
    }

    #[test]
    fn settling_never_delays_an_ending_and_a_failed_one_brings_a_pass() {
        let now = Instant::now();
        let mut s = schedule(now);
        s.after_pass(now, Some(3600 * SECOND));
        // Events (the last step's own deletions) a moment before the next expiry: settling
        // ends at that expiry.
        let expiry = now + 2 * SECOND + SECOND / 5;
        s.ends_due_by(Some(expiry));
        assert_eq!(s.settled_at(now + 2 * SECOND, true), expiry);
        assert_eq!(s.settled_at(now + 2 * SECOND, false), now + 3 * SECOND);
        // A step that could not end a session: a full pass follows after the failure pause.
        s.ending_failed(expiry);
        assert!(!s.is_due(expiry + 4 * SECOND));
        assert!(s.is_due(expiry + FAILURE_PAUSE));
        // A pass due sooner stays sooner.
        s.after_pass(now, Some(3 * SECOND));
        s.ending_failed(now + 2 * SECOND);
        assert!(s.is_due(now + 3 * SECOND));
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

    #[test]
    fn the_stores_move_the_pass_to_what_they_hold_now_and_a_renewal_is_no_pass() {
        let now = Instant::now();
        let mut s = schedule(now);
        s.after_pass(now, Some(3600 * SECOND));
        // A session expiring sooner appears: the pass moves to its expiry, not to now.
        s.due_by(Some(now + 600 * SECOND));
        assert!(!s.is_due(now + 599 * SECOND));
        assert!(s.is_due(now + 600 * SECOND));
        // A later look replaces it (the session seen half-made is complete by now); the pass
        // the last pass asked for still holds.
        s.due_by(Some(now + 1800 * SECOND));
        assert!(!s.is_due(now + 600 * SECOND));
        assert_eq!(s.pass_at(), now + 1800 * SECOND);
        s.due_by(None);
        assert_eq!(s.pass_at(), now + 3600 * SECOND);
        // Something due at once waits for the minimum interval after the last pass.
        s.due_by(Some(now));
        assert!(!s.is_due(now));
        assert!(s.is_due(now + SECOND));
        // Renewals come on their own timer and never make a pass due.
        s.due_by(None);
        assert!(s.renewal_due(now + 5 * SECOND));
        s.renewed(now + 5 * SECOND);
        assert!(!s.renewal_due(now + 9 * SECOND));
        assert!(!s.is_due(now + 10 * SECOND));
        assert_eq!(s.wake_at(now + 5 * SECOND, true), now + 10 * SECOND);
    }
}
