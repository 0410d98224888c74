"""The hello plugin in Python: one greeting, with an HTML body and a small
attachment, to each address in the input (comma- or space-separated;
default demo@example.com). A recipient the policy refuses is reported and
skipped; `run` fails only when nothing was sent. One greeting goes with
`send`; several go with `send_all`, pipelined in `send-many` calls, and
each result comes back tied to its own recipient.

Build: `make python-plugins` (or the componentize-py command in
docs/plugins.md). Run: `wasmail run target/plugins/python_hello.wasm
--input-text you@example.com`.
"""

import wit_world
import wasmail_plugin as mail

DEFAULT_TO = "demo@example.com"

HTML = """<!doctype html>
<html><body>
<h1>Hello!</h1>
<p>This message was built by a <b>Python</b> WebAssembly component running in
the wasmail sandbox and handed to the host through <code>wasmail:mail/sender</code>.</p>
</body></html>
"""

TEXT = (
    "Hello!\n\n"
    "This message was built by a Python WebAssembly component running in\n"
    "the wasmail sandbox and handed to the host through wasmail:mail/sender.\n\n"
    "-- the wasmail python-hello plugin\n"
)


def greeting(to: str) -> mail.Message:
    msg = mail.html([to], "Hello from a Python wasmail plugin", HTML, text_body=TEXT)
    note = f"Hello, {to}!\nSent by python-hello.\n".encode("utf-8")
    msg.attachments.append(mail.attach_bytes("hello.txt", note, "text/plain"))
    msg.headers.append(("X-Mailer", "wasmail python-hello plugin"))
    return msg


class WitWorld(wit_world.WitWorld):
    def run(self, input: str) -> str:
        recipients = input.replace(",", " ").split() or [DEFAULT_TO]
        sent, failed = [], []
        results = []
        if len(recipients) == 1:
            try:
                results.append((0, mail.send(greeting(recipients[0]))))
            except mail.SendFailed as e:
                results.append((0, e))
        else:
            mail.send_all((greeting(to) for to in recipients), lambda i, r: results.append((i, r)))
        for i, result in results:
            to = recipients[i]
            if isinstance(result, mail.SendFailed):
                # A denial is an answer, not a crash: report it and go on.
                failed.append(f"{to}: {result}")
            else:
                sent.append(f"sent {result.message_id} to {to}")
        if not sent:
            raise mail.Err("nothing sent; " + "; ".join(failed))
        return "\n".join(sent + [f"not sent: {f}" for f in failed])
