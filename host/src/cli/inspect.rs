//! `wasmail inspect`: what a plugin component (WebAssembly component model)
//! imports and exports, what the host does with each import (`ok`,
//! `denied at run time`, `refused`, and why), and whether it may run here.
//! The imports are read from the binary before anything is compiled; a
//! component that passes is then compiled (or found in the cache), its
//! types checked and its imports linked as `wasmail run` links them, so
//! "can run here" means `wasmail run` will start it.

use crate::{Runtime, text};
use crate::cli::report::exit;
use crate::engine::{self, CacheOutcome};
use crate::plugin::{self, LoadFailed, Refused, classify};
use anyhow::{Context, Result};
use std::fmt::Write;
use std::path::Path;

/// `wasmail inspect`: the report, and the exit code (0 can run, 77
/// refused, 65 cannot be loaded: not a component, over a limit, or its
/// compile failed).
pub fn inspect(rt: &Runtime, path: &Path) -> Result<(String, u8)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = String::new();
    let _ = writeln!(out, "{}\n  sha256 {}", path.display(), engine::sha256_hex(&bytes));
    let scan = match plugin::imports::scan(&bytes) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(out, "verdict: cannot run here: {}", text::printable(&format!("{e:#}")));
            return Ok((out, exit::DATAERR));
        }
    };
    let _ = writeln!(
        out,
        "  {} bytes, {} core instances, {} memories, {} tables",
        bytes.len(),
        scan.core_instances,
        scan.memories,
        scan.tables
    );
    let _ = writeln!(out, "imports:");
    // Names come from the component's bytes: escaped like any text from
    // outside, so a name cannot move the cursor or print a verdict of its own.
    let width = scan.imports.iter().map(|n| text::printable(n).len()).max().unwrap_or(0);
    for name in &scan.imports {
        let (verdict, why) = classify(name);
        let (shown, why) = (text::printable(name), text::printable(&why));
        let _ = writeln!(out, "  {:<18}  {shown:<width$}  ({why})", verdict.label());
    }
    let _ = writeln!(out, "exports:");
    for (name, _) in &scan.exports {
        let _ = writeln!(out, "  {}", text::printable(name));
    }
    let started = std::time::Instant::now();
    let verdict = plugin::preflight(&bytes)
        .and_then(|_| plugin::prepare(&rt.engine, &bytes, "plugin"))
        .and_then(|(component, cache)| plugin::check_links(&rt.engine, &component).map(|()| (component, cache)));
    let code = match &verdict {
        Ok((_, cache)) => {
            let denied = scan.imports.iter().any(|n| classify(n).0 == plugin::Verdict::Denied);
            let _ = writeln!(
                out,
                "verdict: can run here; it may send mail through wasmail:mail/sender under its policy{}",
                if denied { " (the imports denied at run time fail cleanly when called)" } else { "" }
            );
            let _ = match cache {
                CacheOutcome::Hit => writeln!(out, "compiled: from the cache"),
                CacheOutcome::Compiled => writeln!(
                    out,
                    "compiled: now, in {:.1} s (cached for the next run)",
                    started.elapsed().as_secs_f64()
                ),
            };
            exit::OK
        }
        Err(e) => {
            let _ = writeln!(out, "verdict: cannot run here: {}", text::printable(&format!("{e:#}")));
            if e.is::<Refused>() {
                exit::NOPERM
            } else if e.is::<LoadFailed>() {
                exit::DATAERR
            } else {
                exit::NOINPUT
            }
        }
    };
    Ok((out, code))
}
