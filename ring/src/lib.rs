//! ringline-ring
