//! ringport: a RESP session server on per-core io_uring rings.
//!
//! The server side: configuration, the RESP protocol, sessions and their state machine, the
//! command table, authentication, the compute and store pools, the store backends, INFO. All
//! io_uring code (and all `unsafe`) lives in the `ringport-ring` crate.
#![forbid(unsafe_code)]

pub mod auth;
pub mod commands;
pub mod config;
pub mod info;
pub mod metrics;
pub mod pool;
pub mod probe;
pub mod resp;
pub mod server;
pub mod session;
pub mod store;
pub mod storepool;
pub mod systemd;
#[doc(hidden)]
pub mod testkit;
pub mod users;
