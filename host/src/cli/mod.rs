//! The `wasmail` commands (sendmail/msmtp conventions: sysexits.h exit
//! codes, RFC 5321 replies in the output): flags, what each command does
//! with the layers below, and how outcomes are printed.

pub mod compile;
pub mod dkim;
pub mod inspect;
pub mod report;
pub mod retry;
pub mod run;
pub mod send;
pub mod sendmail;
