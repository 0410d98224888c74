// The wasmail plugin SDK for JavaScript (componentize-js).
//
// Typed helpers (JSDoc) over the `wasmail:mail/sender@0.1.0` import that
// componentize-js binds for `world wasmail:mail/plugin` (the WIT package in
// the repository's wit/), mirroring the Rust SDK (`plugins/sdk`): `text()`
// is `Message::text`; `describe()` and `reply()` print errors and replies
// the same way.
//
//     import { text, send, SendFailed } from './wasmail-plugin.js';
//
//     export function run(input) {
//       try {
//         const receipt = send(text([input.trim()], 'Hello', 'Hi there.\n'));
//         return `sent ${receipt.messageId}`;
//       } catch (e) {
//         if (e instanceof SendFailed) throw e.message;   // `run` returns err(...)
//         throw e;
//       }
//     }
//
// Field names are the WIT names in camelCase (`replyTo`, `contentType`,
// `messageId`); variants are `{ tag, val }`; enums are strings.

import { send as witSend, sendMany as witSendMany } from 'wasmail:mail/sender@0.1.0';

/** The most messages `sendAll` hands to `send-many` per call, and the most
 * octets of message text and in-memory attachments it gathers for one call
 * (the message that passes it is the call's last): the Rust SDK's
 * SEND_MANY_BATCH and SEND_MANY_BYTES, for the same reasons. */
export const SEND_MANY_BATCH = 4096;
export const SEND_MANY_BYTES = 8 << 20;

/**
 * @typedef {{ name?: string, address: string }} Mailbox
 * @typedef {{ tag: 'bytes', val: Uint8Array } | { tag: 'file', val: string }} Content
 * @typedef {{ filename: string, contentType?: string, content: Content, contentId?: string }} Attachment
 * @typedef {'highest' | 'high' | 'normal' | 'low' | 'lowest'} Priority
 * @typedef {{
 *   from?: Mailbox, replyTo?: Mailbox, to: Mailbox[], cc: Mailbox[], bcc: Mailbox[],
 *   subject: string, text?: string, html?: string, attachments: Attachment[],
 *   priority?: Priority, headers: [string, string][]
 * }} Message
 * @typedef {{ code: number, enhanced?: string, text: string }} Reply
 * @typedef {{ messageId: string, accepted: string[],
 *   rejected: { address: string, reply: Reply }[], size: bigint, reply: Reply }} Receipt
 * @typedef {{ tag: string, val: any }} SendError
 */

/** A mailbox: `addr('a@example.com')` or `addr('a@example.com', 'Ann')`.
 * @returns {Mailbox} */
export function addr(address, name) {
  return name === undefined ? { address } : { name, address };
}

function mailboxes(to) {
  const list = Array.isArray(to) ? to : [to];
  return list.map((r) => (typeof r === 'string' ? addr(r) : r));
}

/** A plain-text message to `to`, From left to the host's policy
 * (`default_from`). Like the Rust SDK's `Message::text`; set more fields on
 * the result (`html`, `attachments`, `cc`, `headers`, ...) as needed.
 * @param {string | Mailbox | (string | Mailbox)[]} to
 * @returns {Message} */
export function text(to, subject, body) {
  return {
    to: mailboxes(to),
    cc: [],
    bcc: [],
    subject,
    text: body,
    attachments: [],
    priority: undefined,
    headers: [],
  };
}

/** An HTML message; with `textBody` too it is multipart/alternative.
 * @returns {Message} */
export function html(to, subject, htmlBody, textBody) {
  const msg = text(to, subject, textBody);
  if (textBody === undefined) delete msg.text;
  msg.html = htmlBody;
  return msg;
}

/** An attachment carrying its bytes (a string is sent as UTF-8; an
 * ArrayBuffer or any typed array or DataView as its octets). Without
 * `contentType` the mailer guesses it from the file name; a `contentId`
 * makes it inline (`cid:`).
 * @param {Uint8Array | ArrayBuffer | ArrayBufferView | string} data
 * @returns {Attachment} */
export function attachBytes(filename, data, contentType, contentId) {
  let bytes;
  if (typeof data === 'string') bytes = new TextEncoder().encode(data);
  else if (data instanceof Uint8Array) bytes = data;
  else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  else bytes = new Uint8Array(data);
  const a = { filename, content: { tag: 'bytes', val: bytes } };
  if (contentType !== undefined) a.contentType = contentType;
  if (contentId !== undefined) a.contentId = contentId;
  return a;
}

/** An attachment by reference: `path` is relative to the folder the
 * plugin's policy grants (`folder`); the host opens and streams it. The
 * file name is the path's last part unless given; a path that ends in `/`
 * names no file, and throws.
 * @returns {Attachment} */
