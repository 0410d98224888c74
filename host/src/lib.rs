//! The wasmail host: runs the mailer component (MIME per RFC 5322/2045, SMTP
//! per RFC 5321) and untrusted mail plugins on wasmtime, each in its own
//! store, deny by default.
//!
//! [`api`] is the library: a [`api::Host`] loads plugins and runs them, or
//! sends a message, in-process; the CLI and `wasmail serve` are built on it.
//!
//! The layout shows the layers:
//! - [`cli`]: the `wasmail` commands, their flags, exit codes and output;
//! - [`mailer`]: the mailer component's store, with one module per
//!   interface it imports (`credentials`, `limits`, `blobs`, `transcript`,
//!   and wasi:tls in `tls`), and the relay settings it is given;
//! - [`plugin`]: a plugin's store: linker, limits, the `sender` it imports,
//!   its output;
//! - [`mail`]: the mail services both use: policy, audit log, dead-letter
//!   spool, outbox;
//! - [`bindings`] (generated once from wit/, with the few facts about WIT
//!   types: stage names, error kinds, transience), [`engine`], [`config`]
//!   and [`text`] underneath them all.

pub mod api;
pub mod bindings;
pub mod cli;
pub mod config;
pub mod engine;
pub mod mail;
pub mod mailer;
pub mod plugin;
pub mod serve;
pub mod text;
pub mod worker;

use anyhow::Result;
use wasmtime::Engine;

/// What every command shares: the engine and the compiled mailer. Cheap to
/// clone (both are shared handles). Make it with [`Runtime::new`]: the
/// plugin limits rely on its engine's epoch interruption and pooling
/// allocator. Its fields are public for tests that need an engine of
/// their own (a memory creator that lets them read every linear memory);
/// an engine built otherwise does not keep `cpu_ms`.
#[derive(Clone)]
pub struct Runtime {
    /// The engine all stores use.
    pub engine: Engine,
    /// The mailer, compiled (or loaded from the cache) once.
    pub mailer: mailer::MailerFactory,
}

impl Runtime {
    /// Build the engine, start its epoch ticker and load the mailer.
    pub fn new() -> Result<Self> {
        Self::with_instances(engine::POOL_INSTANCES)
    }

    /// As [`Runtime::new`], with room for `instances` component instances
    /// at once (see [`engine::instances_for_runs`]).
    pub fn with_instances(instances: u32) -> Result<Self> {
        let engine = engine::engine_with(instances)?;
        engine::start_epoch_ticker(&engine);
        let mailer = mailer::MailerFactory::new(&engine)?;
        Ok(Self { engine, mailer })
    }
}
