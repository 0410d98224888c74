//! `wasmail inspect`: what a plugin component (WebAssembly component model)
//! imports and exports, and whether it may run here.

use crate::Runtime;
use crate::engine;
use crate::plugin::{check_component, import_allowed};
use anyhow::{Context, Result};
use std::path::Path;

/// `wasmail inspect`: what a component imports and exports, and whether it
/// can run here.
pub fn inspect(rt: &Runtime, path: &Path) -> Result<(String, bool)> {
    use std::fmt::Write;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (component, _) = engine::load_component(&rt.engine, &bytes, "plugin")?;
    let ty = component.component_type();
    let mut out = String::new();
    let _ = writeln!(out, "{}\n  sha256 {}", path.display(), engine::sha256_hex(&bytes));
    let _ = writeln!(out, "imports:");
    let mut refused = Vec::new();
    for (name, _) in ty.imports(&rt.engine) {
        let ok = import_allowed(name);
        if !ok {
            refused.push(name.to_owned());
        }
        let _ = writeln!(out, "  {} {name}{}", if ok { "ok  " } else { "DENY" }, describe_import(name));
    }
    let _ = writeln!(out, "exports:");
    for (name, _) in ty.exports(&rt.engine) {
        let _ = writeln!(out, "  {name}");
    }
    let verdict = check_component(&rt.engine, &component);
    match &verdict {
        Ok(()) => {
            let _ = writeln!(out, "verdict: can run here; it may send mail through wasmail:mail/sender under its policy");
        }
        Err(e) => {
            let _ = writeln!(out, "verdict: cannot run here: {e}");
        }
    }
    Ok((out, verdict.is_ok()))
}

fn describe_import(name: &str) -> &'static str {
    match name.split('@').next().unwrap_or(name) {
        "wasmail:mail/sender" => "  (send mail, under its policy)",
        "wasi:filesystem/types" | "wasi:filesystem/preopens" => "  (files: only a folder its policy grants, read-only)",
        "wasi:cli/environment" => "  (environment: always empty)",
        "wasi:cli/stdout" | "wasi:cli/stderr" => "  (output: captured, prefixed, capped)",
        n if n.starts_with("wasi:sockets/") => "  (network: never granted to plugins)",
        n if n.starts_with("wasi:tls/") => "  (TLS: never granted to plugins)",
        _ => "",
    }
}
