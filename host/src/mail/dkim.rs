//! DKIM keys and signing identities (RFC 6376 3.3 and 3.6, RFC 8463): keys
//! loaded from PEM files only their owner can read, generated for `wasmail
//! dkim keygen`, published as a DNS TXT record, and used to sign the header
//! data the mailer hands over. A key, and anything derived from it, never
//! enters a wasm store: the mailer gets the signature and nothing else, and
//! only for data that is a DKIM header block of the identity's own domain
//! with a From in that domain.

use crate::bindings::wasmail::mail::signer::{Algorithm as WitAlgorithm, Canonicalization as WitCanon, Identity};
use anyhow::{Context, Result, bail};
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use std::fmt;
use std::path::Path;
use wasmail_mailer::mime::dkim as canon;
use zeroize::Zeroizing;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The key types `wasmail dkim keygen` makes and signing accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
pub enum KeyType {
    /// Ed25519 (RFC 8463), `a=ed25519-sha256`: a 32-byte key, a short record.
    #[serde(rename = "ed25519-sha256")]
    #[value(name = "ed25519")]
    Ed25519,
    /// RSA, 2048 bits, `a=rsa-sha256`: what every verifier understands.
    #[serde(rename = "rsa-sha256")]
    #[value(name = "rsa2048")]
    Rsa,
}

impl KeyType {
    /// The `a=` name.
    pub fn algorithm(self) -> &'static str {
        match self {
            Self::Ed25519 => "ed25519-sha256",
            Self::Rsa => "rsa-sha256",
        }
    }
}

/// `c=`: how header fields and the body are canonicalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canonicalization {
    /// For header fields.
    pub header: canon::Canonicalization,
    /// For the body.
    pub body: canon::Canonicalization,
}

impl Default for Canonicalization {
    /// `relaxed/relaxed`: survives the re-folding and white space changes
    /// relays make.
    fn default() -> Self {
        Self { header: canon::Canonicalization::Relaxed, body: canon::Canonicalization::Relaxed }
    }
}

impl std::str::FromStr for Canonicalization {
    type Err = String;
    /// `header/body`, or one name for the header with a simple body (RFC
    /// 6376 3.5: `c=relaxed` means `relaxed/simple`).
    fn from_str(s: &str) -> Result<Self, String> {
        let one = |name: &str| match name {
            "simple" => Ok(canon::Canonicalization::Simple),
            "relaxed" => Ok(canon::Canonicalization::Relaxed),
            other => Err(format!("{other:?} is not simple or relaxed")),
        };
        let (h, b) = s.split_once('/').unwrap_or((s, "simple"));
        Ok(Self { header: one(h)?, body: one(b)? })
    }
}

impl<'de> serde::Deserialize<'de> for Canonicalization {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Canonicalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.header.name(), self.body.name())
    }
}

fn wit_canon(c: canon::Canonicalization) -> WitCanon {
    match c {
        canon::Canonicalization::Simple => WitCanon::Simple,
        canon::Canonicalization::Relaxed => WitCanon::Relaxed,
    }
}

enum Pair {
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

/// A private key held by the host. `Debug` shows its type only.
pub struct SigningKey(Pair);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({:?}, <redacted>)", self.key_type())
    }
}

/// The base64 body of the first PEM block, and its label.
fn pem_decode(text: &str) -> Result<(String, Zeroizing<Vec<u8>>)> {
    let start = text.find("-----BEGIN ").context("no `-----BEGIN` line: not a PEM file")?;
    let rest = &text[start + "-----BEGIN ".len()..];
    let (label, rest) = rest.split_once("-----").context("a malformed `-----BEGIN` line")?;
    let end = format!("-----END {label}-----");
    let body = rest.split(&end).next().filter(|_| rest.contains(&end)).context("no matching `-----END` line")?;
    let b64: Zeroizing<String> = Zeroizing::new(body.chars().filter(|c| !c.is_whitespace()).collect());
    let der = B64.decode(b64.as_bytes()).map(Zeroizing::new).context("the PEM body is not base64")?;
    Ok((label.to_owned(), der))
}

/// PEM text of a PKCS#8 private key.
pub fn pem_encode(der: &[u8]) -> Zeroizing<String> {
    let b64 = Zeroizing::new(B64.encode(der));
    let mut out = Zeroizing::new(String::from("-----BEGIN PRIVATE KEY-----\n"));
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

/// DER: a length.
fn der_len(n: usize, out: &mut Vec<u8>) {
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n.to_be_bytes().into_iter().skip_while(|&b| b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
}

/// DER: a tag, its length, its contents.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    der_len(content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

/// The SubjectPublicKeyInfo of an RSAPublicKey (RFC 5280 4.1, RFC 8017
/// A.1.1): what `p=` carries for `k=rsa`, as opendkim-genkey publishes it.
fn rsa_spki(rsa_public_key: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL }
    let algorithm = der(0x30, &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00]);
    let mut bits = vec![0u8];
    bits.extend_from_slice(rsa_public_key);
    der(0x30, &[algorithm, der(0x03, &bits)].concat())
}

