//! The SMTP client, sans-IO (RFC 5321 and its extensions): commands, the
//! reply parser, EHLO capabilities, AUTH and its SASL mechanisms, the data
//! phase with DATA transparency, and the session state machine. Nothing here
//! touches a socket.

pub mod auth;
pub mod command;
pub mod data;
pub mod dot;
pub mod ehlo;
pub mod error;
pub mod reply;
pub mod session;

pub use error::{SmtpError, Stage};
pub use reply::Reply;
