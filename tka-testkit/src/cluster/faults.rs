//! Fault injection and the call log: which requests the fake saw (so tests can assert counts and
//! order), and rules that make chosen requests fail the way a real API server or network can.
//! It owns matching and counting; the HTTP layer decides where a fault takes effect.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::request::{Call, RequestMatch, Verb};

/// What an injected fault does to the request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// 500 `InternalError`.
    InternalError,
    /// 409 `Conflict` ("the object has been modified"), as for a stale resourceVersion.
    Conflict,
    /// 429 `TooManyRequests` with a `Retry-After` header. kube's default client retries these.
    TooManyRequests {
        /// The `Retry-After` value, in seconds.
        retry_after_seconds: u32,
    },
    /// The request hangs for `after` (tokio time), then answers 504 `Timeout`. A client timeout
    /// shorter than `after` fires first, as it would against a stuck server.
    Timeout {
        /// How long the request hangs.
        after: Duration,
    },
}

/// Which calls of the matching ones a rule fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schedule {
    Nth(u32),
    Next(u32),
    Always,
}

/// A fault-injection rule: which requests it matches, which of them it fails and how.
///
/// ```
/// use tka_testkit::cluster::{Fault, FaultRule, Verb};
///
/// // The 2nd TokenRequest fails with 500, after the fake has processed it.
/// let rule = FaultRule::new(Verb::Create, "serviceaccounts", Fault::InternalError)
///     .subresource("token")
///     .nth(2)
///     .after_commit();
/// # let _ = rule;
/// ```
#[derive(Debug, Clone)]
pub struct FaultRule {
    request: RequestMatch,
    schedule: Schedule,
    after_commit: bool,
    fault: Fault,
    seen: u32,
    fired: u32,
}

impl FaultRule {
    /// Fails the next call of `verb` on `resource` (plural, main resource only). Narrow it with
    /// the builder methods, or say which requests with [`FaultRule::on`].
    pub fn new(verb: Verb, resource: &str, fault: Fault) -> Self {
        Self::on(
            RequestMatch::any()
                .verb(verb)
                .resource(resource)
                .subresource(""),
            fault,
        )
    }

    /// Fails the next call that `request` matches.
    pub fn on(request: RequestMatch, fault: Fault) -> Self {
        Self {
            request,
            schedule: Schedule::Next(1),
            after_commit: false,
            fault,
            seen: 0,
            fired: 0,
        }
    }

    /// Matches only this subresource (e.g. `token`, `status`) instead of the main resource.
    #[must_use]
    pub fn subresource(mut self, subresource: &str) -> Self {
        self.request = self.request.subresource(subresource);
        self
    }

    /// Fails only the `n`th matching call (1-based), counted from when the rule was injected.
    #[must_use]
    pub fn nth(mut self, n: u32) -> Self {
        self.schedule = Schedule::Nth(n);
        self
    }

    /// Fails the next `k` matching calls (the default is the next one).
    #[must_use]
    pub fn next(mut self, k: u32) -> Self {
        self.schedule = Schedule::Next(k);
        self
    }

    /// Fails every matching call.
    #[must_use]
    pub fn always(mut self) -> Self {
        self.schedule = Schedule::Always;
        self
    }

    /// Lets the fake carry out the request first and then answers with the fault, like a write
    /// whose response was lost: the object is created, updated or deleted all the same.
    #[must_use]
    pub fn after_commit(mut self) -> Self {
        self.after_commit = true;
        self
    }

    /// Counts a matching call and says whether this rule fails it.
    fn fires(&mut self) -> bool {
        self.seen = self.seen.saturating_add(1);
        let fire = match self.schedule {
            Schedule::Nth(n) => self.seen == n,
            Schedule::Next(k) => self.fired < k,
            Schedule::Always => true,
        };
        if fire {
            self.fired = self.fired.saturating_add(1);
        }
        fire
    }
}

/// A fault chosen for a call, and when it takes effect.
#[derive(Debug, Clone)]
pub(crate) struct ChosenFault {
    pub(crate) fault: Fault,
    pub(crate) after_commit: bool,
}

/// Requests held back before the fake carries them out, until [`Hold::release`]: a test sees how
/// many of them a client has in flight at once.
///
/// ```
/// use tka_testkit::cluster::{FakeCluster, RequestMatch, Verb};
///
/// let cluster = FakeCluster::new();
/// let held = cluster.hold(RequestMatch::any().verb(Verb::Delete).resource("serviceaccounts"));
/// assert_eq!((held.waiting(), held.peak()), (0, 0));
/// held.release();
/// ```
#[derive(Debug, Clone)]
pub struct Hold {
    request: RequestMatch,
    state: Arc<HoldState>,
}

#[derive(Debug)]
struct HoldState {
    open: tokio::sync::watch::Sender<bool>,
    waiting: AtomicUsize,
    peak: AtomicUsize,
}

impl Hold {
    pub(crate) fn new(request: RequestMatch) -> Self {
        Self {
            request,
            state: Arc::new(HoldState {
                open: tokio::sync::watch::Sender::new(false),
                waiting: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
            }),
        }
    }

