//! ringline
pub mod resp;
