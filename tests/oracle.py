"""An independent reading of the messages wasmail produced.

Python's `email` package (with `policy.default`, which decodes RFC 2047
encoded words and RFC 2231 parameters) is the oracle: whatever wasmail
writes must come back from it as the test intended.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Iterator, Optional


def parse(raw: bytes) -> EmailMessage:
    """Parse raw message bytes as a mail reader would."""
    return BytesParser(policy=policy.default).parsebytes(raw)


# --------------------------------------------------------------------------
# Wire-format checks (RFC 5322 2.1, 2.2)
# --------------------------------------------------------------------------

def header_block(raw: bytes) -> bytes:
    """The header section of raw message bytes, without the blank line."""
    head, sep, _ = raw.partition(b"\r\n\r\n")
    assert sep, "no CRLF CRLF between header and body"
    return head


def assert_crlf_only(raw: bytes) -> None:
    """Every line ends with CRLF: no bare LF, no bare CR."""
    bare_lf = re.search(rb"(?<!\r)\n", raw)
    assert bare_lf is None, f"bare LF at offset {bare_lf.start()}"
    bare_cr = re.search(rb"\r(?!\n)", raw)
    assert bare_cr is None, f"bare CR at offset {bare_cr.start()}"


def assert_line_lengths(raw: bytes, limit: int = 998) -> None:
    """No line longer than RFC 5322's 998 octets (CRLF excluded)."""
    for n, line in enumerate(raw.split(b"\r\n"), 1):
        assert len(line) <= limit, f"line {n} has {len(line)} octets"


def assert_ascii_headers(raw: bytes) -> None:
    """The header section is 7-bit: non-ASCII must be RFC 2047/2231 encoded."""
    head = header_block(raw)
    assert head.isascii(), f"8-bit header bytes: {head!r}"


# --------------------------------------------------------------------------
# Headers and addresses
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Mailbox:
    name: str
    address: str


def mailboxes(msg: EmailMessage, header: str) -> list[Mailbox]:
    """The mailboxes of an address header (From, To, Cc, Reply-To), decoded."""
    value = msg[header]
    if value is None:
        return []
    return [Mailbox(a.display_name, a.addr_spec) for a in value.addresses]


def addresses(msg: EmailMessage, header: str) -> list[str]:
    return [m.address for m in mailboxes(msg, header)]


def message_id(msg: EmailMessage) -> str:
    """The Message-ID without angle brackets; asserts the `<left@right>` form."""
    value = str(msg["Message-ID"]).strip()
    m = re.fullmatch(r"<([^<>@\s]+@[^<>@\s]+)>", value)
    assert m, f"malformed Message-ID: {value!r}"
    return m.group(1)


# --------------------------------------------------------------------------
# MIME structure, bodies and attachments
# --------------------------------------------------------------------------

def leaves(msg: EmailMessage) -> Iterator[EmailMessage]:
    """Every non-multipart part, depth first."""
    for part in msg.walk():
        if not part.is_multipart():
            yield part


def content_types(msg: EmailMessage) -> list[str]:
    """The content type of every part, depth first (for error messages and
    structure checks)."""
    return [part.get_content_type() for part in msg.walk()]


def find_multipart(msg: EmailMessage, subtype: str) -> Optional[EmailMessage]:
    """The first `multipart/<subtype>` part (the message itself included)."""
    for part in msg.walk():
        if part.get_content_type() == f"multipart/{subtype}":
            return part
    return None


def body(msg: EmailMessage, subtype: str) -> Optional[str]:
    """The decoded `text/<subtype>` body: the first such leaf that is not
    an attachment. None if there is none."""
    for part in leaves(msg):
        if (part.get_content_type() == f"text/{subtype}"
                and part.get_content_disposition() != "attachment"):
            return part.get_content()
    return None


def normalize_newlines(text: str) -> str:
    """CRLF -> LF, one trailing newline at most: bodies go through SMTP as
    CRLF lines and a writer may add the final line break."""
    return text.replace("\r\n", "\n").rstrip("\n")


@dataclass(frozen=True)
class Part:
    """An attachment or inline part as a reader sees it."""
    filename: Optional[str]
    content_type: str
    disposition: Optional[str]
    content_id: Optional[str]
    data: bytes                 # the decoded bytes (base64/QP undone)


def _part(part: EmailMessage) -> Part:
    cid = part["Content-ID"]
    return Part(
        filename=part.get_filename(),
        content_type=part.get_content_type(),
        disposition=part.get_content_disposition(),
        content_id=str(cid).strip() if cid is not None else None,
        data=part.get_payload(decode=True) or b"",
    )


def attachments(msg: EmailMessage) -> list[Part]:
    """Parts with `Content-Disposition: attachment`, in order."""
    return [_part(p) for p in leaves(msg) if p.get_content_disposition() == "attachment"]


def inline_parts(msg: EmailMessage) -> list[Part]:
    """Parts with a Content-ID (inline images referenced as `cid:`)."""
    return [_part(p) for p in leaves(msg) if p["Content-ID"] is not None]


def part_named(parts: list[Part], filename: str) -> Part:
    for p in parts:
        if p.filename == filename:
            return p
    raise AssertionError(f"no part named {filename!r} in {[p.filename for p in parts]}")


def contains(container: EmailMessage, content_type: str) -> bool:
    """Whether `container` has a descendant leaf of `content_type`."""
    return any(p.get_content_type() == content_type for p in leaves(container))
