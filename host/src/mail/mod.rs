//! The mail services shared by `wasmail send`, `run` and `retry`: the
//! policy a plugin's message must pass, the audit log, the dead-letter
//! folder with its write-ahead spool, and the outbox (RFC 5322 files).

pub mod audit;
pub mod deadletter;
pub mod outbox;
pub mod policy;
