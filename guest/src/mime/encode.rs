//! Content and header encoders: base64 bodies (RFC 2045 6.8), quoted-printable
//! (RFC 2045 6.7), encoded words (RFC 2047) and parameter values (RFC 2231).
//!
//! Every encoder here produces pure ASCII with CRLF line ends, lines no longer
//! than the RFC's limits, and never a bare CR or LF.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Base64 body lines are 76 characters (RFC 2045 6.8).
pub const BASE64_LINE: usize = 76;
/// Quoted-printable lines are at most 76 characters (RFC 2045 6.7 rule 5).
pub const QP_LINE: usize = 76;
/// An encoded word is at most 75 characters (RFC 2047 2).
pub const ENCODED_WORD_MAX: usize = 75;
/// The longest line of a header field that holds an encoded word
/// (RFC 2047 2).
pub const ENCODED_WORD_LINE: usize = 76;
/// The shortest encoded word [`encoded_words`] writes: `=?utf-8?B?` and
/// `?=` around four base64 characters.
pub const MIN_ENCODED_WORD: usize = 16;
/// Header lines are folded before 78 characters (RFC 5322 2.1.1).
pub const HEADER_FOLD: usize = 78;
/// Raw bytes per base64 line: 57 bytes encode to 76 characters.
pub const BASE64_LINE_BYTES: usize = BASE64_LINE / 4 * 3;

/// The exact size of `n` bytes as base64 in 76-column lines, each ending in CRLF.
pub fn base64_encoded_len(n: u64) -> u64 {
    let chars = n.div_ceil(3) * 4;
    let lines = chars.div_ceil(BASE64_LINE as u64);
    chars + lines * 2
}

/// Append `data` as base64 in 76-column CRLF lines. `data` should be a whole
/// number of 57-byte lines except for the final call, so that streamed chunks
/// join into the same text as one call over the whole input.
///
/// The encoding itself is base64-simd (wasm SIMD in the component); the
/// result is then cut into lines. The output can never contain a `.` at a
/// line start, a bare CR or a bare LF (see [`crate::smtp::dot`]).
pub fn base64_lines(data: &[u8], out: &mut Vec<u8>) {
    let encoded_len = base64_simd::STANDARD.encoded_length(data.len());
    let start = out.len();
    // Encode at the end of `out`, make room for the line ends (any bytes
    // will do: each is overwritten; copying some costs no zero-filling),
    // then spread the lines out from the back so each byte moves once.
    let lines = encoded_len.div_ceil(BASE64_LINE);
    base64_simd::STANDARD.encode_append(data, out);
    debug_assert_eq!(out.len(), start + encoded_len);
    // 2 * lines <= encoded_len whenever there is a line (4 characters or more).
    out.extend_from_within(start..start + 2 * lines);
    let mut src_end = start + encoded_len;
    let mut dst_end = out.len();
    for line in (0..lines).rev() {
        let len = if line + 1 == lines { encoded_len - line * BASE64_LINE } else { BASE64_LINE };
        out[dst_end - 2..dst_end].copy_from_slice(b"\r\n");
        out.copy_within(src_end - len..src_end, dst_end - 2 - len);
        src_end -= len;
        dst_end -= len + 2;
    }
}

/// Append `text` to `out` as 7bit content with CRLF line ends, if it can
/// go as 7bit: ASCII, no NUL, lines within `max_line` octets. Returns false
/// (and leaves `out` as it was) otherwise. One pass, SIMD-assisted.
pub fn seven_bit_text(text: &str, max_line: usize, out: &mut Vec<u8>) -> bool {
    let b = text.as_bytes();
    if !b.is_ascii() || memchr::memchr(0, b).is_some() {
        return false;
    }
    let start = out.len();
    if push_crlf_lines(b, Some(max_line), out) {
        true
    } else {
        out.truncate(start);
        false
    }
}

/// Append `b` to `out` with every CRLF, lone LF and lone CR as one CRLF.
/// With `max_line`, stop and return false at a longer line.
fn push_crlf_lines(b: &[u8], max_line: Option<usize>, out: &mut Vec<u8>) -> bool {
    out.reserve(b.len() + b.len() / 32 + 2);
    let mut i = 0;
    while i < b.len() {
        let run = memchr::memchr2(b'\r', b'\n', &b[i..]).unwrap_or(b.len() - i);
        if max_line.is_some_and(|max| run > max) {
            return false;
        }
        out.extend_from_slice(&b[i..i + run]);
        i += run;
        if i < b.len() {
            if b[i] == b'\r' && b.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
            out.extend_from_slice(b"\r\n");
            i += 1;
        }
    }
    true
}

