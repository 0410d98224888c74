//! `wasmail compile`: check and compile plugin components ahead of time,
//! into the same cache `wasmail run` reads, so the first run of a large
//! component (an 18 MB componentize-py build takes 15–70 s of CPU to
//! compile) costs nothing at run time. A component that may not run here is
//! refused before anything is compiled, and a failed compile is remembered.

use crate::Runtime;
use crate::cli::report::{self, exit};
use crate::config::{Config, PluginConfig};
use crate::engine::CacheOutcome;
use crate::plugin::{self, LoadFailed, PluginHost, Refused};
use std::path::PathBuf;
use std::time::Instant;

/// The flags of `wasmail compile`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompileArgs {
    /// The plugin components.
    #[arg(required = true)]
    pub plugins: Vec<PathBuf>,
    /// The config file, for each plugin's `max_component_bytes`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Run `wasmail compile`; returns the exit code: 0 when every component is
/// compiled (or already was), else the first failure's (66 unreadable, 77
/// refused, 65 not loadable: not a component, over a limit, or the compile
/// failed, 78 bad config).
pub fn run(rt: &Runtime, a: CompileArgs) -> u8 {
    let config = match &a.config {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => {
                report::say(format_args!("{e:#}"));
                return exit::CONFIG;
            }
        },
        None => Config::default(),
    };
    let mut code = exit::OK;
    for path in &a.plugins {
        let name = PluginHost::name_for(path);
        let max = config.plugins.get(&name).map_or_else(PluginConfig::outbox_default, Clone::clone).max_component_bytes;
        let started = Instant::now();
        let result = plugin::read_bounded(path, max).and_then(|bytes| {
            plugin::prepare(&rt.engine, &bytes, &format!("plugin {name}")).map(|(_, cache)| (cache, bytes.len()))
        });
        match result {
            Ok((CacheOutcome::Hit, _)) => println!("{}: already compiled (in the cache)", path.display()),
            Ok((CacheOutcome::Compiled, len)) => println!(
                "{}: compiled {:.1} MB in {:.1} s; cached for `wasmail run`",
                path.display(),
                len as f64 / 1e6,
                started.elapsed().as_secs_f64()
            ),
            Err(e) => {
                report::say(format_args!("{}: {e:#}", path.display()));
                let this = if e.is::<Refused>() {
                    exit::NOPERM
                } else if e.is::<LoadFailed>() {
                    exit::DATAERR
                } else {
                    exit::NOINPUT
                };
                if code == exit::OK {
                    code = this;
                }
            }
        }
    }
    code
}