    /// How many matching requests are held now.
    pub fn waiting(&self) -> usize {
        self.state.waiting.load(Ordering::SeqCst)
    }

    /// The most matching requests held at once.
    pub fn peak(&self) -> usize {
        self.state.peak.load(Ordering::SeqCst)
    }

    /// Waits (bounded: about 10 s) until at least `n` matching requests are held; whether they
    /// are.
    pub async fn until_waiting(&self, n: usize) -> bool {
        for _ in 0..1_000 {
            if self.waiting() >= n {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.waiting() >= n
    }

    /// Lets every held request, and every later one, through.
    pub fn release(&self) {
        self.state.open.send_replace(true);
    }

    fn is_released(&self) -> bool {
        *self.state.open.borrow()
    }

    /// Waits (a held request) until released.
    pub(crate) async fn wait(&self) {
        let mut open = self.state.open.subscribe();
        let now = self.state.waiting.fetch_add(1, Ordering::SeqCst) + 1;
        self.state.peak.fetch_max(now, Ordering::SeqCst);
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = open.wait_for(|released| *released).await;
        self.state.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The call log and the fault rules.
#[derive(Debug)]
pub(crate) struct Faults {
    holds: Vec<Hold>,
    rules: Vec<FaultRule>,
    calls: Vec<Call>,
    recording: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            holds: Vec::new(),
            rules: Vec::new(),
            calls: Vec::new(),
            recording: true,
        }
    }
}

impl Faults {
    /// Stops (or resumes) keeping calls, e.g. for load tests; rules still apply.
    pub(crate) fn set_recording(&mut self, recording: bool) {
        self.recording = recording;
    }

    pub(crate) fn inject(&mut self, rule: FaultRule) {
        self.rules.push(rule);
    }

    pub(crate) fn clear_rules(&mut self) {
        self.rules.clear();
    }

    pub(crate) fn hold(&mut self, request: RequestMatch) -> Hold {
        let hold = Hold::new(request);
        self.holds.retain(|h| !h.is_released());
        self.holds.push(hold.clone());
        hold
    }

    /// The hold that keeps `call` back, if one matches and is not released.
    pub(crate) fn hold_for(&self, call: &Call) -> Option<Hold> {
        self.holds
            .iter()
            .find(|h| !h.is_released() && h.request.matches_call(call))
            .cloned()
    }

    /// Records a call and returns its index in the log and the fault to apply, if any. Every
    /// matching rule counts the call; the first that fires decides.
    pub(crate) fn record(&mut self, call: Call) -> (usize, Option<ChosenFault>) {
        let mut chosen = None;
        for rule in self
            .rules
            .iter_mut()
            .filter(|r| r.request.matches_call(&call))
        {
            if rule.fires() && chosen.is_none() {
                chosen = Some(ChosenFault {
                    fault: rule.fault.clone(),
                    after_commit: rule.after_commit,
                });
            }
        }
        if !self.recording {
            return (usize::MAX, chosen);
        }
        self.calls.push(call);
        (self.calls.len() - 1, chosen)
    }

    pub(crate) fn finish(&mut self, index: usize, code: u16) {
        if let Some(call) = self.calls.get_mut(index) {
            call.code = code;
        }
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.clone()
    }

    pub(crate) fn clear_calls(&mut self) {
        self.calls.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(verb: Verb, resource: &str, sub: Option<&str>) -> Call {
        Call::in_ns(verb, resource, sub, Some("x"))
    }

    fn fired(faults: &mut Faults, c: &Call) -> bool {
        faults.record(c.clone()).1.is_some()
    }

    #[test]
    fn nth_fails_only_that_call() {
        let mut f = Faults::default();
        f.inject(FaultRule::new(Verb::Create, "serviceaccounts", Fault::InternalError).nth(2));
        let c = call(Verb::Create, "serviceaccounts", None);
        assert_eq!(
            [fired(&mut f, &c), fired(&mut f, &c), fired(&mut f, &c)],
            [false, true, false]
        );
    }

    #[test]
    fn next_k_and_always() {
        let mut f = Faults::default();
        f.inject(FaultRule::new(Verb::Get, "leases", Fault::Conflict).next(2));
        let c = call(Verb::Get, "leases", None);
        assert_eq!(
            [fired(&mut f, &c), fired(&mut f, &c), fired(&mut f, &c)],
            [true, true, false]
        );
        f.inject(FaultRule::new(Verb::Get, "leases", Fault::Conflict).always());
        assert!((0..5).all(|_| fired(&mut f, &c)));
    }

    #[test]
    fn subresource_and_verb_must_match() {
        let mut f = Faults::default();
        f.inject(
            FaultRule::new(Verb::Create, "serviceaccounts", Fault::InternalError)
                .subresource("token")
                .always(),
        );
        assert!(!fired(&mut f, &call(Verb::Create, "serviceaccounts", None)));
        assert!(!fired(
            &mut f,
            &call(Verb::Get, "serviceaccounts", Some("token"))
        ));
        assert!(fired(
            &mut f,
            &call(Verb::Create, "serviceaccounts", Some("token"))
        ));
        assert_eq!(f.calls().len(), 3);
    }
}