export function attachFile(path, filename, contentType, contentId) {
  const name = filename ?? path.split('/').pop();
  if (!name) throw new Error(`attachFile: ${JSON.stringify(path)} names no file; give a path to a file, or a filename`);
  const a = { filename: name, content: { tag: 'file', val: path } };
  if (contentType !== undefined) a.contentType = contentType;
  if (contentId !== undefined) a.contentId = contentId;
  return a;
}

/** A server reply as `code [enhanced] text` (RFC 5321, RFC 3463).
 * @param {Reply} r */
export function reply(r) {
  return r.enhanced ? `${r.code} ${r.enhanced} ${r.text}` : `${r.code} ${r.text}`;
}

/** A `send-error` as `<case>: <detail>`, the case named as in the WIT.
 * @param {SendError} e */
export function describe(e) {
  switch (e.tag) {
    case 'auth':
      return `auth: ${reply(e.val)}`;
    case 'rejected':
      return `rejected (${e.val.transient ? 'transient' : 'permanent'}, stage ${e.val.stage}): ${reply(e.val.reply)}`;
    case 'timeout':
      return `timeout in stage ${e.val}`;
    default:
      return `${e.tag}: ${e.val}`;
  }
}

/** Thrown by `send` when the host or the relay did not take a message.
 * `error` is the WIT `send-error`, `kind` its case (`policy-denied`, ...). */
export class SendFailed extends Error {
  /** @param {SendError} error */
  constructor(error) {
    super(describe(error));
    this.name = 'SendFailed';
    this.error = error;
    this.kind = error.tag;
  }
}

/** Send `msg` through `wasmail:mail/sender`. Returns the receipt, or throws
 * `SendFailed` (the policy's denials included).
 * @param {Message} msg
 * @returns {Receipt} */
export function send(msg) {
  try {
    return witSend(msg);
  } catch (e) {
    // componentize-js throws the err case of a result as `e.payload`.
    if (e && typeof e === 'object' && 'payload' in e && e.payload && 'tag' in e.payload) {
      throw new SendFailed(e.payload);
    }
    throw e;
  }
}

/** Send `msgs` in one `send-many` call: pipelined over the relay session,
 * each message under the policy as if sent alone. One result per message,
 * in order: its receipt, or a `SendFailed` (returned, not thrown), so a
 * refusal of one message does not stop the others.
 * @param {Message[]} msgs
 * @returns {(Receipt | SendFailed)[]} */
export function sendMany(msgs) {
  return witSendMany(msgs).map((r) => (r.tag === 'ok' ? r.val : new SendFailed(r.val)));
}

/** A message's octets as the plugin holds them: its subject, text, HTML and
 * in-memory attachments (a file attachment is read by the host), text
 * counted in UTF-8 as the Rust SDK counts it.
 * @param {Message} msg */
export function approximateSize(msg) {
  const utf8 = new TextEncoder();
  const octets = (t) => (t === undefined ? 0 : utf8.encode(t).byteLength);
  const attached = msg.attachments.reduce(
    (n, a) => n + (a.content.tag === 'bytes' ? a.content.val.byteLength : octets(a.content.val)), 0);
  return octets(msg.subject) + octets(msg.text) + octets(msg.html) + attached;
}

/** Send every message `msgs` yields with `send-many`, up to
 * `SEND_MANY_BATCH` messages or `SEND_MANY_BYTES` at a time, so a long run
 * is pipelined without being built whole in memory (the Rust SDK's
 * `send_all`). `each` gets every message's position (from 0) and result (a
 * receipt or a `SendFailed`), in order, as its batch settles: every message
 * of a batch was handed over, so every one gets its call. `each` returns
 * `false` to stop before the next batch (anything else goes on). Returns
 * how many messages were handed to the host.
 *
 *     sendAll(messages(), (i, result) => {
 *       if (result instanceof SendFailed) console.log(`message ${i}: ${result.message}`);
 *     });
 * @param {Iterable<Message>} msgs
 * @param {(i: number, result: Receipt | SendFailed) => boolean | void} each
 * @returns {number} */
export function sendAll(msgs, each) {
  const it = msgs[Symbol.iterator]();
  let sent = 0;
  for (;;) {
    const batch = [];
    let size = 0;
    while (batch.length < SEND_MANY_BATCH && size < SEND_MANY_BYTES) {
      const next = it.next();
      if (next.done) break;
      batch.push(next.value);
      size += approximateSize(next.value);
    }
    if (batch.length === 0) return sent;
    let goOn = true;
    for (const result of sendMany(batch)) {
      if (each(sent, result) === false) goOn = false;
      sent += 1;
    }
    if (!goOn) return sent;
  }
}
