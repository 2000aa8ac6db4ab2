//! The route's HTTP API, over real HTTP on a loopback port, against memory stores.
//!
//! One test binary with a module per resource (one binary links once).

mod accounts;
mod auth;
mod groups;
mod harness;
mod login;
mod messages;
mod service;
mod tokens;
mod users;
