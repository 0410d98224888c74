//! The wasmail mailer: MIME assembly (RFC 5322, RFC 2045-2049) and an SMTP
//! client (RFC 5321) that runs as a wasm32-wasip2 component.
//!
//! `mime`, `smtp` and `deliver` are plain Rust, tested natively. Only `net`
//! touches wasi:sockets and wasi:tls, and only `component` knows the WIT
//! bindings; both exist on wasm32 only.

pub mod deliver;
pub mod mime;
pub mod smtp;

#[cfg(target_arch = "wasm32")]
mod bindings {
    //! Guest bindings for `world mailer`, generated from the vendored WIT.
    wit_bindgen::generate!({
        path: "../wit/mailer",
        world: "wasmail:mailer/mailer",
        features: ["tls"],
        generate_all,
    });
}
#[cfg(target_arch = "wasm32")]
mod component;
#[cfg(target_arch = "wasm32")]
mod net;
