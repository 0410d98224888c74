//! The limits of one plugin's store, as typed values: a `ResourceLimiter`
//! that sums every linear memory and table of the store (whatever the
//! component's shape: one core instance or forty), bounds the count of
//! instances, memories and tables, and records which limit stopped the run.
//! WebAssembly core spec 2.0: memories and tables grow by `memory.grow` /
//! `table.grow` and at instantiation.

use crate::mail::policy::Exhausted;

/// Most core instances one plugin store may create: a componentize-py
/// component has 14, 38 with `--stub-wasi` (the engine's per-component
/// limit is the same).
pub const MAX_INSTANCES: usize = crate::engine::MAX_CORE_INSTANCES_PER_COMPONENT as usize;
/// Most linear memories one plugin store may create (all of them summed
/// under `memory_mib`).
pub const MAX_MEMORIES: usize = crate::engine::MAX_MEMORIES_PER_COMPONENT as usize;
/// Most tables one plugin store may create (their elements summed under
/// [`MAX_TABLE_ELEMENTS`]).
pub const MAX_TABLES: usize = crate::engine::MAX_TABLES_PER_COMPONENT as usize;
/// Most table elements (function references), summed over every table.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Why the host stopped a run. Each names the config key that sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// `cpu_ms`: CPU time in wasm.
    Cpu { ms: u64 },
    /// `memory_mib`: all linear memories together.
    Memory { mib: u64 },
    /// Table elements, all tables together.
    Tables { elements: usize },
    /// `wall_ms`: the whole run, host time on its behalf included.
    Wall { ms: u64 },
    /// A per-run budget (`max_attempts`).
    Budget(Exhausted),
    /// The mailer failed (trapped, ran out of its memory) on the plugin's
    /// message: the mailer's failure, not the plugin's.
    Mailer(String),
    /// The host could not keep a message (spool or outbox write failed).
    Host(String),
}

impl Stop {
    /// The limit's name, as its config key (`cpu_ms`, `max_attempts`), or
    /// `mailer`/`host` for a failure that was not the plugin's.
    pub fn limit(&self) -> &'static str {
        match self {
            Self::Cpu { .. } => "cpu_ms",
            Self::Memory { .. } => "memory_mib",
            Self::Tables { .. } => "tables",
            Self::Wall { .. } => "wall_ms",
            Self::Budget(e) => e.key,
            Self::Mailer(_) => "mailer",
            Self::Host(_) => "host",
        }
    }
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu { ms } => write!(f, "cpu_ms: the plugin used more than {ms} ms of CPU"),
            Self::Memory { mib } => write!(f, "memory_mib: the plugin tried to grow its memories past {mib} MiB in all"),
            Self::Tables { elements } => write!(f, "tables: the plugin tried to grow its tables past {elements} elements in all"),
            Self::Wall { ms } => write!(f, "wall_ms: the run took longer than {ms} ms"),
            Self::Budget(e) => write!(f, "{e}"),
            Self::Mailer(why) => write!(f, "mailer: the mailer failed on this plugin's message (not the plugin's fault): {why}"),
            Self::Host(why) => write!(f, "host: {why}"),
        }
    }
}

impl std::error::Error for Stop {}

/// Memory and table accounting for one plugin store.
#[derive(Debug)]
pub struct PluginLimiter {
    memory_limit: usize,
    memory_used: usize,
    table_used: usize,
    /// The limit that refused a grow, if one did.
    pub hit: Option<Stop>,
}

impl PluginLimiter {
    /// At most `memory_mib` MiB of linear memory in all.
    pub fn new(memory_mib: u64) -> Self {
        let memory_limit = usize::try_from(memory_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        Self { memory_limit, memory_used: 0, table_used: 0, hit: None }
    }

    /// Bytes of linear memory in use, all memories together.
    pub fn memory_used(&self) -> usize {
        self.memory_used
    }
}

impl wasmtime::ResourceLimiter for PluginLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.memory_used.saturating_add(desired.saturating_sub(current));
        if total > self.memory_limit {
            let stop = Stop::Memory { mib: (self.memory_limit >> 20) as u64 };
            self.hit = Some(stop.clone());
            return Err(wasmtime::Error::msg(stop.to_string()));
        }
        self.memory_used = total;
        Ok(true)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.table_used.saturating_add(desired.saturating_sub(current));
        if total > MAX_TABLE_ELEMENTS {
            let stop = Stop::Tables { elements: MAX_TABLE_ELEMENTS };
            self.hit = Some(stop.clone());
            return Err(wasmtime::Error::msg(stop.to_string()));
        }
        self.table_used = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn memories_are_summed() {
        let mut l = PluginLimiter::new(64);
        for _ in 0..3 {
            assert!(l.memory_growing(0, 20 << 20, None).unwrap());
        }
        assert!(l.memory_growing(0, 20 << 20, None).is_err(), "the fourth memory passes 64 MiB in all");
        assert_eq!(l.hit, Some(Stop::Memory { mib: 64 }));
        assert_eq!(l.memory_used(), 60 << 20);
    }

    #[test]
    fn tables_are_summed() {
        let mut l = PluginLimiter::new(1);
        assert!(l.table_growing(0, MAX_TABLE_ELEMENTS / 2, None).unwrap());
        assert!(l.table_growing(0, MAX_TABLE_ELEMENTS / 2, None).unwrap());
        assert!(l.table_growing(10, 11, None).is_err());
    }
}
