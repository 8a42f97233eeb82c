//! ringline
