//! Golden vectors: RFC 6376 3.4.5 (both canonicalizations of one example),
//! the empty bodies of 3.4.3/3.4.4, and RFC 8463 Appendix A (the signed
//! data of its Ed25519 signature, byte for byte, and its body hash).

use super::*;
use base64::Engine;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn canon_fields(canon: Canonicalization, section: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in header_fields(section) {
        canonical_field(canon, f, &mut out);
    }
    out
}

/// RFC 6376 3.4.5, with <SP>, <HTAB> and <CRLF> written out.
const EXAMPLE_HEADER: &[u8] = b"A: X\r\nB : Y\t\r\n\tZ  \r\n";
const EXAMPLE_BODY: &[u8] = b" C \r\nD \t E\r\n\r\n\r\n";

#[test]
fn rfc6376_relaxed_example() {
    assert_eq!(canon_fields(Canonicalization::Relaxed, EXAMPLE_HEADER), b"a:X\r\nb:Y Z\r\n");
    let canonical_body: &[u8] = b" C\r\nD E\r\n";
    assert_eq!(body_hash(Canonicalization::Relaxed, EXAMPLE_BODY), <[u8; 32]>::from(Sha256::digest(canonical_body)));
}

#[test]
fn rfc6376_simple_example() {
    assert_eq!(canon_fields(Canonicalization::Simple, EXAMPLE_HEADER), EXAMPLE_HEADER);
    let canonical_body: &[u8] = b" C \r\nD \t E\r\n";
    assert_eq!(body_hash(Canonicalization::Simple, EXAMPLE_BODY), <[u8; 32]>::from(Sha256::digest(canonical_body)));
}

