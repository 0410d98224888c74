//! The wasmtime engine for WebAssembly components (component model, WASI
//! 0.2): pooling allocator, epoch interruption, async; and an
//! on-disk cache of compiled components, keyed by the component's SHA-256
//! and the engine's compatibility hash, so a second run compiles nothing.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Largest linear memory any instance may reserve, in bytes. Plugins get a
/// lower, configured limit through `StoreLimits`.
pub const MAX_MEMORY_BYTES: usize = 1 << 30;
/// Instances the pooling allocator keeps slots for in a command (a plugin
/// and its two mailers per run, a few runs at once). Each slot costs
/// start-up time (guard pages), so this stays small; `wasmail serve` sizes
/// its engine for its own concurrency ([`instances_for_runs`]).
pub const POOL_INSTANCES: u32 = 32;
/// Component instances one run holds at once: the plugin, the mailer that
/// assembles, the mailer that sends.
pub const INSTANCES_PER_RUN: u32 = 3;

/// The instance slots for `runs` runs at once and `idle` pooled mailers,
/// never fewer than [`POOL_INSTANCES`].
pub fn instances_for_runs(runs: usize, idle: usize) -> u32 {
    let need = u32::try_from(runs.saturating_mul(INSTANCES_PER_RUN as usize).saturating_add(idle)).unwrap_or(u32::MAX);
    need.saturating_add(2).max(POOL_INSTANCES)
}
/// Core module instances one component may create. A componentize-py 0.25
/// plugin has 14 (CPython and its libraries, each a module; 38 when built
/// with `--stub-wasi`), componentize-js 0.23 4, Rust or C 1 to 3.
pub const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 64;
/// Linear memories one component's instances may define (each is summed
/// into the plugin's `memory_mib` by `PluginLimiter`).
pub const MAX_MEMORIES_PER_COMPONENT: u32 = 8;
/// Tables one component's instances may define.
pub const MAX_TABLES_PER_COMPONENT: u32 = 64;
/// The wasm stack size for every instance.
pub const MAX_WASM_STACK: usize = 1 << 20;
/// How often the epoch ticker advances, i.e. the CPU-limit granularity.
pub const EPOCH_TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// wasmtime 48 returns its own `wasmtime::Error`; `.anyhow()` turns it into
/// an `anyhow::Error` so the host can add `.context()` like everywhere else.
pub trait AnyhowExt<T> {
    /// Convert the error.
    fn anyhow(self) -> Result<T>;
}

impl<T> AnyhowExt<T> for wasmtime::Result<T> {
    fn anyhow(self) -> Result<T> {
        self.map_err(anyhow::Error::from)
    }
}

/// Build the engine every store in this process shares.
pub fn engine() -> Result<Engine> {
    engine_with(POOL_INSTANCES)
}

/// Build an engine with `instances` component instance slots.
pub fn engine_with(instances: u32) -> Result<Engine> {
    Engine::new(&config_with(instances)).anyhow().context("creating the wasmtime engine")
}

/// The engine's configuration (tests build variants of it, e.g. with their
/// own memory creator to read every linear memory back).
pub fn config() -> Config {
    config_with(POOL_INSTANCES)
}

/// The configuration with `instances` component instance slots.
pub fn config_with(instances: u32) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.wasm_component_model(true);
    config.max_wasm_stack(MAX_WASM_STACK);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(instances);
    pool.total_stacks(instances);
    // Room for a few Python plugins at once next to their mailers.
    pool.total_core_instances(instances.saturating_mul(8));
    pool.total_memories(instances.saturating_mul(2));
    pool.total_tables(instances.saturating_mul(16));
    pool.max_memory_size(MAX_MEMORY_BYTES);
    pool.max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT);
    pool.max_memories_per_component(MAX_MEMORIES_PER_COMPONENT);
    pool.max_tables_per_component(MAX_TABLES_PER_COMPONENT);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// The per-component counts [`engine`] accepts, for checking a component
/// before it is compiled.
pub fn component_limits() -> crate::plugin::imports::ComponentLimits {
    crate::plugin::imports::ComponentLimits {
        core_instances: MAX_CORE_INSTANCES_PER_COMPONENT as usize,
        memories: MAX_MEMORIES_PER_COMPONENT as usize,
        tables: MAX_TABLES_PER_COMPONENT as usize,
    }
}

/// Where compiled components are cached: `$WASMAIL_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/wasmail`, else `~/.cache/wasmail`, else a per-user
/// `wasmail-cache-<uid>` in the temp folder.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("WASMAIL_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("wasmail");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache").join("wasmail"),
        // SAFETY: geteuid has no preconditions and cannot fail.
        None => std::env::temp_dir().join(format!("wasmail-cache-{}", unsafe { libc::geteuid() })),
    }
}

/// Why a cache folder or file may not be trusted: compiled code from it is
/// run as is, so only this user may be able to write it.
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    anyhow::ensure!(meta.uid() == me, "{} belongs to uid {}, not to this user ({me})", path.display(), meta.uid());
    anyhow::ensure!(
        meta.mode() & 0o022 == 0,
        "{} can be written by others (mode {:o})",
        path.display(),
        meta.mode() & 0o7777
    );
    Ok(())
}

