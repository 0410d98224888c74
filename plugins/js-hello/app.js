// The hello plugin in JavaScript: one greeting, with an HTML body and a
// small attachment, to each address in the input (comma- or
// space-separated; default demo@example.com). A recipient the policy
// refuses is reported and skipped; `run` fails only when nothing was sent.
// One greeting goes with `send`; several go with `sendAll`, pipelined in
// `send-many` calls, and each result comes back tied to its own recipient.
//
// Build: `make js-plugins` (or the componentize-js script in
// docs/plugins.md). Run: `wasmail run wasmail_plugin_js_hello.wasm
// --input-text you@example.com`.

import { attachBytes, html, send, sendAll, SendFailed } from '../sdk-js/wasmail-plugin.js';

const DEFAULT_TO = 'demo@example.com';

const HTML = `<!doctype html>
<html><body>
<h1>Hello!</h1>
<p>This message was built by a <b>JavaScript</b> WebAssembly component running in
the wasmail sandbox and handed to the host through <code>wasmail:mail/sender</code>.</p>
</body></html>
`;

const TEXT = `Hello!

This message was built by a JavaScript WebAssembly component running in
the wasmail sandbox and handed to the host through wasmail:mail/sender.

-- the wasmail js-hello plugin
`;

function greeting(to) {
  const msg = html([to], 'Hello from a JavaScript wasmail plugin', HTML, TEXT);
  msg.attachments.push(attachBytes('hello.txt', `Hello, ${to}!\nSent by js-hello.\n`, 'text/plain'));
  msg.headers.push(['X-Mailer', 'wasmail js-hello plugin']);
  return msg;
}

export function run(input) {
  const recipients = input.split(/[\s,]+/).filter(Boolean);
  if (recipients.length === 0) recipients.push(DEFAULT_TO);
  const sent = [];
  const failed = [];
  const results = [];
  if (recipients.length === 1) {
    try {
      results.push([0, send(greeting(recipients[0]))]);
    } catch (e) {
      if (!(e instanceof SendFailed)) throw e;
      results.push([0, e]);
    }
  } else {
    sendAll(recipients.map((to) => greeting(to)), (i, result) => {
      results.push([i, result]);
    });
  }
  for (const [i, result] of results) {
    const to = recipients[i];
    if (result instanceof SendFailed) {
      // A denial is an answer, not a crash: report it and go on.
      failed.push(`${to}: ${result.message}`);
    } else {
      sent.push(`sent ${result.messageId} to ${to}`);
    }
  }
  // Throwing a string makes `run` return err(string).
  if (sent.length === 0) throw `nothing sent; ${failed.join('; ')}`;
  return [...sent, ...failed.map((f) => `not sent: ${f}`)].join('\n');
}
