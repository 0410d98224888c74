//! What a plugin component asks for, read before anything is compiled: its
//! imports (each `ok`, `denied at run time` or `refused`, with one line of
//! why), its exports, and the counts the pooling allocator limits (core
//! instances, memories, tables). The component binary is read with
//! wasmparser (the version wasmtime uses), so a plugin that may not run
//! here costs a parse, not a compile.
//!
//! Deny by default: an import is allowed only when it is in [`RULES`]. The
//! interfaces that toolchains link whether or not the plugin uses them
//! (`wasi:sockets/*` from libc under componentize-py, `wasi:http/*` from
//! StarlingMonkey under componentize-js) are linked with implementations
//! that refuse every call; everything else (wasi:tls, the mailer's
//! interfaces, unknown packages) is refused before the plugin runs.

use anyhow::{Result, bail};
use wasmparser::{ComponentAlias, ComponentExternalKind, ComponentOuterAliasKind, Instance, Parser, Payload};

/// What the host does with one import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Linked and usable, within the plugin's grant.
    Ok,
    /// Linked, but every call that would reach the network fails cleanly.
    Denied,
    /// Not linked: a plugin importing it does not run.
    Refused,
}

impl Verdict {
    /// How `wasmail inspect` prints it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Denied => "denied at run time",
            Self::Refused => "refused",
        }
    }
}

/// One rule: an interface (package/name, without the version) and its verdict.
struct Rule {
    interface: &'static str,
    verdict: Verdict,
    why: &'static str,
}

const fn rule(interface: &'static str, verdict: Verdict, why: &'static str) -> Rule {
    Rule { interface, verdict, why }
}

/// Every interface a plugin may import, and what it gets. The linker in
/// `plugin/mod.rs` defines exactly these (`linked_interfaces_match_the_rules`
/// checks it).
const RULES: &[Rule] = &[
    rule("wasmail:mail/sender", Verdict::Ok, "send mail, under its policy"),
    rule("wasmail:mail/types", Verdict::Ok, "the mail API's data types"),
    rule("wasi:io/error", Verdict::Ok, "errors of the streams it was given"),
    rule("wasi:io/poll", Verdict::Ok, "waiting on what it was given"),
    rule("wasi:io/streams", Verdict::Ok, "the streams it was given"),
    rule("wasi:clocks/wall-clock", Verdict::Ok, "the time of day"),
    rule("wasi:clocks/monotonic-clock", Verdict::Ok, "timers (its CPU and wall time are limited)"),
    rule("wasi:random/random", Verdict::Ok, "random bytes"),
    rule("wasi:random/insecure", Verdict::Ok, "random bytes"),
    rule("wasi:random/insecure-seed", Verdict::Ok, "a random seed"),
    rule("wasi:cli/environment", Verdict::Ok, "environment and arguments: always empty"),
    rule("wasi:cli/exit", Verdict::Ok, "ends its own run"),
    rule("wasi:cli/stdin", Verdict::Ok, "standard input: always empty"),
    rule("wasi:cli/stdout", Verdict::Ok, "output: captured, escaped, prefixed [name], capped"),
    rule("wasi:cli/stderr", Verdict::Ok, "output: captured, escaped, prefixed [name:stderr], capped"),
    rule("wasi:cli/terminal-input", Verdict::Ok, "never a terminal"),
    rule("wasi:cli/terminal-output", Verdict::Ok, "never a terminal"),
    rule("wasi:cli/terminal-stdin", Verdict::Ok, "never a terminal"),
    rule("wasi:cli/terminal-stdout", Verdict::Ok, "never a terminal"),
    rule("wasi:cli/terminal-stderr", Verdict::Ok, "never a terminal"),
    rule("wasi:filesystem/types", Verdict::Ok, "files: only the folder its policy grants, read-only at /data"),
    rule("wasi:filesystem/preopens", Verdict::Ok, "files: only the folder its policy grants, read-only at /data"),
    rule("wasi:sockets/network", Verdict::Denied, "linked for libc (componentize-py); no network is ever granted"),
    rule("wasi:sockets/instance-network", Verdict::Denied, "linked for libc; the network handle allows nothing"),
    rule("wasi:sockets/tcp-create-socket", Verdict::Denied, "linked for libc; creating a TCP socket fails with access-denied"),
    rule("wasi:sockets/tcp", Verdict::Denied, "linked for libc; no TCP socket can be created"),
    rule("wasi:sockets/udp-create-socket", Verdict::Denied, "linked for libc; creating a UDP socket fails with access-denied"),
    rule("wasi:sockets/udp", Verdict::Denied, "linked for libc; no UDP socket can be created"),
    rule("wasi:sockets/ip-name-lookup", Verdict::Denied, "linked for libc; every lookup fails (permanent-resolver-failure)"),
    rule("wasi:http/types", Verdict::Denied, "linked for componentize-js (fetch); requests can be built, never sent"),
    rule("wasi:http/outgoing-handler", Verdict::Denied, "linked for componentize-js (fetch); every request fails with HTTP-request-denied"),
];

