//! Auth0-style rate limiting for the Management API: a per-second budget, reported on every
//! response in `x-ratelimit-limit`, `x-ratelimit-remaining` and `x-ratelimit-reset` (UNIX
//! seconds), and 429 once spent.
//! https://auth0.com/docs/troubleshoot/customer-support/operational-policies/rate-limit-policy/rate-limit-configurations

use std::sync::{Mutex, PoisonError};

use chrono::Utc;

/// What one request learns from the limiter; rendered as the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// UNIX seconds at which the budget refills.
    pub reset: i64,
}

#[derive(Default)]
struct Window {
    limit: Option<u32>,
    second: i64,
    used: u64,
}

/// A fixed one-second window. Without a limit every request passes and the headers report an
/// effectively endless budget (`u32::MAX`) so clients never back off needlessly.
#[derive(Default)]
pub struct RateLimiter {
    window: Mutex<Window>,
}

impl RateLimiter {
    pub fn new(limit: Option<u32>) -> Self {
        Self {
            window: Mutex::new(Window {
                limit,
                ..Window::default()
            }),
        }
    }

    pub fn set_limit(&self, limit: Option<u32>) {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        window.limit = limit;
        window.used = 0;
    }

    /// What the headers say when a 429 is forced (the `fail_next(n, 429)` fault).
    pub fn exhausted(&self) -> Decision {
        let window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        Decision {
            allowed: false,
            limit: u64::from(window.limit.unwrap_or(u32::MAX)),
            remaining: 0,
            reset: Utc::now().timestamp() + 1,
        }
    }

    pub fn check(&self) -> Decision {
        let now = Utc::now().timestamp();
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        if window.second != now {
            window.second = now;
            window.used = 0;
        }
        let limit = u64::from(window.limit.unwrap_or(u32::MAX));
        let allowed = window.used < limit;
        if allowed {
            window.used += 1;
        }
        Decision {
            allowed,
            limit,
            remaining: limit.saturating_sub(window.used),
            reset: now + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_runs_out_within_a_second() {
        let limiter = RateLimiter::new(Some(2));
        // Retry if the second ticks over mid-test: the property holds within one window.
        for _ in 0..5 {
            let a = limiter.check();
            let b = limiter.check();
            let c = limiter.check();
            if a.reset == c.reset {
                assert!(a.allowed && b.allowed && !c.allowed);
                assert_eq!((a.remaining, b.remaining, c.remaining), (1, 0, 0));
                assert_eq!(a.limit, 2);
                return;
            }
        }
        panic!("the clock kept ticking over");
    }
}
