//! The built-in [`LoadBalancer`](crate::LoadBalancer) strategies, chosen by `[balancer] strategy`.
//!
//! | strategy | picks | sticky | choose it when |
//! |---|---|---|---|
//! | [`ConsistentHash`] (default) | the user's point on a hash ring | yes | users should return to the server holding their state, and scaling should move few of them |
//! | [`RoundRobin`] | the next server in id order | no | servers are alike and an exact even spread of new connections matters |
//! | [`Random`] | a server drawn in proportion to its weight | no | servers differ in capacity, or several routes should not move in lockstep |
//! | [`LeastLoaded`] | the server reporting the fewest clients | no | loads drift apart (restarts, long-lived clients) and servers report load often |
//!
//! All four share one rule, so switching strategy never changes which servers may be picked: a
//! pick skips the servers the caller excludes and those of weight 0 (how an operator drains a
//! server), and with none left fails with [`Unavailable`](crate::ErrorKind::Unavailable),
//! saying how many servers are known, excluded and drained. Each strategy registers itself in
//! the [`registry`](crate::registry) under its [`name`](crate::LoadBalancer::name); a custom one
//! registers a [`BalancerFactory`](crate::registry::BalancerFactory) the same way.

mod candidates;
mod consistent_hash;
mod least_loaded;
mod random;
mod round_robin;

pub use consistent_hash::ConsistentHash;
pub use least_loaded::LeastLoaded;
pub use random::Random;
pub use round_robin::RoundRobin;
