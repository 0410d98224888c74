//! The bulk plugin: sends many messages of a chosen size, for load tests.
//!
//! Input: empty, a count (`250`), or JSON
//! `{"count": 250, "to": "sink@example.com", "size": 2048, "one_by_one": false}`;
//! every field is optional (count 100, to `bulk@example.com`, size 2048
//! octets of text body). The messages go with `send-many`, pipelined, through
//! the SDK's `send_all`; `"one_by_one": true` sends each with its own `send`
//! call instead, for comparison.


use serde::Deserialize;
use wasmail_plugin::{Mailbox, Message, describe, send, send_all};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default = "default_count")]
    count: u32,
    #[serde(default = "default_to")]
    to: String,
    #[serde(default = "default_size")]
    size: usize,
    #[serde(default)]
    one_by_one: bool,
}

impl Default for Input {
    fn default() -> Self {
        Input {
            count: default_count(),
            to: default_to(),
            size: default_size(),
            one_by_one: false,
        }
    }
}

fn default_count() -> u32 {
    100
}

fn default_to() -> String {
    "bulk@example.com".to_string()
}

fn default_size() -> usize {
    2048
}

fn parse(input: &str) -> Result<Input, String> {
    let input = input.trim();
    if input.is_empty() {
        Ok(Input::default())
    } else if input.starts_with('{') {
        serde_json::from_str(input).map_err(|e| format!("bad bulk input: {e}"))
    } else {
        let count = input.parse::<u32>().map_err(|e| {
            format!("bad bulk input {input:?}: expected a message count or a JSON object ({e})")
        })?;
        Ok(Input {
            count,
            ..Input::default()
        })
    }
}

/// A text body of exactly `size` octets: ASCII lines shorter than 78
/// characters, each ended by `\n`.
fn body(size: usize) -> String {
    let mut out = String::with_capacity(size);
    let mut n: u32 = 0;
    while out.len() < size {
        n = n.wrapping_add(1);
        let line =
            format!("{n:06} the quick brown fox jumps over the lazy dog, wasmail bulk test\n");
        let room = size - out.len();
        if line.len() <= room {
            out.push_str(&line);
        } else if room == 1 {
            out.push('\n');
        } else {
            // The last line, cut to fit and still ended by a newline.
            out.push_str(&line[..room - 1]);
            out.push('\n');
        }
    }
    out
}

struct Bulk;

impl wasmail_plugin::Guest for Bulk {
    fn run(input: String) -> Result<String, String> {
        let input = parse(&input)?;
        let text = body(input.size);
        let to = vec![Mailbox {
            name: None,
            address: input.to.clone(),
        }];
        let headers = vec![("X-Mailer".to_string(), "wasmail bulk plugin".to_string())];
        let count = input.count;
        let messages = (1..=count).map(|i| Message {
            from: None,
            reply_to: None,
            to: to.clone(),
            cc: Vec::new(),
            bcc: Vec::new(),
            subject: format!("bulk {i}/{count}"),
            text: Some(text.clone()),
            html: None,
            attachments: Vec::new(),
            priority: None,
            headers: headers.clone(),
        });
        let mut failed = None;
        let mut record = |i: usize, result: Result<_, _>| {
            if let Err(e) = result {
                failed.get_or_insert(format!("message {} failed: {}", i + 1, describe(&e)));
            }
            failed.is_none()
        };
        let handed = if input.one_by_one {
            let mut n = 0;
            for msg in messages {
                let go_on = record(n, send(&msg));
                n += 1;
                if !go_on {
                    break;
                }
            }
            n
        } else {
            send_all(messages, record)
        };
        match failed {
            None => Ok(format!("sent {count} messages")),
            Some(e) => Err(format!("handed {handed} of {count} messages to the host; {e}")),
        }
    }
}

wasmail_plugin::export!(Bulk);



#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_exact_size_and_short_ascii_lines() {
        for size in [0, 1, 2, 70, 71, 72, 2048, 100_000] {
            let b = body(size);
            assert_eq!(b.len(), size);
            assert!(b.is_ascii());
            assert!(b.is_empty() || b.ends_with('\n'));
            assert!(b.split('\n').all(|l| l.len() < 78));
        }
    }

    #[test]
    fn input_forms() {
        let d = parse("").unwrap();
        assert_eq!(
            (d.count, d.to.as_str(), d.size),
            (100, "bulk@example.com", 2048)
        );
        assert_eq!(parse(" 7 ").unwrap().count, 7);
        let j = parse(r#"{"count": 3, "to": "sink@example.com"}"#).unwrap();
        assert_eq!(
            (j.count, j.to.as_str(), j.size),
            (3, "sink@example.com", 2048)
        );
        assert!(parse("many").unwrap_err().contains("bad bulk input"));
        assert!(parse(r#"{"cuont": 3}"#).unwrap_err().contains("cuont"));
    }
}
