"""The wasmail plugin SDK for Python (componentize-py).

Typed helpers over the bindings that componentize-py generates for
`world wasmail:mail/plugin` (the WIT package in the repository's wit/),
mirroring the Rust SDK (`plugins/sdk`): `text()` is `Message::text`,
`describe()` and `reply()` print errors and replies the same way.

    import wit_world
    import wasmail_plugin as mail

    class WitWorld(wit_world.WitWorld):
        def run(self, input: str) -> str:
            msg = mail.text([input.strip()], "Hello", "Hi there.\\n")
            try:
                receipt = mail.send(msg)
            except mail.SendFailed as e:
                raise mail.Err(str(e))      # `run` returns err(...)
            return f"sent {receipt.message_id}"

Build with `componentize-py -d WIT -w wasmail:mail/plugin componentize
-p DIR_OF_APP -p DIR_OF_THIS_FILE app -o plugin.wasm` (docs/plugins.md).
"""

from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

from componentize_py_types import Err, Ok
from wit_world.imports import sender
from wit_world.imports.types import (
    Attachment,
    Content_Bytes,
    Content_File,
    Mailbox,
    Message,
    Priority,
    Receipt,
    Reply,
    SendError,
    SendError_Auth,
    SendError_Connect,
    SendError_InvalidMessage,
    SendError_OutcomeUnknown,
    SendError_PolicyDenied,
    SendError_Protocol,
    SendError_Rejected,
    SendError_Timeout,
    SendError_Tls,
)

__all__ = [
    "Attachment", "Err", "Mailbox", "Message", "Priority", "Receipt", "Reply", "SendError",
    "SEND_MANY_BATCH", "SEND_MANY_BYTES", "SendFailed", "addr", "approximate_size", "attach_bytes",
    "attach_file", "describe", "html", "kind", "reply", "send", "send_all", "send_many", "text",
]

# The most messages `send_all` hands to `send-many` per call, and the most
# octets of message text and in-memory attachments it gathers for one call
# (the message that passes it is the call's last): the Rust SDK's
# SEND_MANY_BATCH and SEND_MANY_BYTES, for the same reasons.
SEND_MANY_BATCH = 4096
SEND_MANY_BYTES = 8 << 20

Recipients = Union[str, Mailbox, Iterable[Union[str, Mailbox]]]


def addr(address: str, name: Optional[str] = None) -> Mailbox:
    """A mailbox: `addr("a@example.com")` or `addr("a@example.com", "Ann")`."""
    return Mailbox(name=name, address=address)


def _mailboxes(recipients: Recipients) -> List[Mailbox]:
    if isinstance(recipients, (str, Mailbox)):
        recipients = [recipients]
    return [r if isinstance(r, Mailbox) else addr(r) for r in recipients]


def text(to: Recipients, subject: str, body: str) -> Message:
    """A plain-text message to `to`, From left to the host's policy
    (`default_from`). Like the Rust SDK's `Message::text`; set more fields on
    the result (`html`, `attachments`, `cc`, `headers`, ...) as needed."""
    return Message(
        from_=None,
        reply_to=None,
        to=_mailboxes(to),
        cc=[],
        bcc=[],
        subject=subject,
        text=body,
        html=None,
        attachments=[],
        priority=None,
        headers=[],
    )


def html(to: Recipients, subject: str, html_body: str, text_body: Optional[str] = None) -> Message:
    """An HTML message; with `text_body` too it is multipart/alternative."""
    msg = text(to, subject, text_body) if text_body is not None else text(to, subject, "")
    if text_body is None:
        msg.text = None
    msg.html = html_body
    return msg


def attach_bytes(filename: str, data: bytes, content_type: Optional[str] = None,
                 content_id: Optional[str] = None) -> Attachment:
    """An attachment carrying its bytes. Without `content_type` the mailer
    guesses it from the file name; a `content_id` makes it inline (`cid:`)."""
    return Attachment(filename=filename, content_type=content_type,
                      content=Content_Bytes(bytes(data)), content_id=content_id)


def attach_file(path: str, filename: Optional[str] = None, content_type: Optional[str] = None,
                content_id: Optional[str] = None) -> Attachment:
    """An attachment by reference: `path` is relative to the folder the
    plugin's policy grants (`folder`); the host opens and streams it. The
    file name is the path's last part unless given; a path that ends in `/`
    names no file, and raises ValueError."""
    name = filename or path.rsplit("/", 1)[-1]
    if not name:
        raise ValueError(f"attach_file: {path!r} names no file; give a path to a file, or a filename")
    return Attachment(filename=name, content_type=content_type,
                      content=Content_File(path), content_id=content_id)