/// Normalise line ends in builder-generated text to CRLF: CRLF, lone LF and
/// lone CR each become one CRLF.
pub fn crlf_lines(text: &str) -> String {
    let mut out = Vec::new();
    push_crlf_lines(text.as_bytes(), None, &mut out);
    // Only ASCII CR and LF were inserted or removed: still UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// Quoted-printable encode text (line ends become hard CRLF line breaks).
pub fn quoted_printable(text: &str, out: &mut Vec<u8>) {
    let text = crlf_lines(text);
    let mut lines = text.split("\r\n").peekable();
    while let Some(line) = lines.next() {
        let bytes = line.as_bytes();
        let mut col = 0usize;
        for (i, &b) in bytes.iter().enumerate() {
            let last = i + 1 == bytes.len();
            let literal = (b == b' ' || b == b'\t') && !last || (33..=126).contains(&b) && b != b'=';
            let width = if literal { 1 } else { 3 };
            // Leave room for the soft break "=".
            if col + width > QP_LINE - 1 {
                out.extend_from_slice(b"=\r\n");
                col = 0;
            }
            if literal {
                out.push(b);
            } else {
                out.extend_from_slice(format!("={b:02X}").as_bytes());
            }
            col += width;
        }
        if lines.peek().is_some() {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// RFC 2047 `B` encoded words for `text`, each at most 75 characters, never
/// splitting a UTF-8 character. `first_room` is the space left on the first
/// line. Words are joined with CRLF SP (a fold).
pub fn encoded_words(text: &str, first_room: usize) -> String {
    const PREFIX: &str = "=?utf-8?B?";
    const SUFFIX: &str = "?=";
    let overhead = PREFIX.len() + SUFFIX.len();
    let mut words = Vec::new();
    let mut rest = text;
    let mut room = first_room.clamp(MIN_ENCODED_WORD, ENCODED_WORD_MAX);
    while !rest.is_empty() {
        let max_raw = (room - overhead) / 4 * 3;
        let mut end = 0;
        for (i, c) in rest.char_indices() {
            if i + c.len_utf8() > max_raw {
                break;
            }
            end = i + c.len_utf8();
        }
        if end == 0 {
            // One character wider than the room: it still fits in a fresh word.
            end = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        let (head, tail) = rest.split_at(end);
        words.push(format!("{PREFIX}{}{SUFFIX}", STANDARD.encode(head)));
        rest = tail;
        room = ENCODED_WORD_MAX.min(ENCODED_WORD_LINE - 1);
    }
    words.join("\r\n ")
}

/// True when `s` is a MIME token (RFC 2045 5.1), so it can be a bare
/// parameter value.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b))
}

/// One MIME parameter, `; name=value`, as folded header text. Plain ASCII
/// that is a token or a simple quoted string is written as is; anything else
/// (non-ASCII, quotes, backslashes, `;`, long values) uses RFC 2231
/// extended notation with continuations, so it is always exactly one
/// parameter to any parser.
pub fn mime_parameter(name: &str, value: &str) -> String {
    const CHUNK: usize = 48;
    let simple_quoted = value.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' && b != b';')
        && value.len() + name.len() < 60;
    if is_token(value) && value.len() + name.len() < 60 {
        return format!(";\r\n {name}={value}");
    }
    if simple_quoted {
        return format!(";\r\n {name}=\"{value}\"");
    }
    // RFC 2231 percent-encoding of every byte that is not attribute-char.
    // A character's bytes stay in one section: some parsers (mail-parser
    // among them) decode each section on its own.
    let mut encoded = Vec::new();
    let mut cur = String::new();
    for c in value.chars() {
        let mut buf = [0; 4];
        let piece: String = c
            .encode_utf8(&mut buf)
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        if !cur.is_empty() && cur.len() + piece.len() > CHUNK {
            encoded.push(std::mem::take(&mut cur));
        }
        cur.push_str(&piece);
    }
    encoded.push(cur);
    if encoded.len() == 1 {
        return format!(";\r\n {name}*=utf-8''{}", encoded[0]);
    }
    let mut out = String::new();
    for (i, part) in encoded.iter().enumerate() {
        let charset = if i == 0 { "utf-8''" } else { "" };
        out.push_str(&format!(";\r\n {name}*{i}*={charset}{part}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_wraps_at_76() {
        let data: Vec<u8> = (0..=255u8).cycle().take(200).collect();
        let mut out = Vec::new();
        base64_lines(&data, &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        let lines: Vec<&str> = text.split_terminator("\r\n").collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0].len(), 76);
        assert_eq!(lines[1].len(), 76);
        assert_eq!(out.len() as u64, base64_encoded_len(200));
        assert_eq!(base64_encoded_len(0), 0);
        assert_eq!(base64_encoded_len(57), 78);
        assert_eq!(base64_encoded_len(58), 78 + 4 + 2);
        let joined: String = lines.concat();
        assert_eq!(STANDARD.decode(joined).unwrap(), data);
    }

    #[test]
    fn qp_golden() {
        let mut out = Vec::new();
        quoted_printable("caf\u{e9} = 1 \nend ", &mut out);
        assert_eq!(out, b"caf=C3=A9 =3D 1=20\r\nend=20");
        let mut out = Vec::new();
        let long = "x".repeat(100);
        quoted_printable(&long, &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines[0].len(), 76);
        assert!(lines[0].ends_with('='));
        assert_eq!(lines.len(), 2);
    }

    #[test]
    fn crlf_normalisation() {
        assert_eq!(crlf_lines("a\nb\rc\r\nd\n\re"), "a\r\nb\r\nc\r\nd\r\n\r\ne");
        assert_eq!(crlf_lines("ü\n"), "ü\r\n");
    }

    #[test]
    fn seven_bit() {
        let mut out = b"x".to_vec();
        assert!(seven_bit_text("ab\r\ncd\nef\rg", 2, &mut out));
        assert_eq!(out, b"xab\r\ncd\r\nef\r\ng");
        let mut out = b"x".to_vec();
        assert!(!seven_bit_text("abc", 2, &mut out));
        assert!(!seven_bit_text("a\0b", 10, &mut out));
        assert!(!seven_bit_text("é", 10, &mut out));
        assert_eq!(out, b"x", "a refusal leaves the output alone");
    }

    #[test]
    fn encoded_words_split_on_chars() {
        let text = "Grüße aus Köln – ünïcödé ".repeat(5);
        let enc = encoded_words(&text, 60);
        for (i, line) in enc.split("\r\n ").enumerate() {
            assert!(line.len() <= ENCODED_WORD_MAX, "{i}: {line}");
            assert!(line.starts_with("=?utf-8?B?") && line.ends_with("?="));
            let b64 = &line[10..line.len() - 2];
            let raw = STANDARD.decode(b64).unwrap();
            assert!(String::from_utf8(raw).is_ok(), "word {i} split a character");
        }
    }

    fn percent_decode(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let mut bytes = s.bytes();
        while let Some(b) = bytes.next() {
            if b == b'%' {
                let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).unwrap(), 16).unwrap());
            } else {
                out.push(b);
            }
        }
        out
    }

    #[test]
    fn parameters() {
        assert_eq!(mime_parameter("filename", "report.pdf"), ";\r\n filename=report.pdf");
        assert_eq!(mime_parameter("filename", "my report.pdf"), ";\r\n filename=\"my report.pdf\"");
        assert_eq!(
            mime_parameter("filename", "a.pdf\"; name=\"b.exe"),
            ";\r\n filename*=utf-8''a.pdf%22%3B%20name%3D%22b.exe"
        );
        assert_eq!(mime_parameter("filename", "résumé.txt"), ";\r\n filename*=utf-8''r%C3%A9sum%C3%A9.txt");
        let long = mime_parameter("filename", &"ü".repeat(40));
        assert!(long.contains("filename*0*=utf-8''%C3%BC"));
        assert!(long.contains("filename*1*=%C3%BC"));
        assert!(long.split("\r\n").all(|l| l.len() < 78));
        // No section splits a character (mail-parser decodes each on its
        // own): "aǝʝ" is 13 encoded bytes, so 48-byte sections would cut one.
        let mixed = mime_parameter("filename", &"aǝʝ".repeat(30));
        for section in mixed.split("\r\n").skip(1) {
            let value = section.split_once('=').unwrap().1.trim_start_matches("utf-8''").trim_end_matches(';');
            assert!(std::str::from_utf8(&percent_decode(value)).is_ok(), "{section}");
        }
    }
}
