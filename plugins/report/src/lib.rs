//! The report plugin: mails a table of named values as a text table, an HTML
//! table and a `report.csv` attachment, all in one message.


use serde::Deserialize;
use wasmail_plugin::{Attachment, Content, Mailbox, Message, describe, send};

/// The plugin input, e.g.
/// `{"to": ["a@example.com"], "title": "Sales", "rows": [{"name": "north", "value": 12.5}]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    to: Vec<String>,
    #[serde(default = "default_title")]
    title: String,
    rows: Vec<Row>,
}

/// One line of the report.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    name: String,
    value: f64,
}

fn default_title() -> String {
    "Report".to_string()
}

struct Report;

impl wasmail_plugin::Guest for Report {
    fn run(input: String) -> Result<String, String> {
        let input: Input = serde_json::from_str(&input).map_err(|e| {
            format!(
                "bad report input: {e} (expected {{\"to\": [\"a@example.com\"], \"title\": \"...\", \"rows\": [{{\"name\": \"...\", \"value\": 1.5}}]}})"
            )
        })?;
        if input.to.is_empty() {
            return Err("bad report input: `to` lists no recipient".to_string());
        }

        // `+ 0.0` turns the -0.0 of an empty sum into 0.
        let total: f64 = input.rows.iter().map(|r| r.value).sum::<f64>() + 0.0;
        let msg = Message {
            from: None,
            reply_to: None,
            to: input
                .to
                .iter()
                .map(|a| Mailbox {
                    name: None,
                    address: a.clone(),
                })
                .collect(),
            cc: Vec::new(),
            bcc: Vec::new(),
            subject: input.title.clone(),
            text: Some(text_table(&input.title, &input.rows, total)),
            html: Some(html_table(&input.title, &input.rows, total)),
            attachments: vec![Attachment {
                filename: "report.csv".to_string(),
                content_type: Some("text/csv".to_string()),
                content: Content::Bytes(csv(&input.rows).into_bytes()),
                content_id: None,
            }],
            priority: None,
            headers: vec![("X-Mailer".to_string(), "wasmail report plugin".to_string())],
        };
        let receipt =
            send(&msg).map_err(|e| format!("sending the report failed: {}", describe(&e)))?;
        Ok(format!(
            "sent report \"{}\" ({} row(s), total {}) as {} to {} recipient(s), {} refused, {} octets",
            input.title,
            input.rows.len(),
            total,
            receipt.message_id,
            receipt.accepted.len(),
            receipt.rejected.len(),
            receipt.size
        ))
    }
}

wasmail_plugin::export!(Report);

/// The plain-text body: the title, then a two-column table and its total.
fn text_table(title: &str, rows: &[Row], total: f64) -> String {
    let values: Vec<String> = rows.iter().map(|r| r.value.to_string()).collect();
    let total = total.to_string();
    let name_w = rows
        .iter()
        .map(|r| r.name.chars().count())
        .chain(["Name".len(), "Total".len()])
        .max()
        .unwrap_or(5);
    let value_w = values
        .iter()
        .map(|v| v.len())
        .chain(["Value".len(), total.len()])
        .max()
        .unwrap_or(5);
    let rule = format!("{}  {}\n", "-".repeat(name_w), "-".repeat(value_w));

    let mut out = String::new();
    out.push_str(title);
    out.push('\n');
    out.push_str(&"=".repeat(title.chars().count()));
    out.push_str("\n\n");
    out.push_str(&format!("{:<name_w$}  {:>value_w$}\n", "Name", "Value"));
    out.push_str(&rule);
    for (row, value) in rows.iter().zip(&values) {
        out.push_str(&format!("{:<name_w$}  {:>value_w$}\n", row.name, value));
    }
    out.push_str(&rule);
    out.push_str(&format!("{:<name_w$}  {:>value_w$}\n", "Total", total));
    out
}

/// The HTML body: the same table, every text escaped.
fn html_table(title: &str, rows: &[Row], total: f64) -> String {
    let title = escape_html(title);
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html>\n<head><meta charset=\"utf-8\"><title>");
    out.push_str(&title);
    out.push_str("</title></head>\n<body>\n<h1>");
    out.push_str(&title);
    out.push_str("</h1>\n<table border=\"1\" cellpadding=\"4\" cellspacing=\"0\">\n");
    out.push_str("<thead><tr><th align=\"left\">Name</th><th align=\"right\">Value</th></tr></thead>\n<tbody>\n");
    for row in rows {
        out.push_str(&format!(
            "<tr><td>{}</td><td align=\"right\">{}</td></tr>\n",
            escape_html(&row.name),
            row.value
        ));
    }
    out.push_str(&format!(
        "</tbody>\n<tfoot><tr><th align=\"left\">Total</th><th align=\"right\">{total}</th></tr></tfoot>\n</table>\n</body>\n</html>\n"
    ));
    out
}

/// The CSV attachment (RFC 4180: CRLF line ends, quoted fields when needed).
fn csv(rows: &[Row]) -> String {
    let mut out = String::from("name,value\r\n");
    for row in rows {
        out.push_str(&csv_field(&row.name));
        out.push(',');
        out.push_str(&row.value.to_string());
        out.push_str("\r\n");
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}



#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Row> {
        vec![
            Row {
                name: "north".into(),
                value: 12.5,
            },
            Row {
                name: "a, \"b\" <c>".into(),
                value: -3.0,
            },
        ]
    }

    #[test]
    fn text_table_aligns_columns() {
        let t = text_table("Sales", &rows(), 9.5);
        assert!(t.starts_with("Sales\n=====\n\n"));
        assert!(
            t.contains("Name        Value\n----------  -----\nnorth        12.5\n"),
            "{t}"
        );
        assert!(t.contains("a, \"b\" <c>     -3\n"), "{t}");
        assert!(t.ends_with("Total         9.5\n"), "{t}");
    }

    #[test]
    fn html_and_csv_escape() {
        let h = html_table("A & B", &rows(), 9.5);
        assert!(h.contains("<h1>A &amp; B</h1>"));
        assert!(h.contains("<td>a, &quot;b&quot; &lt;c&gt;</td>"));
        assert_eq!(
            csv(&rows()),
            "name,value\r\nnorth,12.5\r\n\"a, \"\"b\"\" <c>\",-3\r\n"
        );
    }

    #[test]
    fn input_errors_name_the_problem() {
        let e = serde_json::from_str::<Input>(r#"{"to": []}"#)
            .err()
            .unwrap();
        assert!(e.to_string().contains("rows"));
    }
}
