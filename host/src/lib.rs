//! The wasmail host: runs the mailer component (MIME per RFC 5322/2045, SMTP
//! per RFC 5321) and untrusted mail plugins on wasmtime, each in its own
//! store, deny by default.
//!
//! The module layout mirrors the WIT: `bindings` is generated from it once,
//! and each imported interface has its host side in a module of its own
//! (`credentials`, `limits`, `blobs`, `transcript`, `sender`).

pub mod audit;
pub mod bindings;
pub mod blobs;
pub mod config;
pub mod credentials;
pub mod deadletter;
pub mod engine;
pub mod limits;
pub mod mailer;
pub mod outbox;
pub mod output;
pub mod plugin;
pub mod policy;
pub mod relay;
pub mod report;
pub mod retry;
pub mod run;
pub mod sandbox;
pub mod send;
pub mod sender;
pub mod text;
pub mod tls;
pub mod transcript;

use anyhow::Result;
use wasmtime::Engine;

/// What every command shares: the engine and the compiled mailer.
pub struct Runtime {
    /// The engine all stores use.
    pub engine: Engine,
    /// The mailer, compiled (or loaded from the cache) once.
    pub mailer: mailer::MailerFactory,
}

impl Runtime {
    /// Build the engine, start its epoch ticker and load the mailer.
    pub fn new() -> Result<Self> {
        let engine = engine::engine()?;
        engine::start_epoch_ticker(&engine);
        let mailer = mailer::MailerFactory::new(&engine)?;
        Ok(Self { engine, mailer })
    }
}
