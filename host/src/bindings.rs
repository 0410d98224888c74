//! Host bindings for the wasmail WIT package (`wasmail:mail@0.1.0`, the
//! mail API of RFC 5322 messages and RFC 5321 delivery), generated once from
//! the vendored WIT set by the component model's `bindgen!`.
//!
//! The `mailer` world is the one bindgen! covers: its exports (`sender`,
//! `transport`) are what the host calls, its imports (`credentials`, `blobs`,
//! `transcript`) are what the host implements, and `wasmail:mail/types` is
//! shared with the plugin side, whose single import (`sender.send`) and
//! export (`run`) are linked by hand in `sender.rs` with these same types.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "wasmail:mail/mailer",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "wasi": wasmtime_wasi::p2::bindings,
        "wasi:tls": wasmtime_wasi_tls::p2::bindings,
    },
    require_store_data_send: true,
});

pub use exports::wasmail::mail::transport;
pub use wasmail::mail::types;
