//! The last look at serialised message bytes before they leave the builder
//! (RFC 5322 2.1.1, 2.2, 3.5): line lengths, line ends, NUL and the shape of
//! the header section.

/// The longest line, excluding its CRLF (RFC 5322 2.1.1).
pub const MAX_LINE: usize = 998;

/// Check `bytes`: CRLF-only line ends, no NUL, no line over [`MAX_LINE`]
/// octets. With `headers`, `bytes` begins with a header section, whose lines
/// must each be `name:` or a continuation starting with SP or HTAB.
pub fn check_lines(bytes: &[u8], headers: bool) -> Result<(), String> {
    let mut in_headers = headers;
    let mut line_start = 0;
    let mut line_no = 1;
    // Jump from special byte to special byte (SIMD memchr); everything in
    // between is plain line content.
    let mut pos = 0;
    while let Some(off) = memchr::memchr3(b'\r', b'\n', 0, &bytes[pos..]) {
        let i = pos + off;
        match bytes[i] {
            0 => return Err(format!("line {line_no}: NUL byte")),
            b'\n' => return Err(format!("line {line_no}: bare LF")),
            _ if bytes.get(i + 1) != Some(&b'\n') => return Err(format!("line {line_no}: bare CR")),
            _ => {}
        }
        check_line(&bytes[line_start..i], line_no, &mut in_headers)?;
        pos = i + 2;
        line_start = pos;
        line_no += 1;
    }
    if line_start < bytes.len() {
        check_line(&bytes[line_start..], line_no, &mut in_headers)?;
    }
    Ok(())
}

fn check_line(line: &[u8], line_no: usize, in_headers: &mut bool) -> Result<(), String> {
    if line.len() > MAX_LINE {
        return Err(format!("line {line_no}: {} octets, the limit is {MAX_LINE}", line.len()));
    }
    if *in_headers {
        if line.is_empty() {
            *in_headers = false;
        } else if line[0] == b' ' || line[0] == b'\t' {
            if line_no == 1 {
                return Err("line 1: continuation line with no header field".into());
            }
        } else {
            let colon = line.iter().position(|&b| b == b':');
            let ok = colon.is_some_and(|c| c > 0 && line[..c].iter().all(|b| (33..=126).contains(b)));
            if !ok {
                return Err(format!("line {line_no}: header line is not `name: value`"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_good_messages() {
        assert!(check_lines(b"Subject: x\r\n folded\r\n\r\nbody\r\n", true).is_ok());
        let long = format!("A: b\r\n\r\n{}\r\n", "x".repeat(998));
        assert!(check_lines(long.as_bytes(), true).is_ok());
    }

    #[test]
    fn refuses_bad_lines() {
        assert!(check_lines(b"A: b\r\n\r\nx\ny\r\n", true).unwrap_err().contains("bare LF"));
        assert!(check_lines(b"A: b\r\n\r\nx\ry\r\n", true).unwrap_err().contains("bare CR"));
        assert!(check_lines(b"A: b\r\n\r\nx\0y\r\n", true).unwrap_err().contains("NUL"));
        let long = format!("A: b\r\n\r\n{}\r\n", "x".repeat(999));
        assert!(check_lines(long.as_bytes(), true).unwrap_err().contains("999 octets"));
        assert!(check_lines(b"A: b\r\nnot a header\r\n\r\n", true).unwrap_err().contains("line 2"));
        assert!(check_lines(b" cont\r\n\r\n", true).is_err());
        assert!(check_lines(b"A: b\r\n: x\r\n\r\n", true).is_err());
    }
}