/// The cache folder, created private (0700) if missing, and refused if
/// another user owns it or others can write to it.
fn private_cache_dir() -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = cache_dir();
    if let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir) {
        return Err(e).with_context(|| format!("creating {}", dir.display()));
    }
    let meta = std::fs::symlink_metadata(&dir).with_context(|| format!("reading {}", dir.display()))?;
    anyhow::ensure!(meta.is_dir(), "{} is not a folder", dir.display());
    check_private(&dir, &meta)?;
    Ok(dir)
}

/// Whether a component came from the cache or was compiled now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Deserialised from the cache.
    Hit,
    /// Compiled, then stored.
    Compiled,
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The cache file name for `bytes` under `engine`: the component's SHA-256
/// and the engine's compatibility hash (its version and every setting that
/// changes compiled code), so an artifact is only ever used for the exact
/// bytes and configuration it was made from.
pub fn cache_key(engine: &Engine, bytes: &[u8]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{}-{:016x}.cwasm", sha256_hex(bytes), h.finish())
}

/// The marker of a failed compile, next to where its artifact would be.
fn failure_marker(artifact: &Path) -> PathBuf {
    artifact.with_extension("failed")
}

/// Load a component from `bytes`, using the compiled-code cache when its
/// folder is private to this user. A compile that fails is remembered (a
/// `.failed` marker with the error, under the same key), so the next
/// attempt with the same bytes and engine fails at once instead of paying
/// for the compile again; such failures are [`LoadFailed`] errors.
///
/// [`LoadFailed`]: crate::plugin::imports::LoadFailed
pub fn load_component(engine: &Engine, bytes: &[u8], label: &str) -> Result<(Component, CacheOutcome)> {
    use crate::plugin::imports::LoadFailed;
    let dir = match private_cache_dir() {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!("not using the compile cache: {e:#}");
            None
        }
    };
    let path = dir.as_ref().map(|d| d.join(cache_key(engine, bytes)));
    if let Some(path) = &path
        && let Ok(meta) = std::fs::symlink_metadata(path)
    {
        match check_private(path, &meta) {
            // SAFETY: the file was written by `Component::serialize` of an
            // engine with the same compatibility hash (it is in the file
            // name), for these exact bytes (their SHA-256 is too), in a
            // folder and file only this user can write. A corrupt file is
            // rejected by wasmtime's header checks and we compile instead.
            Ok(()) if meta.is_file() => match unsafe { Component::deserialize_file(engine, path) } {
                Ok(c) => return Ok((c, CacheOutcome::Hit)),
                Err(e) => tracing::warn!("ignoring cached {label} at {}: {e:#}", path.display()),
            },
            Ok(()) => tracing::warn!("ignoring cached {label} at {}: not a regular file", path.display()),
            Err(e) => tracing::warn!("ignoring cached {label}: {e:#}"),
        }
    }
    if let Some(marker) = path.as_deref().map(failure_marker)
        && let Ok(meta) = std::fs::symlink_metadata(&marker)
        && meta.is_file()
        && check_private(&marker, &meta).is_ok()
    {
        let why = std::fs::read_to_string(&marker).unwrap_or_default();
        return Err(LoadFailed {
            what: format!("compiling {label} failed before: {}", why.trim()),
            hint: format!("the failure is remembered, so nothing was compiled now; delete {} to try again", marker.display()),
        }
        .into());
    }
    let component = match Component::new(engine, bytes) {
        Ok(c) => c,
        Err(e) => {
            let why = format!("{:#}", anyhow::Error::from(e));
            if let Some(marker) = path.as_deref().map(failure_marker)
                && let Err(e) = write_private(&marker, why.as_bytes())
            {
                tracing::warn!("could not remember the failed compile of {label}: {e:#}");
            }
            return Err(LoadFailed {
                what: format!("compiling {label} failed: {why}"),
                hint: "the component is malformed, or uses a feature this wasmtime does not support; \
                       `wasmail inspect` shows what it imports. The failure is remembered for these exact bytes"
                    .into(),
            }
            .into());
        }
    };
    if let Some(path) = &path
        && let Err(e) = store(path, &component)
    {
        tracing::warn!("could not cache compiled {label}: {e:#}");
    }
    Ok((component, CacheOutcome::Compiled))
}

/// Write `bytes` to `path` through a temporary file and a rename.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn store(path: &Path, component: &Component) -> Result<()> {
    let bytes = component.serialize().anyhow()?;
    // Write then rename, so a concurrent reader never sees half a file.
    write_private(path, &bytes)
}

/// Advance the engine's epoch every [`EPOCH_TICK`] on a background thread,
/// for the CPU limits. The thread lives as long as the process.
pub fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasmail-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .ok();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_cache_folder_others_can_write_is_refused() {
        let dir = std::env::temp_dir().join(format!("wasmail-cache-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let meta = std::fs::metadata(&dir).unwrap();
        assert!(check_private(&dir, &meta).unwrap_err().to_string().contains("written by others"));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let meta = std::fs::metadata(&dir).unwrap();
        assert!(check_private(&dir, &meta).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
