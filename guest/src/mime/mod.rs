//! MIME assembly: turns a validated draft into the exact message bytes
//! (RFC 5322 header fields, RFC 2045-2049 bodies and multiparts, RFC 2047
//! encoded words, RFC 2231 parameters, RFC 2392 content ids).
//!
//! Pure code: the caller supplies the date, the Message-ID and a seed for
//! boundaries, so the same draft always gives the same bytes.
//!
//! - [`draft`]: the types, a [`Draft`] in and a [`Rendered`] message out;
//! - [`validate`]: every field of a draft checked, its limits;
//! - [`render`]: the MIME tree and its bytes;
//! - [`lint`]: the last check of the serialised bytes;
//! - [`dkim`]: DKIM canonicalization, the body hash and the signature field
//!   (the key stays with the host);
//! - [`address`], [`header`], [`encode`]: the pieces they are made of;
//!   [`pattern`]: allow-list patterns over the same addresses.

pub mod address;
pub mod dkim;
pub mod draft;
pub mod encode;
pub mod header;
pub mod lint;
pub mod pattern;
pub mod render;
pub mod validate;

pub use draft::{Attachment, BuildContext, Content, Draft, Envelope, InvalidMessage, Priority, RawMailbox, Rendered, Segment};
pub use validate::{
    MAX_ATTACHMENTS, MAX_CUSTOM_HEADERS, MAX_FILENAME, MAX_HEADER_VALUE, MAX_RECIPIENTS, MAX_SUBJECT, RESERVED_HEADERS,
    check_header_name,
};

#[cfg(test)]
mod tests;