impl SigningKey {
    /// A PKCS#8 private key (`PRIVATE KEY`): Ed25519 or RSA.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self> {
        if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            return Ok(Self(Pair::Ed25519(k)));
        }
        match RsaKeyPair::from_pkcs8(der) {
            Ok(k) => Ok(Self(Pair::Rsa(k))),
            Err(e) => bail!("not an Ed25519 or RSA (2048 to 4096 bits) PKCS#8 private key: {e}"),
        }
    }

    /// A PEM file's text: PKCS#8 (`PRIVATE KEY`, Ed25519 or RSA) or PKCS#1
    /// (`RSA PRIVATE KEY`, what older opendkim-genkey writes).
    pub fn from_pem(text: &str) -> Result<Self> {
        let (label, der) = pem_decode(text)?;
        match label.as_str() {
            "PRIVATE KEY" => Self::from_pkcs8(&der),
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der)
                .map(|k| Self(Pair::Rsa(k)))
                .map_err(|e| anyhow::anyhow!("not a usable RSA private key (2048 to 4096 bits): {e}")),
            "ENCRYPTED PRIVATE KEY" => bail!("the key is encrypted; wasmail reads unencrypted keys kept mode 0600"),
            other => bail!("a PEM block of type {other:?}, not a private key"),
        }
    }

    /// Read a key file, refusing one that anybody but its owner may read or
    /// write (as ssh does): a DKIM key lets its holder sign for the domain.
    pub fn load(path: &Path) -> Result<Self> {
        use std::io::Read;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let shown = path.display();
        // Opened once, without following a link or blocking on a FIFO, and
        // the open file checked: what is read is what was checked.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .with_context(|| format!("DKIM key {shown} (a symbolic link is not followed)"))?;
        let meta = file.metadata().with_context(|| format!("DKIM key {shown}"))?;
        if !meta.is_file() {
            bail!("DKIM key {shown}: not a regular file");
        }
        if meta.len() > MAX_KEY_FILE_BYTES {
            bail!("DKIM key {shown}: {} bytes, more than a key file's {MAX_KEY_FILE_BYTES}", meta.len());
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "DKIM key {shown}: other users can read or write it (mode {mode:04o}); a private key must be \
                 readable by its owner only: chmod 600 {shown}"
            );
        }
        // Room for all of it at once: no reallocation leaves a copy behind.
        let mut text = Zeroizing::new(Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0) + 1));
        file.read_to_end(&mut text).with_context(|| format!("reading DKIM key {shown}"))?;
        let text = std::str::from_utf8(&text).map_err(|_| anyhow::anyhow!("DKIM key {shown}: not PEM text"))?;
        Self::from_pem(text).with_context(|| format!("DKIM key {shown}"))
    }

    /// Ed25519 or RSA.
    pub fn key_type(&self) -> KeyType {
        match self.0 {
            Pair::Ed25519(_) => KeyType::Ed25519,
            Pair::Rsa(_) => KeyType::Rsa,
        }
    }

    /// The signature over `data` (RFC 6376 3.7): RSASSA-PKCS1-v1_5 with
    /// SHA-256, or Ed25519 over the SHA-256 of `data` (RFC 8463 3).
    pub fn sign(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        match &self.0 {
            Pair::Ed25519(k) => {
                use sha2::Digest;
                Ok(k.sign(&sha2::Sha256::digest(data)).as_ref().to_vec())
            }
            Pair::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), data, &mut sig)
                    .map_err(|_| "RSA signing failed".to_owned())?;
                Ok(sig)
            }
        }
    }

    /// The key record's value (RFC 6376 3.6.1): `v=DKIM1; k=...; p=...`.
    pub fn record(&self) -> String {
        match &self.0 {
            Pair::Ed25519(k) => format!("v=DKIM1; k=ed25519; p={}", B64.encode(k.public_key().as_ref())),
            Pair::Rsa(k) => format!("v=DKIM1; k=rsa; p={}", B64.encode(rsa_spki(k.public_key().as_ref()))),
        }
    }
}

/// A new private key, PKCS#8 DER.
pub fn generate(key_type: KeyType) -> Result<Zeroizing<Vec<u8>>> {
    match key_type {
        KeyType::Ed25519 => {
            let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .map_err(|_| anyhow::anyhow!("generating an Ed25519 key failed"))?;
            Ok(Zeroizing::new(doc.as_ref().to_vec()))
        }
        KeyType::Rsa => {
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::PrivateKey::new(&mut rand::rngs::SysRng, 2048)
                .map_err(|e| anyhow::anyhow!("generating an RSA key failed: {e}"))?;
            let der = key.to_pkcs8_der().map_err(|e| anyhow::anyhow!("encoding the RSA key failed: {e}"))?;
            Ok(Zeroizing::new(der.as_bytes().to_vec()))
        }
    }
}

