//! Embeds the mailer component: `make build` compiles it for wasm32-wasip2
//! first. `WASMAIL_MAILER_WASM` may point at another build of it.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=WASMAIL_MAILER_WASM");
    let path = match std::env::var_os("WASMAIL_MAILER_WASM") {
        Some(p) => PathBuf::from(p),
        None => {
            let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
            manifest.join("../target/wasm32-wasip2/release/wasmail_mailer.wasm")
        }
    };
    println!("cargo:rerun-if-changed={}", path.display());
    if !path.exists() {
        panic!(
            "the mailer component {} is missing: run `make build` \
             (cargo build -p wasmail-mailer --target wasm32-wasip2 --release) first",
            path.display()
        );
    }
    let abs = path.canonicalize().unwrap_or(path);
    println!("cargo:rustc-env=WASMAIL_MAILER_WASM={}", abs.display());
}
