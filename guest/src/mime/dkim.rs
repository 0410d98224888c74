//! DKIM signing without the key (RFC 6376, RFC 8463): the mailer's half.
//!
//! The mailer canonicalizes (RFC 6376 3.4, `simple` and `relaxed` for the
//! header and the body), computes the body hash `bh=` (3.7), and writes the
//! `DKIM-Signature` field with an empty `b=`. [`Unsigned::data`] is what the
//! host signs, with a key the mailer never sees, through the `signer`
//! import; [`Unsigned::field`] then takes the signature and gives the field
//! that goes on top of the message. No `l=` (the whole body is signed) and no
//! `i=` (it defaults to `@d`).
//!
//! Pure code: the caller supplies the header section, the body bytes (in
//! any chunks, so a streamed attachment is hashed as it is read) and the
//! time.

use sha2::{Digest, Sha256};

/// A canonicalization algorithm (RFC 6376 3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canonicalization {
    /// 3.4.1 and 3.4.3: the field as it is; the body without trailing empty
    /// lines.
    Simple,
    /// 3.4.2 and 3.4.4: names in lower case, unfolded, white space runs as
    /// one space, none at line ends.
    Relaxed,
}

impl Canonicalization {
    /// The name in `c=`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Simple => "simple",
            Self::Relaxed => "relaxed",
        }
    }
}

/// The signing algorithm, which only the host (holding the key) performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (RFC 6376 3.3.1).
    RsaSha256,
    /// Ed25519 over the SHA-256 of the data (RFC 8463).
    Ed25519Sha256,
}

impl Algorithm {
    /// The name in `a=`.
    pub fn name(self) -> &'static str {
        match self {
            Self::RsaSha256 => "rsa-sha256",
            Self::Ed25519Sha256 => "ed25519-sha256",
        }
    }
}

/// Header fields signed, in `h=` order, each once more than it occurs
/// (oversigned, RFC 6376 5.4 and 8.15): one that is absent is listed once,
/// so that none of them (a `Reply-To`, a second `Subject` or `From`) can be
/// added after signing without breaking the signature.
pub const SIGNED_HEADERS: &[&str] =
    &["from", "reply-to", "to", "cc", "subject", "date", "message-id", "x-priority", "mime-version", "content-type"];

/// The longest domain or selector.
pub const MAX_NAME: usize = 253;
/// The most extra header names an identity may sign.
pub const MAX_EXTRA_HEADERS: usize = 100;

/// Who signs, and how: the host's signing identity, without its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `d=`: the signing domain.
    pub domain: String,
    /// `s=`: the selector; the public key is at `<s>._domainkey.<d>`.
    pub selector: String,
    /// `a=`.
    pub algorithm: Algorithm,
    /// How header fields are canonicalized.
    pub header_canon: Canonicalization,
    /// How the body is canonicalized.
    pub body_canon: Canonicalization,
    /// Header names signed besides [`SIGNED_HEADERS`] (those a policy
    /// allows): each is listed as often as it occurs, and once when it does
    /// not, so it cannot be added later.
    pub extra_headers: Vec<String>,
    /// `x=` is `t=` plus this many seconds, when set.
    pub expire_secs: Option<u64>,
}

fn check_dns_name(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_NAME {
        return Err(format!("{what}: must be 1 to {MAX_NAME} characters"));
    }
    for label in s.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!("{what}: {s:?} is not a domain name of ASCII letters, digits, `-` and `_`"));
        }
    }
    Ok(())
}

impl Identity {
    /// Check every field, naming the first bad one.
    pub fn check(&self) -> Result<(), String> {
        check_dns_name("domain", &self.domain)?;
        check_dns_name("selector", &self.selector)?;
        if self.extra_headers.len() > MAX_EXTRA_HEADERS {
            return Err(format!("headers: more than {MAX_EXTRA_HEADERS}"));
        }
        for (i, h) in self.extra_headers.iter().enumerate() {
            super::validate::check_header_name(h).map_err(|e| format!("headers[{i}]: {e}"))?;
            if h.eq_ignore_ascii_case("dkim-signature") {
                return Err(format!("headers[{i}]: DKIM-Signature cannot sign itself"));
            }
        }
        Ok(())
    }

