//! The per-device rate limit: a GCRA limiter (the `governor` crate) keyed by the node's stable ID,
//! which is the key of an identity (tagged devices share one user, so a per-user limit would
//! let one CI runner starve all others). It answers "allowed" or "retry after" ([`RateLimited`]);
//! turning that into 429 is [`crate::error::ApiError`]'s job, and this module imports no other.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tka_core::NodeId;

/// How many requests a device may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Sustained requests per minute.
    pub per_minute: NonZeroU32,
    /// Requests allowed back to back before the sustained rate applies.
    pub burst: NonZeroU32,
}

/// A device is over its rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// When the next request will be accepted.
    pub retry_after: Duration,
}

/// A keyed limiter, one cell per device.
#[derive(Debug)]
pub struct DeviceRateLimiter {
    limiter: DefaultKeyedRateLimiter<NodeId>,
    clock: DefaultClock,
}

impl DeviceRateLimiter {
    /// A limiter with the given quota.
    pub fn new(config: RateLimitConfig) -> Self {
        let quota = Quota::per_minute(config.per_minute).allow_burst(config.burst);
        Self {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        }
    }

    /// Counts one request of `device`; refused with the time until the next one is allowed.
    pub fn check(&self, device: &NodeId) -> Result<(), RateLimited> {
        self.limiter.check_key(device).map_err(|not_until| {
            let retry_after: Duration = not_until.wait_time_from(self.clock.now());
            RateLimited { retry_after }
        })
    }

    /// Forgets devices whose cells are back to full, so memory follows active devices only.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// How many devices the limiter currently tracks.
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_device_has_its_own_budget() {
        let limiter = DeviceRateLimiter::new(RateLimitConfig {
            per_minute: NonZeroU32::MIN,
            burst: NonZeroU32::new(2).unwrap(),
        });
        let a = NodeId::new("nA").unwrap();
        let b = NodeId::new("nB").unwrap();
        assert!(limiter.check(&a).is_ok());
        assert!(limiter.check(&a).is_ok());
        let Err(RateLimited { retry_after }) = limiter.check(&a) else {
            panic!("the third request in a burst of two is refused");
        };
        assert!(retry_after > Duration::ZERO);
        assert!(limiter.check(&b).is_ok(), "another device is not affected");
        assert_eq!(limiter.tracked(), 2);
    }
}
