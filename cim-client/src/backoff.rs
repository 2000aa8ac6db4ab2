//! The reconnect policy and the delays it produces.
//!
//! Exponential backoff with *full jitter* (a delay drawn uniformly between zero and the current
//! ceiling): when a server dies, all its clients lose their connection at the same instant, and
//! jitter spreads their logins at the route instead of having them arrive in synchronised waves.
//! The attempt counter resets only after a connection stayed up for a while, so a server that
//! accepts logins and drops them at once cannot turn the backoff into a tight loop (a complaint
//! about the original cim: reconnect loops that never stop).

use std::time::Duration;

use rand::Rng;

/// How the client reconnects after losing its connection.
///
/// Delay before attempt `n` (1-based): uniform in `[0, min(max_backoff, initial_backoff *
/// multiplier^(n-1))]`. Start from [`ReconnectPolicy::default`] and change what you need:
///
/// ```
/// use std::time::Duration;
/// use cim_client::ReconnectPolicy;
///
/// let policy = ReconnectPolicy::default()
///     .max_backoff(Duration::from_secs(10))
///     .max_attempts(Some(20));
/// assert_eq!(policy.get_max_attempts(), Some(20));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectPolicy {
    initial_backoff: Duration,
    max_backoff: Duration,
    multiplier: f64,
    max_attempts: Option<u32>,
    reset_after: Duration,
}

impl Default for ReconnectPolicy {
    /// 500 ms initial ceiling, doubling up to 30 s, forever; the count resets after 30 s connected.
    fn default() -> Self {
        ReconnectPolicy {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
            max_attempts: None,
            reset_after: Duration::from_secs(30),
        }
    }
}

impl ReconnectPolicy {
    /// A policy that never reconnects: the first connection loss ends the client.
    pub fn never() -> Self {
        ReconnectPolicy::default().max_attempts(Some(0))
    }

    /// The delay ceiling of the first attempt (default 500 ms).
    pub fn initial_backoff(mut self, delay: Duration) -> Self {
        self.initial_backoff = delay;
        self
    }

    /// The largest delay ceiling (default 30 s).
    pub fn max_backoff(mut self, delay: Duration) -> Self {
        self.max_backoff = delay;
        self
    }

    /// How much the ceiling grows per attempt (default 2; values below 1 are treated as 1).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// How many attempts in a row before giving up; `None` (the default) retries forever.
    pub fn max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// How long a connection must stay up for the attempt count to start again from the first
    /// delay (default 30 s).
    pub fn reset_after(mut self, duration: Duration) -> Self {
        self.reset_after = duration;
        self
    }

    /// The delay ceiling of the first attempt.
    pub fn get_initial_backoff(&self) -> Duration {
        self.initial_backoff
    }

    /// The largest delay ceiling.
    pub fn get_max_backoff(&self) -> Duration {
        self.max_backoff
    }

    /// How much the ceiling grows per attempt.
    pub fn get_multiplier(&self) -> f64 {
        self.multiplier
    }

    /// How many attempts in a row before giving up (`None`: forever).
    pub fn get_max_attempts(&self) -> Option<u32> {
        self.max_attempts
    }

    /// How long a connection must stay up for the attempt count to reset.
    pub fn get_reset_after(&self) -> Duration {
        self.reset_after
    }

    /// The delay ceiling of attempt `attempt` (1-based).
    fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let factor = self.multiplier.max(1.0).powi(exponent);
        let secs = self.initial_backoff.as_secs_f64() * factor;
        match Duration::try_from_secs_f64(secs) {
            Ok(delay) => delay.min(self.max_backoff),
            // Overflow or not finite: the cap applies.
            Err(_) => self.max_backoff,
        }
    }
}

/// The attempts of one reconnection streak.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: ReconnectPolicy,
    /// Attempts made in this streak.
    attempts: u32,
}

impl Backoff {
    /// A fresh streak.
    pub(crate) fn new(policy: ReconnectPolicy) -> Self {
        Backoff {
            policy,
            attempts: 0,
        }
    }