/// The versions the linker has: wasmtime 48 implements WASI 0.2.x (a
/// component built against any 0.2 release links), the mail API 0.1.x.
fn version_ok(package: &str, version: &str) -> bool {
    let release = if package.starts_with("wasmail:") { "0.1." } else { "0.2." };
    version.starts_with(release) && !version.contains('-')
}

/// The verdict on one import name, with one line of why.
pub fn classify(name: &str) -> (Verdict, String) {
    let (interface, version) = name.split_once('@').unwrap_or((name, ""));
    let package = interface.split('/').next().unwrap_or(interface);
    if let Some(r) = RULES.iter().find(|r| r.interface == interface) {
        if !version_ok(package, version) {
            let have = if package.starts_with("wasmail:") { "0.1.x" } else { "0.2.x" };
            // The version is the component's text: shown escaped.
            let version = if version.is_empty() { "(none)".into() } else { crate::text::printable(version) };
            return (Verdict::Refused, format!("version {version} is not implemented here (this host has {have})"));
        }
        return (r.verdict, r.why.to_owned());
    }
    let why = match package {
        "wasi:tls" => "TLS: never granted to plugins (only the mailer has it)",
        "wasi:sockets" | "wasi:http" => "network: not linked for plugins",
        "wasmail:mail" => "the mailer's interface: only the host and the mailer use it",
        "wasi:cli" | "wasi:io" | "wasi:clocks" | "wasi:random" | "wasi:filesystem" => "not in the plugin sandbox",
        _ if !interface.contains('/') => "a bare import (not an interface): nothing in this host provides it",
        _ => "unknown interface: nothing in this host provides it",
    };
    (Verdict::Refused, why.to_owned())
}

/// The interfaces the plugin linker defines (every rule's interface, with
/// its verdict), for checking the linker against the rules.
#[cfg(test)]
pub(crate) fn linked_interfaces() -> impl Iterator<Item = (&'static str, Verdict)> {
    RULES.iter().map(|r| (r.interface, r.verdict))
}

/// True when a plugin importing `name` may run (linked, possibly denying).
pub fn import_allowed(name: &str) -> bool {
    classify(name).0 != Verdict::Refused
}

/// What a component binary says about itself, read without compiling it.
#[derive(Debug, Default, Clone)]
pub struct Scan {
    /// The top-level imports, in order.
    pub imports: Vec<String>,
    /// The top-level exports, with whether each is a function.
    pub exports: Vec<(String, bool)>,
    /// Core module instances it creates, nested components included.
    pub core_instances: usize,
    /// Linear memories its instantiated modules define.
    pub memories: usize,
    /// Tables its instantiated modules define.
    pub tables: usize,
}

/// The per-component counts the engine's pooling allocator accepts.
#[derive(Debug, Clone, Copy)]
pub struct ComponentLimits {
    /// Core module instances.
    pub core_instances: usize,
    /// Linear memories defined by those instances.
    pub memories: usize,
    /// Tables defined by those instances.
    pub tables: usize,
}