/// Write `pem` to a new file `path` (never over an existing one), mode 0600
/// from the start.
pub fn write_new_key(path: &Path, pem: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(pem.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    f.sync_all().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The DNS name of a key record: `<selector>._domainkey.<domain>`.
pub fn record_name(domain: &str, selector: &str) -> String {
    format!("{selector}._domainkey.{domain}")
}

/// A zone-file line for the record, its value cut into strings of at most
/// 255 octets (RFC 1035 3.3.14; RFC 6376 3.6.2.2 joins them).
pub fn zone_line(domain: &str, selector: &str, value: &str) -> String {
    let strings: Vec<String> =
        value.as_bytes().chunks(250).map(|c| format!("\"{}\"", String::from_utf8_lossy(c))).collect();
    format!("{}. IN TXT ( {} )", record_name(domain, selector), strings.join("\n\t"))
}

/// A signing identity: a `[dkim.NAME]` table or the `--dkim-*` flags, with
/// its key loaded. `Debug` never shows the key.
#[derive(Debug)]
pub struct Signing {
    /// `d=`.
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// `c=`.
    pub canonicalization: Canonicalization,
    /// Header names signed besides the mailer's fixed list.
    pub headers: Vec<String>,
    /// `x=` is `t=` plus this.
    pub expire_secs: Option<u64>,
    key: SigningKey,
}

impl Signing {
    /// An identity for `domain` and `selector` with `key`, checked as the
    /// mailer checks it.
    pub fn new(domain: &str, selector: &str, key: SigningKey) -> Result<Self> {
        let s = Self {
            domain: domain.to_ascii_lowercase(),
            selector: selector.to_owned(),
            canonicalization: Canonicalization::default(),
            headers: Vec::new(),
            expire_secs: None,
            key,
        };
        s.native().check().map_err(|e| anyhow::anyhow!("dkim {e}"))?;
        Ok(s)
    }

    /// Sign also these header names.
    pub fn headers(mut self, names: impl IntoIterator<Item = String>) -> Result<Self> {
        for n in names {
            if !self.headers.iter().any(|h| h.eq_ignore_ascii_case(&n)) {
                self.headers.push(n);
            }
        }
        self.native().check().map_err(|e| anyhow::anyhow!("dkim {e}"))?;
        Ok(self)
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        self.key.key_type()
    }

    /// The key record to publish.
    pub fn record(&self) -> String {
        self.key.record()
    }

    fn native(&self) -> canon::Identity {
        canon::Identity {
            domain: self.domain.clone(),
            selector: self.selector.clone(),
            algorithm: match self.key.key_type() {
                KeyType::Ed25519 => canon::Algorithm::Ed25519Sha256,
                KeyType::Rsa => canon::Algorithm::RsaSha256,
            },
            header_canon: self.canonicalization.header,
            body_canon: self.canonicalization.body,
            extra_headers: self.headers.clone(),
            expire_secs: self.expire_secs,
        }
    }

    /// What the mailer is told (`signer.signing-identity`): everything but the key.
    pub fn identity(&self) -> Identity {
        Identity {
            domain: self.domain.clone(),
            selector: self.selector.clone(),
            algorithm: match self.key.key_type() {
                KeyType::Ed25519 => WitAlgorithm::Ed25519Sha256,
                KeyType::Rsa => WitAlgorithm::RsaSha256,
            },
            header_canonicalization: wit_canon(self.canonicalization.header),
            body_canonicalization: wit_canon(self.canonicalization.body),
            headers: self.headers.clone(),
            expire_secs: self.expire_secs,
        }
    }

    /// Whether mail from `domain` may be signed by this identity.
    pub fn covers(&self, domain: &str) -> bool {
        canon::covers(&self.domain, domain)
    }

    /// `signer.sign`: the signature over `data`, once `data` is shown to be
    /// a DKIM header block for this identity ([`check_data`]).
    pub fn sign(&self, domain: &str, selector: &str, data: &[u8]) -> Result<Vec<u8>, String> {
        if !domain.eq_ignore_ascii_case(&self.domain) || selector != self.selector {
            return Err(format!("this mailer signs as {} (selector {}) only", self.domain, self.selector));
        }
        check_data(&self.domain, &self.selector, self.key.key_type(), data)?;
        self.key.sign(data)
    }
}

/// The largest DKIM key file read: a PEM RSA-4096 key is about 3.3 KiB.
pub const MAX_KEY_FILE_BYTES: u64 = 64 << 10;

/// The longest data the host signs: every signed field at most 998 octets
/// per line, a few hundred fields.
pub const MAX_SIGNED_DATA: usize = 1 << 20;

/// The domain of the one mailbox in a (canonical) From field; `None`
/// unless the field is one mailbox: a quoted display name may hold
/// anything, but outside it no list (`,`), group (`;`), comment (`(`) or
/// second angle address, which a reader could take for the author instead.
fn from_domain(field: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(field).ok()?;
    let value = text.split_once(':')?.1;
    let mut bare = String::with_capacity(value.len());
    let mut quoted = false;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                chars.next();
            }
            '"' => quoted = !quoted,
            c if !quoted => bare.push(c),
            _ => {}
        }
    }
    if quoted || bare.contains([',', ';', '(', ')']) {
        return None;
    }
    let addr = match (bare.matches('<').count(), bare.matches('>').count()) {
        (0, 0) => bare.as_str(),
        (1, 1) => {
            let (_, rest) = bare.split_once('<')?;
            let (addr, after) = rest.split_once('>')?;
            if !after.trim().is_empty() {
                return None;
            }
            addr
        }
        _ => return None,
    };
    let addr: String = addr.chars().filter(|c| !c.is_whitespace()).collect();
    let (local, domain) = addr.split_once('@')?;
    (!local.is_empty() && !domain.is_empty() && !domain.contains('@')).then(|| domain.to_owned())
}