    /// The next attempt's number (1-based) and the delay to wait before it, or `None` when the
    /// policy's attempts are used up.
    pub(crate) fn next_delay(&mut self, rng: &mut impl Rng) -> Option<(u32, Duration)> {
        if self
            .policy
            .max_attempts
            .is_some_and(|max| self.attempts >= max)
        {
            return None;
        }
        self.attempts = self.attempts.saturating_add(1);
        let ceiling = self.policy.ceiling(self.attempts);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Some((
            self.attempts,
            Duration::from_nanos(rng.random_range(0..=nanos)),
        ))
    }

    /// Attempts made in this streak.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Called when a connection ends after having been up for `uptime`: the streak starts again
    /// if the connection was stable.
    pub(crate) fn connection_ended(&mut self, uptime: Duration) {
        if uptime >= self.policy.reset_after {
            self.attempts = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn policy() -> ReconnectPolicy {
        ReconnectPolicy::default()
            .initial_backoff(Duration::from_millis(500))
            .max_backoff(Duration::from_secs(30))
            .multiplier(2.0)
    }

    #[test]
    fn the_ceiling_doubles_from_the_initial_delay_up_to_the_maximum() {
        let policy = policy();
        assert_eq!(policy.ceiling(1), Duration::from_millis(500));
        assert_eq!(policy.ceiling(2), Duration::from_secs(1));
        assert_eq!(policy.ceiling(3), Duration::from_secs(2));
        assert_eq!(policy.ceiling(7), Duration::from_secs(30));
        assert_eq!(policy.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn delays_are_jittered_within_zero_and_the_ceiling() {
        let mut rng = StdRng::seed_from_u64(7);
        let policy = policy();
        let mut backoff = Backoff::new(policy.clone());
        let mut distinct = std::collections::HashSet::new();
        for expected_attempt in 1..=50 {
            let (attempt, delay) = backoff.next_delay(&mut rng).expect("unlimited");
            assert_eq!(attempt, expected_attempt);
            assert!(delay <= policy.ceiling(attempt), "{delay:?} at {attempt}");
            distinct.insert(delay);
        }
        assert!(distinct.len() > 40, "delays are not jittered: {distinct:?}");
    }

    #[test]
    fn jitter_covers_the_whole_range() {
        let mut rng = StdRng::seed_from_u64(1);
        let ceiling = Duration::from_secs(30);
        let (mut low, mut high) = (false, false);
        for _ in 0..200 {
            let mut backoff = Backoff::new(policy().initial_backoff(ceiling));
            let (_, delay) = backoff.next_delay(&mut rng).expect("unlimited");
            low |= delay < ceiling / 4;
            high |= delay > ceiling * 3 / 4;
        }
        assert!(
            low && high,
            "full jitter should reach both ends of [0, ceiling]"
        );
    }

    #[test]
    fn attempts_stop_at_the_maximum() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut backoff = Backoff::new(policy().max_attempts(Some(3)));
        assert!(backoff.next_delay(&mut rng).is_some());
        assert!(backoff.next_delay(&mut rng).is_some());
        assert!(backoff.next_delay(&mut rng).is_some());
        assert!(backoff.next_delay(&mut rng).is_none());
        assert_eq!(backoff.attempts(), 3);
        assert!(
            Backoff::new(ReconnectPolicy::never())
                .next_delay(&mut rng)
                .is_none()
        );
    }

    #[test]
    fn only_a_stable_connection_resets_the_streak() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut backoff = Backoff::new(policy().reset_after(Duration::from_secs(30)));
        backoff.next_delay(&mut rng);
        backoff.next_delay(&mut rng);
        backoff.connection_ended(Duration::from_secs(1));
        assert_eq!(
            backoff.attempts(),
            2,
            "a flapping connection keeps backing off"
        );
        backoff.connection_ended(Duration::from_secs(31));
        assert_eq!(backoff.next_delay(&mut rng).map(|(n, _)| n), Some(1));
    }

    #[test]
    fn a_multiplier_below_one_never_shrinks_the_delay() {
        let policy = policy().multiplier(0.1);
        assert_eq!(policy.ceiling(5), Duration::from_millis(500));
    }
}