_KINDS: Sequence[Tuple[type, str]] = (
    (SendError_InvalidMessage, "invalid-message"),
    (SendError_PolicyDenied, "policy-denied"),
    (SendError_Connect, "connect"),
    (SendError_Tls, "tls"),
    (SendError_Auth, "auth"),
    (SendError_Rejected, "rejected"),
    (SendError_Timeout, "timeout"),
    (SendError_Protocol, "protocol"),
    (SendError_OutcomeUnknown, "outcome-unknown"),
)


def kind(err: SendError) -> str:
    """The WIT case name of a `send-error`: `policy-denied`, `rejected`, ..."""
    for cls, name in _KINDS:
        if isinstance(err, cls):
            return name
    return type(err).__name__


def reply(r: Reply) -> str:
    """A server reply as `code [enhanced] text` (RFC 5321, RFC 3463)."""
    return f"{r.code} {r.enhanced} {r.text}" if r.enhanced else f"{r.code} {r.text}"


def _stage(stage) -> str:
    return stage.name.lower().replace("_", "-")


def describe(err: SendError) -> str:
    """A `send-error` as `<case>: <detail>`, the case named as in the WIT."""
    if isinstance(err, SendError_Auth):
        return f"auth: {reply(err.value)}"
    if isinstance(err, SendError_Rejected):
        r = err.value
        how = "transient" if r.transient else "permanent"
        return f"rejected ({how}, stage {_stage(r.stage)}): {reply(r.reply)}"
    if isinstance(err, SendError_Timeout):
        return f"timeout in stage {_stage(err.value)}"
    return f"{kind(err)}: {err.value}"


class SendFailed(Exception):
    """Raised by `send` when the host or the relay did not take a message.
    `error` is the WIT `send-error`, `kind` its case (`policy-denied`, ...)."""

    def __init__(self, error: SendError):
        super().__init__(describe(error))
        self.error = error
        self.kind = kind(error)


def send(msg: Message) -> Receipt:
    """Send `msg` through `wasmail:mail/sender`. Returns the receipt, or
    raises `SendFailed` (the policy's denials included)."""
    try:
        return sender.send(msg)
    except Err as e:
        raise SendFailed(e.value) from None


def send_many(msgs: Sequence[Message]) -> List[Union[Receipt, SendFailed]]:
    """Send `msgs` in one `send-many` call: pipelined over the relay session,
    each message under the policy as if sent alone. One result per message,
    in order: its `Receipt`, or a `SendFailed` (returned, not raised), so a
    refusal of one message does not stop the others."""
    results = sender.send_many(list(msgs))
    return [r.value if isinstance(r, Ok) else SendFailed(r.value) for r in results]


def approximate_size(msg: Message) -> int:
    """A message's octets as the plugin holds them: its subject, text, HTML
    and in-memory attachments (a file attachment is read by the host), text
    counted in UTF-8 as the Rust SDK counts it."""
    attached = sum(len(a.content.value) if isinstance(a.content, Content_Bytes)
                   else len(a.content.value.encode("utf-8")) for a in msg.attachments)
    text = (msg.subject, msg.text or "", msg.html or "")
    return sum(len(t.encode("utf-8")) for t in text) + attached


def send_all(msgs: Iterable[Message],
             each: Callable[[int, Union[Receipt, SendFailed]], Optional[bool]]) -> int:
    """Send every message `msgs` yields with `send-many`, up to
    `SEND_MANY_BATCH` messages or `SEND_MANY_BYTES` at a time, so a long run
    is pipelined without being built whole in memory (the Rust SDK's
    `send_all`). `each` gets every message's position (from 0) and result
    (a `Receipt` or a `SendFailed`), in order, as its batch settles: every
    message of a batch was handed over, so every one gets its call. `each`
    returns False to stop before the next batch (None goes on). Returns how
    many messages were handed to the host.

        def note(i, result):
            if isinstance(result, mail.SendFailed):
                print(f"message {i}: {result}")

        mail.send_all(messages(), note)
    """
    it = iter(msgs)
    sent = 0
    while True:
        batch: List[Message] = []
        size = 0
        for msg in it:
            batch.append(msg)
            size += approximate_size(msg)
            if len(batch) >= SEND_MANY_BATCH or size >= SEND_MANY_BYTES:
                break
        if not batch:
            return sent
        go_on = True
        for result in send_many(batch):
            if each(sent, result) is False:
                go_on = False
            sent += 1
        if not go_on:
            return sent