#[test]
fn empty_bodies() {
    // 3.4.3: simple makes an empty body one CRLF; 3.4.4 (errata 1384):
    // relaxed leaves it empty. The two well-known hashes.
    assert_eq!(b64(&body_hash(Canonicalization::Simple, b"")), "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY=");
    assert_eq!(b64(&body_hash(Canonicalization::Simple, b"\r\n\r\n\r\n")), "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY=");
    assert_eq!(b64(&body_hash(Canonicalization::Relaxed, b"")), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
    assert_eq!(b64(&body_hash(Canonicalization::Relaxed, b" \t\r\n\r\n")), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
}

const RFC8463_BODY: &[u8] = b"Hi.\r\n\r\nWe lost the game.  Are you hungry yet?\r\n\r\nJoe.\r\n";
const RFC8463_BH: &str = "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=";

#[test]
fn rfc8463_body_hash() {
    assert_eq!(b64(&body_hash(Canonicalization::Relaxed, RFC8463_BODY)), RFC8463_BH);
    // Trailing blank lines are not part of the body, in either form.
    let padded = [RFC8463_BODY, b"\r\n\r\n \r\n"].concat();
    assert_eq!(b64(&body_hash(Canonicalization::Relaxed, &padded)), RFC8463_BH);
    let padded = [RFC8463_BODY, b"\r\n\r\n"].concat();
    assert_eq!(body_hash(Canonicalization::Simple, &padded), body_hash(Canonicalization::Simple, RFC8463_BODY));
    // A missing final CRLF is added.
    let cut = &RFC8463_BODY[..RFC8463_BODY.len() - 2];
    assert_eq!(b64(&body_hash(Canonicalization::Relaxed, cut)), RFC8463_BH);
    assert_eq!(body_hash(Canonicalization::Simple, cut), body_hash(Canonicalization::Simple, RFC8463_BODY));
}

/// RFC 8463 A.3: the header of the signed message, its first signature with
/// the `b=` value removed.
const RFC8463_HEADER: &[u8] = b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n \
d=football.example.com; i=@football.example.com;\r\n \
q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n \
subject : date : message-id : from : subject : date;\r\n \
bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n \
b=\r\n\
From: Joe SixPack <joe@football.example.com>\r\n\
To: Suzie Q <suzie@shopping.example.net>\r\n\
Subject: Is dinner ready?\r\n\
Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n\
Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n";

/// What its Ed25519 signature signs (the host side checks the signature).
pub const RFC8463_SIGNED_DATA: &[u8] = b"from:Joe SixPack <joe@football.example.com>\r\n\
to:Suzie Q <suzie@shopping.example.net>\r\n\
subject:Is dinner ready?\r\n\
date:Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n\
message-id:<20030712040037.46341.5F8J@football.example.com>\r\n\
dkim-signature:v=1; a=ed25519-sha256; c=relaxed/relaxed; d=football.example.com; i=@football.example.com; \
q=dns/txt; s=brisbane; t=1528637909; h=from : to : subject : date : message-id : from : subject : date; \
bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=; b=";

#[test]
fn rfc8463_signed_data() {
    let fields = header_fields(RFC8463_HEADER);
    assert_eq!(fields.len(), 6);
    let h = ["from", "to", "subject", "date", "message-id", "from", "subject", "date"];
    let mut used = [false; 6];
    let mut data = Vec::new();
    for name in h {
        if let Some(i) = (0..6).rev().find(|&i| !used[i] && field_name(fields[i]).eq_ignore_ascii_case(name.as_bytes())) {
            used[i] = true;
            canonical_field(Canonicalization::Relaxed, fields[i], &mut data);
        }
    }
    canonical_field(Canonicalization::Relaxed, fields[0], &mut data);
    data.truncate(data.len() - 2);
    assert_eq!(String::from_utf8_lossy(&data), String::from_utf8_lossy(RFC8463_SIGNED_DATA));
}

/// Every split of a body into two chunks hashes as the whole.
#[test]
fn chunking_does_not_matter() {
    let body: &[u8] = b"a \t b \r\n\r\n  \r\nc\r\rd\r\n\r\n \r\n";
    for canon in [Canonicalization::Simple, Canonicalization::Relaxed] {
        let whole = body_hash(canon, body);
        for i in 0..=body.len() {
            for j in i..=body.len() {
                let mut h = BodyHasher::new(canon);
                h.update(&body[..i]);
                h.update(&body[i..j]);
                h.update(&body[j..]);
                assert_eq!(h.finish(), whole, "{canon:?} split at {i}, {j}");
            }
        }
    }
}

#[test]
fn relaxed_body_rules() {
    let canonical = |body: &[u8]| {
        let mut h = BodyHasher::new(Canonicalization::Relaxed);
        h.update(body);
        h.finish()
    };
    let same = |a: &[u8], b: &[u8]| assert_eq!(canonical(a), <[u8; 32]>::from(Sha256::digest(b)), "{a:?}");
    same(b"  x  y \t\r\n", b" x y\r\n");
    same(b"x\r\n \r\n\t\r\ny", b"x\r\n\r\n\r\ny\r\n");
    same(b"x\ry\r\n", b"x\ry\r\n");
}

fn identity(canon: Canonicalization) -> Identity {
    Identity {
        domain: "example.com".into(),
        selector: "sel".into(),
        algorithm: Algorithm::Ed25519Sha256,
        header_canon: canon,
        body_canon: canon,
        extra_headers: vec!["X-Mailer".into(), "List-Unsubscribe".into()],
        expire_secs: Some(3600),
    }
}

const HEADER: &[u8] = b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\
From: A <a@mail.example.com>\r\n\
To: b@example.org,\r\n c@example.org\r\n\
Subject: =?utf-8?q?caf=C3=A9?=\r\n\
Message-ID: <1.2@mail.example.com>\r\n\
X-Mailer: m 1\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 7bit\r\n";

#[test]
fn signature_field_and_data() {
    for canon in [Canonicalization::Simple, Canonicalization::Relaxed] {
        let bh = [7u8; 32];
        let u = unsigned(&identity(canon), HEADER, &bh, 1_767_225_600);
        assert!(u.field.starts_with("DKIM-Signature: v=1; a=ed25519-sha256;"), "{}", u.field);
        assert!(u.field.ends_with(";\r\n b="), "{}", u.field);
        assert!(u.field.contains(" t=1767225600; x=1767229200;"), "{}", u.field);
        assert!(!u.field.contains("l="), "no body length limit");
        let bare: String = u.field.split_whitespace().collect();
        assert!(
            bare.contains(
                "h=from:from:reply-to:to:to:cc:subject:subject:date:date:message-id:message-id:x-priority:\
                 mime-version:mime-version:content-type:content-type:x-mailer:x-mailer:list-unsubscribe;"
            ),
            "{bare}"
        );
        for line in u.field.split("\r\n") {
            assert!(line.len() <= 78, "{line:?}");
        }
        // The data: the signed fields from the bottom up, then the field.
        let mut want = Vec::new();
        for f in header_fields(HEADER) {
            let name = String::from_utf8_lossy(field_name(f)).to_ascii_lowercase();
            if name != "content-transfer-encoding" {
                canonical_field(canon, f, &mut want);
            }
        }
        let text = String::from_utf8_lossy(&u.data).into_owned();
        // The order is h='s, so compare as sets of lines plus the tail.
        for f in header_fields(HEADER) {
            let mut one = Vec::new();
            canonical_field(canon, f, &mut one);
            let one = String::from_utf8_lossy(&one).into_owned();
            assert_eq!(text.contains(&one), !one.to_ascii_lowercase().starts_with("content-transfer"), "{one}");
        }
        let tail = match canon {
            Canonicalization::Simple => u.field.clone(),
            Canonicalization::Relaxed => {
                let mut v = Vec::new();
                canonical_field(canon, u.field.as_bytes(), &mut v);
                String::from_utf8_lossy(&v[..v.len() - 2]).into_owned()
            }
        };
        assert!(text.ends_with(&tail), "{text}");
        assert_eq!(text.len(), want.len() + tail.len());
        assert!(text.starts_with(if canon == Canonicalization::Simple { "From: A" } else { "from:A" }), "{text}");
    }
}

#[test]
fn signed_field_folds_b() {
    let u = unsigned(&identity(Canonicalization::Relaxed), HEADER, &[0; 32], 1);
    let f = u.signed(&[0xAB; 256]);
    assert!(f.ends_with("\r\n"));
    assert!(f.starts_with(&u.field));
    for line in f.trim_end().split("\r\n") {
        assert!(line.len() <= 78, "{line:?}");
    }
    let b: String = f[u.field.len()..].split_whitespace().collect();
    assert_eq!(b, b64(&[0xAB; 256]));
}

#[test]
fn covers_subdomains_only() {
    assert!(covers("example.com", "example.com"));
    assert!(covers("example.com", "Mail.EXAMPLE.com"));
    assert!(!covers("example.com", "badexample.com"));
    assert!(!covers("example.com", "example.com.evil"));
    assert!(!covers("mail.example.com", "example.com"));
    assert!(!covers("example.com", "[127.0.0.1]"));
    assert!(!covers("example.com", "bücher.example.com"));
}

#[test]
fn identity_checks() {
    let mut id = identity(Canonicalization::Relaxed);
    assert!(id.check().is_ok());
    id.domain = "exa mple.com".into();
    assert!(id.check().unwrap_err().starts_with("domain"));
    id.domain = "example.com".into();
    id.selector = "a;b".into();
    assert!(id.check().unwrap_err().starts_with("selector"));
    id.selector = "2026._x".into();
    assert!(id.check().is_ok());
    id.extra_headers.push("DKIM-Signature".into());
    assert!(id.check().unwrap_err().starts_with("headers[2]"));
}
