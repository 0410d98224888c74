//! Keys and signing: RFC 8463 A's Ed25519 signature reproduced byte for
//! byte (Ed25519 is deterministic), RSA signatures checked with ring's
//! verifier, PEM files and their modes, and the data the host refuses.

use super::*;
use std::os::unix::fs::PermissionsExt;

/// RFC 8032 7.1 TEST 1, the key of RFC 8463 A.2, as PKCS#8 v1.
const RFC8463_SEED: [u8; 32] = [
    0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c, 0xc4, 0x44, 0x49, 0xc5,
    0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae, 0x7f, 0x60,
];

fn rfc8463_key() -> SigningKey {
    let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    der.extend_from_slice(&RFC8463_SEED);
    SigningKey::from_pkcs8(&der).unwrap()
}

/// RFC 8463 A.3: what its Ed25519 signature signs (relaxed header fields
/// in h= order, then the DKIM-Signature field with b= empty).
const RFC8463_DATA: &[u8] = b"from:Joe SixPack <joe@football.example.com>\r\n\
to:Suzie Q <suzie@shopping.example.net>\r\n\
subject:Is dinner ready?\r\n\
date:Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n\
message-id:<20030712040037.46341.5F8J@football.example.com>\r\n\
dkim-signature:v=1; a=ed25519-sha256; c=relaxed/relaxed; d=football.example.com; i=@football.example.com; \
q=dns/txt; s=brisbane; t=1528637909; h=from : to : subject : date : message-id : from : subject : date; \
bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=; b=";

const RFC8463_B: &str = "/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11BusFa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==";

#[test]
fn rfc8463_ed25519_signature_and_record() {
    let key = rfc8463_key();
    assert_eq!(key.key_type(), KeyType::Ed25519);
    assert_eq!(key.record(), "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=");
    assert_eq!(B64.encode(key.sign(RFC8463_DATA).unwrap()), RFC8463_B);
    // Through the identity, which checks the data first.
    let s = Signing::new("football.example.com", "brisbane", key).unwrap();
    assert_eq!(B64.encode(s.sign("football.example.com", "brisbane", RFC8463_DATA).unwrap()), RFC8463_B);
    assert!(s.sign("football.example.com", "other", RFC8463_DATA).is_err());
    assert!(s.sign("example.net", "brisbane", RFC8463_DATA).is_err());
    assert!(!format!("{s:?}").contains("9d61"), "{s:?}");
}

fn data(sig_tags: &str, from: &str) -> Vec<u8> {
    format!("from:{from}\r\nsubject:x\r\ndkim-signature:v=1; a=ed25519-sha256; c=relaxed/relaxed; d=example.com; s=s1; t=1; {sig_tags}")
        .into_bytes()
}

#[test]
fn the_host_signs_only_dkim_header_blocks_for_its_own_domain() {
    let ok = |d: &[u8]| check_data("example.com", "s1", KeyType::Ed25519, d);
    assert_eq!(ok(&data("h=from:from:subject; bh=AAAA; b=", "A <a@example.com>")), Ok(()));
    assert_eq!(ok(&data("h=from:from:subject; bh=AAAA; b=", "a@mail.Example.COM")), Ok(()));
    assert_eq!(ok(&data("h=from:from; bh=AAAA; b=", "\"Smith, Jo (x@evil.example)\" <a@example.com>")), Ok(()));
    assert_eq!(ok(&data("h=from:from; bh=AAAA; b=", "\"x@example.com\" <a@evil.example>")).unwrap_err(), "From is in evil.example, which example.com does not cover");
    assert!(ok(&data("h=from:from; bh=AAAA; b=", "a@notexample.com")).is_err());
    assert!(ok(&data("h=from:from; bh=AAAA; b=AAAA", "a@example.com")).unwrap_err().contains("b= must be"));
    assert!(ok(&data("h=from:from; bh=AAAA; l=10; b=", "a@example.com")).unwrap_err().contains("l="));
    // One From not oversigned: a second one could be added above it.
    assert!(ok(&data("h=from:subject; bh=AAAA; b=", "a@example.com")).unwrap_err().contains("once more"));
    // A list, a comment or a second angle address could name another author.
    for from in [
        "a@evil.example, b@example.com",
        "<ceo@evil.example> (<x@example.com>)",
        "<ceo@evil.example> <x@example.com>",
        "group: a@example.com;",
        "\"unterminated <a@example.com>",
        "a@evil.example@example.com",
    ] {
        assert!(ok(&data("h=from:from; bh=AAAA; b=", from)).unwrap_err().contains("not one mailbox"), "{from}");
    }
    assert!(ok(&data("h=subject; bh=AAAA; b=", "a@example.com")).unwrap_err().contains("From"));
    assert!(ok(&[data("h=from; bh=AAAA; b=", "a@example.com"), b"\r\n".to_vec()].concat()).is_err());
    assert!(ok(b"anything at all").is_err());
    assert!(ok(b"").is_err());
    let two = format!("from:a@example.com\r\n{}", String::from_utf8(data("h=from:from; bh=A; b=", "b@example.com")).unwrap());
    assert!(ok(two.as_bytes()).unwrap_err().contains("2 From"));
    // Another algorithm, domain or selector than the key's.
    assert!(check_data("example.com", "s1", KeyType::Rsa, &data("h=from; bh=A; b=", "a@example.com")).is_err());
    assert!(check_data("example.org", "s1", KeyType::Ed25519, &data("h=from; bh=A; b=", "a@example.org")).is_err());
    assert!(check_data("example.com", "s2", KeyType::Ed25519, &data("h=from; bh=A; b=", "a@example.com")).is_err());
    // Simple canonicalization: names keep their case, fields their folding.
    let simple = b"From: A\r\n <a@example.com>\r\nDKIM-Signature: v=1; a=ed25519-sha256; d=example.com;\r\n s=s1; h=From:From; bh=A;\r\n b=";
    assert_eq!(ok(simple), Ok(()));
}

