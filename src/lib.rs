//! ringport: a RESP session server on per-core io_uring rings.
//!
//! The server side: configuration, the RESP protocol, sessions and their state machine, the
//! command table, authentication, the compute and store pools, the store backends, INFO. All
//! io_uring code (and all `unsafe`) lives in the `ringport-ring` crate.
#![forbid(unsafe_code)]

pub mod acl;
pub mod adminsock;
pub mod auth;
pub mod cmdstats;
pub mod commands;
pub mod config;
pub mod conn;
pub mod info;
pub mod metrics;
pub mod msg;
pub mod pool;
pub mod probe;
pub mod resp;
pub mod server;
pub mod session;
pub mod shared;
pub mod store;
pub mod storelink;
pub mod storepool;
pub mod systemd;
pub mod table;
#[doc(hidden)]
pub mod testkit;
pub mod tls;
pub mod userdir;
pub mod users;
pub mod version;
pub mod workers;

/// What a program embedding ringport needs to define its own commands.
pub mod api {
    pub use crate::commands::api::{
        sql_value_reply, Argv, CommandDef, Inline, Reply, Request, StoreCtx, Tx, NOT_INTEGER,
    };
    pub use crate::config::ServeArgs;
    pub use crate::resp::Proto;
    pub use crate::store::{Conn as KvConn, SqlResult, SqlValue, StoreError};
    pub use crate::table::Class;
}
pub use server::Server;
