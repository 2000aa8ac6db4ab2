//! [`TokenBucket`]: the per-connection limit on sent messages.
//!
//! Every message costs the store a write and the cluster a fan-out, so one client must not be
//! able to send without bound. A token bucket allows short bursts (a client flushing its outbox
//! after a reconnect) and a sustained rate. A client over the limit is told so, per message; one
//! that ignores that and keeps sending is not a client to serve, and is closed once it has been
//! refused three bursts' worth of messages without backing off (the count starts again once it
//! lets the bucket fill up).

use tokio::time::Instant;

use crate::config::RateLimitConfig;

/// What the bucket says about one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the limit.
    Allowed,
    /// Over the limit: refuse this message.
    Refused,
    /// Over the limit for too long: close the connection.
    Flooding,
}

/// A token bucket with a refusal count.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    updated: Instant,
    refused: u64,
    refusals_before_close: u64,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(config: &RateLimitConfig, now: Instant) -> Self {
        let capacity = f64::from(config.burst.max(1));
        TokenBucket {
            capacity,
            per_second: f64::from(config.messages_per_second.max(1)),
            tokens: capacity,
            updated: now,
            refused: 0,
            refusals_before_close: 3 * u64::from(config.burst.max(1)),
        }
    }

    /// Takes a token for one message sent at `now`.
    pub(crate) fn take(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        if self.tokens >= self.capacity {
            // The client backed off long enough to refill the bucket: it is not flooding.
            self.refused = 0;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allowed;
        }
        self.refused += 1;
        if self.refused >= self.refusals_before_close {
            Verdict::Flooding
        } else {
            Verdict::Refused
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn bucket(per_second: u32, burst: u32, now: Instant) -> TokenBucket {
        TokenBucket::new(
            &RateLimitConfig {
                messages_per_second: per_second,
                burst,
            },
            now,
        )
    }

    #[test]
    fn a_burst_passes_then_the_rate_applies() {
        let start = Instant::now();
        let mut bucket = bucket(10, 3, start);
        for _ in 0..3 {
            assert_eq!(bucket.take(start), Verdict::Allowed);
        }
        assert_eq!(bucket.take(start), Verdict::Refused);
        assert_eq!(
            bucket.take(start + Duration::from_millis(100)),
            Verdict::Allowed
        );
    }

    #[test]
    fn three_bursts_of_refusals_mean_flooding() {
        let start = Instant::now();
        let mut bucket = bucket(1, 2, start);
        bucket.take(start);
        bucket.take(start);
        for _ in 0..5 {
            assert_eq!(bucket.take(start), Verdict::Refused);
        }
        assert_eq!(bucket.take(start), Verdict::Flooding);
    }

    #[test]
    fn backing_off_forgives_earlier_refusals() {
        let start = Instant::now();
        let mut bucket = bucket(1, 2, start);
        bucket.take(start);
        bucket.take(start);
        for _ in 0..5 {
            bucket.take(start);
        }
        let later = start + Duration::from_secs(5);
        assert_eq!(bucket.take(later), Verdict::Allowed);
        assert_eq!(bucket.take(later), Verdict::Allowed);
        assert_eq!(bucket.take(later), Verdict::Refused);
    }
}