#[test]
fn rsa_keys_sign_and_verify_and_publish_their_spki() {
    let der = generate(KeyType::Rsa).unwrap();
    let key = SigningKey::from_pkcs8(&der).unwrap();
    assert_eq!(key.key_type(), KeyType::Rsa);
    let sig = key.sign(b"data").unwrap();
    assert_eq!(sig.len(), 256);
    let record = key.record();
    let p = record.strip_prefix("v=DKIM1; k=rsa; p=").unwrap();
    let spki = B64.decode(p).unwrap();
    // The SPKI wraps the RSAPublicKey that ring verifies with.
    let Pair::Rsa(pair) = &key.0 else { unreachable!() };
    let public = pair.public_key().as_ref();
    assert!(spki.ends_with(public));
    assert!(spki.starts_with(&[0x30, 0x82]));
    let verifier = ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, public);
    assert!(verifier.verify(b"data", &sig).is_ok());
    assert!(verifier.verify(b"dato", &sig).is_err());
}

#[test]
fn ed25519_keys_verify() {
    let der = generate(KeyType::Ed25519).unwrap();
    let key = SigningKey::from_pkcs8(&der).unwrap();
    let p = key.record().strip_prefix("v=DKIM1; k=ed25519; p=").unwrap().to_owned();
    let public = B64.decode(p).unwrap();
    use sha2::Digest;
    let verifier = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public);
    assert!(verifier.verify(&sha2::Sha256::digest(b"data"), &key.sign(b"data").unwrap()).is_ok());
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wasmail-dkim-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

use std::path::PathBuf;

#[test]
fn key_files_are_private_and_never_overwritten() {
    let dir = temp("files");
    let path = dir.join("s1.private");
    let der = generate(KeyType::Ed25519).unwrap();
    write_new_key(&path, &pem_encode(&der)).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(write_new_key(&path, "x").is_err(), "an existing key is never overwritten");
    let key = SigningKey::load(&path).unwrap();
    assert_eq!(key.record(), SigningKey::from_pkcs8(&der).unwrap().record());
    for mode in [0o644, 0o640, 0o604, 0o620] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = format!("{:#}", SigningKey::load(&path).unwrap_err());
        assert!(e.contains("other users can read or write it") && e.contains("chmod 600"), "{e}");
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(SigningKey::load(&path).is_ok());
    assert!(format!("{:#}", SigningKey::load(&dir).unwrap_err()).contains("not a regular file"));
    // A link to the key is not followed (what is checked is what is read),
    // and a FIFO in its place is refused without waiting for a writer.
    let link = dir.join("link.private");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    assert!(format!("{:#}", SigningKey::load(&link).unwrap_err()).contains("symbolic link"));
    let fifo = dir.join("fifo.private");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert!(format!("{:#}", SigningKey::load(&fifo).unwrap_err()).contains("not a regular file"));
    // A file larger than any key is refused before it is read.
    let huge = dir.join("huge.private");
    let f = std::fs::File::create(&huge).unwrap();
    f.set_len(MAX_KEY_FILE_BYTES + 1).unwrap();
    std::fs::set_permissions(&huge, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(format!("{:#}", SigningKey::load(&huge).unwrap_err()).contains("more than a key file's"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pem_forms() {
    let der = generate(KeyType::Ed25519).unwrap();
    let pem = pem_encode(&der);
    assert!(SigningKey::from_pem(&format!("comment\n{}", &*pem)).is_ok());
    assert!(SigningKey::from_pem(&pem.replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY")).unwrap_err().to_string().contains("encrypted"));
    assert!(SigningKey::from_pem(&pem.replace("PRIVATE KEY", "PUBLIC KEY")).is_err());
    assert!(SigningKey::from_pem("no pem here").is_err());
    // PKCS#1, as older opendkim-genkey writes RSA keys.
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    let rsa_der = generate(KeyType::Rsa).unwrap();
    let k = rsa::PrivateKey::from_pkcs8_der(&rsa_der).unwrap();
    let pkcs1 = k.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).unwrap();
    let loaded = SigningKey::from_pem(&pkcs1).unwrap();
    assert_eq!(loaded.record(), SigningKey::from_pkcs8(&rsa_der).unwrap().record());
}

#[test]
fn zone_lines_split_long_values() {
    let value = format!("v=DKIM1; k=rsa; p={}", "A".repeat(392));
    let line = zone_line("example.com", "s1", &value);
    assert!(line.starts_with("s1._domainkey.example.com. IN TXT ( \""), "{line}");
    let joined: String = line.split('"').skip(1).step_by(2).collect();
    assert_eq!(joined, value);
    assert!(line.split('"').skip(1).step_by(2).all(|s| s.len() <= 255));
}

#[test]
fn canonicalization_names() {
    let c: Canonicalization = "relaxed/simple".parse().unwrap();
    assert_eq!(c.to_string(), "relaxed/simple");
    assert_eq!("relaxed".parse::<Canonicalization>().unwrap().to_string(), "relaxed/simple");
    assert_eq!(Canonicalization::default().to_string(), "relaxed/relaxed");
    assert!("strict/simple".parse::<Canonicalization>().is_err());
}