    /// Whether mail from `domain` may carry this signature: `domain` is the
    /// signing domain or one of its subdomains (ASCII letters without case).
    pub fn covers(&self, domain: &str) -> bool {
        covers(&self.domain, domain)
    }
}

/// Whether `domain` is `signing` or a subdomain of it.
pub fn covers(signing: &str, domain: &str) -> bool {
    let (d, s) = (domain.as_bytes(), signing.as_bytes());
    if !domain.is_ascii() || s.is_empty() || d.len() < s.len() {
        return false;
    }
    let tail = &d[d.len() - s.len()..];
    tail.eq_ignore_ascii_case(s) && (d.len() == s.len() || d[d.len() - s.len() - 1] == b'.')
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// The body hash (RFC 6376 3.7), fed in chunks of any size: the body
/// canonicalized on the fly, never held whole.
pub struct BodyHasher {
    canon: Canonicalization,
    sha: Sha256,
    /// Line ends after the last content byte, not hashed yet: they are
    /// dropped if nothing but empty lines follows.
    crlfs: u64,
    /// The last byte was a CR whose LF may be in the next chunk.
    cr: bool,
    /// Relaxed: white space seen since the last content byte on this line.
    ws: bool,
    /// Anything but line ends hashed yet.
    content: bool,
    buf: Vec<u8>,
}

const HASH_BUF: usize = 64 << 10;

impl BodyHasher {
    /// Start a body.
    pub fn new(canon: Canonicalization) -> Self {
        Self { canon, sha: Sha256::new(), crlfs: 0, cr: false, ws: false, content: false, buf: Vec::with_capacity(HASH_BUF) }
    }

    fn emit(&mut self, bytes: &[u8]) {
        if self.buf.len() + bytes.len() > HASH_BUF {
            self.sha.update(&self.buf);
            self.buf.clear();
        }
        if bytes.len() >= HASH_BUF {
            self.sha.update(bytes);
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Content (no line end, and for relaxed no white space) on the current
    /// line: the pending line ends and white space go first.
    fn content(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        while self.crlfs > 0 {
            self.emit(b"\r\n");
            self.crlfs -= 1;
        }
        if self.ws {
            self.emit(b" ");
            self.ws = false;
        }
        self.content = true;
        self.emit(bytes);
    }

    fn line_end(&mut self) {
        // Relaxed: white space at the end of a line is deleted.
        self.ws = false;
        self.crlfs += 1;
    }

    /// Feed the next bytes of the body.
    pub fn update(&mut self, mut data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if self.cr {
            self.cr = false;
            if data.first() == Some(&b'\n') {
                self.line_end();
                data = &data[1..];
            } else {
                self.content(b"\r");
            }
        }
        match self.canon {
            Canonicalization::Simple => self.update_simple(data),
            Canonicalization::Relaxed => self.update_relaxed(data),
        }
    }

    fn update_simple(&mut self, data: &[u8]) {
        // Everything before the trailing line ends is content as it is.
        let mut end = data.len();
        let cr = data.last() == Some(&b'\r');
        if cr {
            end -= 1;
        }
        let mut n = 0;
        while end >= 2 && &data[end - 2..end] == b"\r\n" {
            end -= 2;
            n += 1;
        }
        self.content(&data[..end]);
        self.crlfs += n;
        self.cr = cr;
    }

    fn update_relaxed(&mut self, data: &[u8]) {
        let mut pos = 0;
        while pos < data.len() {
            let Some(off) = memchr::memchr3(b'\r', b' ', b'\t', &data[pos..]) else {
                self.content(&data[pos..]);
                return;
            };
            let i = pos + off;
            self.content(&data[pos..i]);
            match data[i] {
                b'\r' => match data.get(i + 1) {
                    Some(b'\n') => {
                        self.line_end();
                        pos = i + 2;
                        continue;
                    }
                    Some(_) => self.content(b"\r"),
                    None => self.cr = true,
                },
                _ => self.ws = true,
            }
            pos = i + 1;
        }
    }

    /// The hash of the canonical body.
    pub fn finish(mut self) -> [u8; 32] {
        if self.cr {
            self.cr = false;
            self.content(b"\r");
        }
        // Simple: one CRLF ends the body, even an empty one. Relaxed: a CRLF
        // ends a non-empty body; an empty one stays empty.
        if self.canon == Canonicalization::Simple || self.content {
            self.emit(b"\r\n");
        }
        let buf = std::mem::take(&mut self.buf);
        self.sha.update(&buf);
        self.sha.finalize().into()
    }
}

/// The hash of a whole body held in memory.
pub fn body_hash(canon: Canonicalization, body: &[u8]) -> [u8; 32] {
    let mut h = BodyHasher::new(canon);
    h.update(body);
    h.finish()
}

/// The header fields of a header section (no empty line), each with its
/// continuation lines and its final CRLF.
pub fn header_fields(section: &[u8]) -> Vec<&[u8]> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    while let Some(off) = memchr::memmem::find(&section[pos..], b"\r\n") {
        let end = pos + off + 2;
        if !section.get(end).copied().is_some_and(is_wsp) {
            fields.push(&section[start..end]);
            start = end;
        }
        pos = end;
    }
    if start < section.len() {
        fields.push(&section[start..]);
    }
    fields
}

/// A field's name (before the colon, white space dropped).
pub fn field_name(field: &[u8]) -> &[u8] {
    let colon = field.iter().position(|&b| b == b':').unwrap_or(field.len());
    let mut name = &field[..colon];
    while let [rest @ .., last] = name
        && is_wsp(*last)
    {
        name = rest;
    }
    name
}

/// Append `field` (with or without its CRLF) canonicalized, with a CRLF.
pub fn canonical_field(canon: Canonicalization, field: &[u8], out: &mut Vec<u8>) {
    match canon {
        Canonicalization::Simple => {
            out.extend_from_slice(field);
            if !field.ends_with(b"\r\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
        Canonicalization::Relaxed => {
            let colon = field.iter().position(|&b| b == b':').unwrap_or(field.len());
            out.extend(field_name(field).iter().map(u8::to_ascii_lowercase));
            out.push(b':');
            let value = field.get(colon + 1..).unwrap_or_default();
            // Unfold (drop every CR and LF: inside a field each CRLF is
            // followed by white space), runs of white space as one space,
            // none at either end of the value.
            let mut ws = false;
            let mut any = false;
            for &b in value {
                if b == b'\r' || b == b'\n' {
                    continue;
                }
                if is_wsp(b) {
                    ws = true;
                    continue;
                }
                if ws && any {
                    out.push(b' ');
                }
                ws = false;
                any = true;
                out.push(b);
            }
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// A DKIM-Signature field waiting for its `b=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsigned {
    /// The field as it will be sent, up to and including `b=` (no CRLF).
    pub field: String,
    /// What the host signs: the signed header fields, canonicalized, then
    /// this field canonicalized without its CRLF (RFC 6376 3.7).
    pub data: Vec<u8>,
}

/// Where a header line is folded (RFC 5322 2.1.1 recommends 78).
const FOLD: usize = 76;
/// Characters of the signature per continuation line.
const B_LINE: usize = 72;

/// Appends tags to a field, folding between them (FWS, RFC 6376 3.2).
struct Folder {
    out: String,
    col: usize,
}

impl Folder {
    fn push(&mut self, piece: &str, sep: &str) {
        if self.col + sep.len() + piece.len() > FOLD && self.col > 1 {
            self.out.push_str("\r\n ");
            self.col = 1;
        } else {
            self.out.push_str(sep);
            self.col += sep.len();
        }
        self.out.push_str(piece);
        self.col += piece.len();
    }
}

/// The `h=` list for `fields`: each of [`SIGNED_HEADERS`], then of `extra`
/// (names compared without case), once more than it occurs.
pub fn signed_names(fields: &[&[u8]], extra: &[String]) -> Vec<String> {
    let count = |name: &str| fields.iter().filter(|f| field_name(f).eq_ignore_ascii_case(name.as_bytes())).count();
    let mut names: Vec<String> = Vec::new();
    for &name in SIGNED_HEADERS {
        let n = count(name) + 1;
        names.extend(std::iter::repeat_n(name.to_owned(), n));
    }
    for name in extra {
        let lower = name.to_ascii_lowercase();
        if names.contains(&lower) {
            continue;
        }
        let n = count(&lower) + 1;
        names.extend(std::iter::repeat_n(lower, n));
    }
    names
}

/// The DKIM-Signature field for the header section `section` (the message's
/// fields, without the empty line), whose body hashed to `body_hash`, signed
/// at `time` (seconds since the epoch, `t=`).
pub fn unsigned(identity: &Identity, section: &[u8], body_hash: &[u8; 32], time: u64) -> Unsigned {
    use base64::Engine;
    let fields = header_fields(section);
    let names = signed_names(&fields, &identity.extra_headers);

    let mut f = Folder { out: String::from("DKIM-Signature:"), col: "DKIM-Signature:".len() };
    f.push("v=1;", " ");
    f.push(&format!("a={};", identity.algorithm.name()), " ");
    f.push(&format!("c={}/{};", identity.header_canon.name(), identity.body_canon.name()), " ");
    f.push(&format!("d={};", identity.domain), " ");
    f.push(&format!("s={};", identity.selector), " ");
    f.push(&format!("t={time};"), " ");
    if let Some(x) = identity.expire_secs {
        f.push(&format!("x={};", time.saturating_add(x)), " ");
    }
    // h= folds after its colons (FWS is allowed around them).
    for (i, name) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        let piece = format!("{}{name}{}", if i == 0 { "h=" } else { "" }, if last { ";" } else { ":" });
        f.push(&piece, if i == 0 { " " } else { "" });
    }
    let bh = base64::engine::general_purpose::STANDARD.encode(body_hash);
    f.push(&format!("bh={bh};"), " ");
    f.out.push_str("\r\n b=");
    let field = f.out;

    // The fields named in h=, each name taking the last instance not yet
    // used (RFC 6376 5.4.2); a name with none left adds nothing.
    let canon = identity.header_canon;
    let mut used = vec![false; fields.len()];
    let mut data = Vec::new();
    for name in &names {
        let found = (0..fields.len())
            .rev()
            .find(|&i| !used[i] && field_name(fields[i]).eq_ignore_ascii_case(name.as_bytes()));
        if let Some(i) = found {
            used[i] = true;
            canonical_field(canon, fields[i], &mut data);
        }
    }
    canonical_field(canon, field.as_bytes(), &mut data);
    data.truncate(data.len() - 2);
    Unsigned { field, data }
}

impl Unsigned {
    /// The whole field with `signature` as `b=`, folded, with its CRLF.
    pub fn signed(&self, signature: &[u8]) -> String {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD.encode(signature);
        let mut out = self.field.clone();
        let first = B_LINE.saturating_sub(3).min(b.len());
        out.push_str(&b[..first]);
        for chunk in b.as_bytes()[first..].chunks(B_LINE) {
            out.push_str("\r\n ");
            // Base64 is ASCII: every chunk is UTF-8.
            out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        }
        out.push_str("\r\n");
        out
    }
}

#[cfg(test)]
mod tests;