/// A component that the engine cannot load: over a limit of the pooling
/// allocator, or failing to compile. `wasmail` exits 65 for it.
#[derive(Debug)]
pub struct LoadFailed {
    /// What failed.
    pub what: String,
    /// What to do about it.
    pub hint: String,
}

impl std::fmt::Display for LoadFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (hint: {})", self.what, self.hint)
    }
}

impl std::error::Error for LoadFailed {}

/// The module index space of one component being read: what each module
/// defines (memories, tables), in index order.
#[derive(Default)]
struct ComponentFrame {
    modules: Vec<(usize, usize)>,
}

enum Frame {
    Component(ComponentFrame),
    Module { memories: usize, tables: usize },
}

/// Read `bytes` as a component: its imports, exports and counts.
pub fn scan(bytes: &[u8]) -> Result<Scan> {
    if !wasmparser::Parser::is_component(bytes) {
        if wasmparser::Parser::is_core_wasm(bytes) {
            bail!("it is a core WebAssembly module, not a component: build it for wasm32-wasip2, or wrap it with `wasm-tools component new`");
        }
        bail!("it is not a WebAssembly component");
    }
    let mut out = Scan::default();
    let mut stack: Vec<Frame> = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| anyhow::anyhow!("it is not a valid component: {e}"))?;
        let top = stack.len() == 1;
        match payload {
            Payload::Version { encoding, .. } => stack.push(match encoding {
                wasmparser::Encoding::Component => Frame::Component(ComponentFrame::default()),
                wasmparser::Encoding::Module => Frame::Module { memories: 0, tables: 0 },
            }),
            Payload::End(_) => {
                if let Some(Frame::Module { memories, tables }) = stack.pop()
                    && let Some(Frame::Component(c)) = stack.last_mut()
                {
                    c.modules.push((memories, tables));
                }
            }
            Payload::MemorySection(r) => {
                if let Some(Frame::Module { memories, .. }) = stack.last_mut() {
                    *memories += r.count() as usize;
                }
            }
            Payload::TableSection(r) => {
                if let Some(Frame::Module { tables, .. }) = stack.last_mut() {
                    *tables += r.count() as usize;
                }
            }
            Payload::InstanceSection(r) => {
                for instance in r {
                    let instance = instance.map_err(|e| anyhow::anyhow!("it is not a valid component: {e}"))?;
                    if let Instance::Instantiate { module_index, .. } = instance {
                        out.core_instances += 1;
                        if let Some(Frame::Component(c)) = stack.last()
                            && let Some((m, t)) = c.modules.get(module_index as usize)
                        {
                            out.memories += m;
                            out.tables += t;
                        }
                    }
                }
            }
            Payload::ComponentAliasSection(r) => {
                for alias in r {
                    let alias = alias.map_err(|e| anyhow::anyhow!("it is not a valid component: {e}"))?;
                    let module = match alias {
                        ComponentAlias::Outer { kind: ComponentOuterAliasKind::CoreModule, count, index } => {
                            let depth = stack.len().checked_sub(1 + count as usize);
                            Some(match depth.and_then(|d| stack.get(d)) {
                                Some(Frame::Component(c)) => c.modules.get(index as usize).copied().unwrap_or_default(),
                                _ => (0, 0),
                            })
                        }
                        ComponentAlias::InstanceExport { kind: ComponentExternalKind::Module, .. } => Some((0, 0)),
                        _ => None,
                    };
                    if let (Some(m), Some(Frame::Component(c))) = (module, stack.last_mut()) {
                        c.modules.push(m);
                    }
                }
            }
            Payload::ComponentImportSection(r) => {
                for import in r {
                    let import = import.map_err(|e| anyhow::anyhow!("it is not a valid component: {e}"))?;
                    if top {
                        out.imports.push(import.name.name.to_owned());
                    } else if let (wasmparser::ComponentTypeRef::Module(_), Some(Frame::Component(c))) =
                        (import.ty, stack.last_mut())
                    {
                        c.modules.push((0, 0));
                    }
                }
            }
            Payload::ComponentExportSection(r) if top => {
                for export in r {
                    let export = export.map_err(|e| anyhow::anyhow!("it is not a valid component: {e}"))?;
                    out.exports.push((export.name.name.to_owned(), export.kind == ComponentExternalKind::Func));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

impl Scan {
    /// The first import a plugin may not have, with why.
    pub fn refused_import(&self) -> Option<(String, String)> {
        self.imports.iter().find_map(|name| match classify(name) {
            (Verdict::Refused, why) => Some((name.clone(), why)),
            _ => None,
        })
    }

    /// Whether it exports a function `run`.
    pub fn exports_run(&self) -> bool {
        self.exports.iter().any(|(name, func)| name == "run" && *func)
    }

    /// The first count over `limits`, as a load failure with a hint.
    pub fn over_limits(&self, limits: &ComponentLimits) -> Option<LoadFailed> {
        let over = |what: &str, n: usize, max: usize| LoadFailed {
            what: format!("the component has {n} {what}; this host allows at most {max} per plugin"),
            hint: format!(
                "a componentize-py 0.25 component has 14 core instances (38 with --stub-wasi), a componentize-js 0.23 one 4, \
                 a Rust or C one 1 to 3, and each 1 memory; one with more {what} than {max} is not what a plugin \
                 toolchain makes: check how it was built"
            ),
        };
        if self.core_instances > limits.core_instances {
            return Some(over("core instances", self.core_instances, limits.core_instances));
        }
        if self.memories > limits.memories {
            return Some(over("linear memories", self.memories, limits.memories));
        }
        if self.tables > limits.tables {
            return Some(over("tables", self.tables, limits.tables));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(classify("wasmail:mail/sender@0.1.0").0, Verdict::Ok);
        assert_eq!(classify("wasi:io/poll@0.2.0").0, Verdict::Ok);
        assert_eq!(classify("wasi:io/poll@0.2.12").0, Verdict::Ok);
        assert_eq!(classify("wasi:sockets/tcp@0.2.3").0, Verdict::Denied);
        assert_eq!(classify("wasi:http/outgoing-handler@0.2.10").0, Verdict::Denied);
        for refused in [
            "wasi:tls/types@0.2.0-draft",
            "wasmail:mail/transport@0.1.0",
            "wasmail:mail/credentials@0.1.0",
            "wasmail:mail/signer@0.1.0",
            "wasi:http/incoming-handler@0.2.0",
            "wasi:io/poll@0.3.0",
            "wasi:io/poll@0.2.0-rc-2023-11-10",
            "wasmail:mail/sender@0.2.0",
            "wasmail:mail/sender@0.1.0-rc1",
            "wasi:keyvalue/store@0.2.0",
            "evil",
        ] {
            assert_eq!(classify(refused).0, Verdict::Refused, "{refused}");
        }
        assert!(classify("wasi:io/poll").1.contains("version (none)"));
        // A version is the component's text: a line break in it cannot
        // print a line of its own (`inspect` shows the reason as it is).
        let (_, why) = classify("wasi:io/poll@0.3)\n  ok  wasmail:mail/sender@0.1.0\nverdict: can run here");
        assert!(!why.contains('\n'), "{why}");
    }

    #[test]
    fn a_core_module_is_not_a_component() {
        let core = wat::parse_str("(module)").unwrap();
        assert!(scan(&core).unwrap_err().to_string().contains("core WebAssembly module"));
        assert!(scan(b"not wasm").is_err());
    }

    #[test]
    fn counts_and_names() {
        let bytes = wat::parse_str(
            r#"(component
                (import "wasi:sockets/tcp@0.2.0" (instance))
                (core module $m (memory 1) (table 1 funcref) (func (export "f")))
                (core module $n)
                (core instance $a (instantiate $m))
                (core instance (instantiate $m))
                (core instance (instantiate $n))
                (func (export "run") (canon lift (core func $a "f")))
            )"#,
        )
        .unwrap();
        let s = scan(&bytes).unwrap();
        assert_eq!(s.imports, ["wasi:sockets/tcp@0.2.0"]);
        assert_eq!((s.core_instances, s.memories, s.tables), (3, 2, 2));
        assert!(s.exports_run());
        assert_eq!(s.refused_import(), None);
    }
}
