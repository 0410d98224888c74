//! The mail services shared by `wasmail send`, `run` and `retry`: the
//! policy a plugin's message must pass, the audit log, the dead-letter
//! folder with its write-ahead spool, the outbox (RFC 5322 files), and the
//! DKIM keys the host signs with (RFC 6376).

pub mod audit;
pub mod deadletter;
pub mod dkim;
pub mod outbox;
pub mod policy;
