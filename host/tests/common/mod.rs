//! What the in-process host suites share (plugins.rs, redteam.rs, dkim.rs):
//! the example and hostile plugin components, one runtime per test binary
//! with a private compile cache, and a scratch folder removed on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use wasmail::Runtime;

/// Where `make build` puts the plugin components (or `$WASMAIL_PLUGINS`).
pub fn plugin_dir() -> PathBuf {
    std::env::var_os("WASMAIL_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release"))
}

/// The component of plugin `name`; it must have been built.
pub fn plugin(name: &str) -> PathBuf {
    let p = plugin_dir().join(format!("wasmail_plugin_{name}.wasm"));
    assert!(p.exists(), "{} is missing: run `make build` first", p.display());
    p
}

/// One runtime for the whole test binary, with a compile cache of its own.
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("wasmail-test-cache-{}", std::process::id()));
        // SAFETY: set once, before any thread of this test binary reads it.
        unsafe { std::env::set_var("WASMAIL_CACHE_DIR", &dir) };
        Runtime::new().expect("runtime")
    })
}

/// A scratch folder, removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    /// A new folder whose name carries `tag`.
    pub fn new(tag: &str) -> Self {
        let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let p = std::env::temp_dir().join(format!("wasmail-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