/// What the host checks before signing for the mailer: `data` is what RFC
/// 6376 3.7 signs, for this identity. Its last field is the DKIM-Signature
/// itself (`v=1`, this `a=`, `d=` and `s=`, no `l=`, `b=` last and empty),
/// its `h=` names From more often than the data has From fields (so none
/// can be added after), and the one From field among the signed ones is one
/// mailbox in `domain` or a subdomain. So even a mailer that misbehaves can
/// only get signatures over DKIM header blocks with a From of this domain.
pub fn check_data(domain: &str, selector: &str, key_type: KeyType, data: &[u8]) -> Result<(), String> {
    if data.len() > MAX_SIGNED_DATA {
        return Err(format!("{} octets to sign, more than {MAX_SIGNED_DATA}", data.len()));
    }
    let fields = canon::header_fields(data);
    let Some((sig, signed)) = fields.split_last() else {
        return Err("nothing to sign".into());
    };
    if sig.ends_with(b"\n") || !canon::field_name(sig).eq_ignore_ascii_case(b"dkim-signature") {
        return Err("the data does not end with a DKIM-Signature field without its CRLF".into());
    }
    let value = std::str::from_utf8(&sig[canon::field_name(sig).len()..])
        .map_err(|_| "the DKIM-Signature field is not ASCII".to_owned())?;
    let value: String = value.trim_start_matches(|c: char| c != ':').chars().skip(1).filter(|c| !c.is_whitespace()).collect();
    let tags: Vec<(&str, &str)> = value.split(';').filter(|t| !t.is_empty()).filter_map(|t| t.split_once('=')).collect();
    let tag = |name: &str| tags.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let want = |name: &str, ok: bool| if ok { Ok(()) } else { Err(format!("DKIM-Signature: {name}= is not this signer's")) };
    want("v", tag("v") == Some("1"))?;
    want("a", tag("a") == Some(key_type.algorithm()))?;
    want("d", tag("d").is_some_and(|d| d.eq_ignore_ascii_case(domain)))?;
    want("s", tag("s") == Some(selector))?;
    if tag("l").is_some() {
        return Err("DKIM-Signature: l= is not allowed (the whole body is signed)".into());
    }
    if tags.last() != Some(&("b", "")) {
        return Err("DKIM-Signature: b= must be the last tag, and empty".into());
    }
    let h = tag("h").unwrap_or_default();
    let listed = h.split(':').filter(|n| n.eq_ignore_ascii_case("from")).count();
    if listed == 0 {
        return Err("DKIM-Signature: h= does not sign From".into());
    }
    let froms: Vec<&&[u8]> = signed.iter().filter(|f| canon::field_name(f).eq_ignore_ascii_case(b"from")).collect();
    let [from] = froms.as_slice() else {
        return Err(format!("{} From fields signed, not one", froms.len()));
    };
    if listed <= froms.len() {
        return Err("DKIM-Signature: h= must list From once more than it occurs, so that none can be added".into());
    }
    match from_domain(from) {
        Some(d) if canon::covers(domain, &d) => Ok(()),
        Some(d) => Err(format!("From is in {d}, which {domain} does not cover")),
        None => Err("the From field is not one mailbox with an address".into()),
    }
}

#[cfg(test)]
mod tests;
