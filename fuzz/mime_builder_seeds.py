#!/usr/bin/env python3
"""Write the mime_builder seeds (corpus/mime_builder) and its regression
inputs (regressions/mime_builder) from readable descriptions.

The fuzz target decodes its bytes with `arbitrary` 1.x into the `Input` struct
of fuzz_targets/mime_builder.rs, field by field in declaration order. This
script is the inverse for the shapes used here:

- bool / Option tag: one byte, low bit set means true / Some;
- enum variant i of n: a little-endian u32 x with (x * n) >> 32 == i;
- u8: one byte; u64: eight bytes, little-endian;
- String: its UTF-8 bytes in place, its length read from the *end* of the
  data (one byte while at most 256 bytes remain, then two, big-endian);
- Vec<T>: for each element a `1` byte then the element, then a `0` byte.

Check a file with `cargo +nightly fuzz fmt mime_builder FILE`.
Run: python3 fuzz/mime_builder_seeds.py (from anywhere).
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


class Enc:
    def __init__(self):
        self.front = bytearray()
        self.lengths = []  # (offset in front when read, length), in read order

    def u8(self, v):
        self.front.append(v)

    def flag(self, v):
        self.u8(1 if v else 0)

    def variant(self, i, n):
        self.front += struct.pack('<I', -(-(i << 32) // n))

    def u64(self, v):
        self.front += struct.pack('<Q', v)

    def string(self, text):
        data = text.encode()
        self.lengths.append((len(self.front), len(data)))
        self.front += data

    def data(self):
        # Width of each length depends on how much data remains when it is
        # read, which depends on the widths read after it: iterate.
        widths = [1] * len(self.lengths)
        while True:
            new = []
            for i, (off, _) in enumerate(self.lengths):
                remaining = len(self.front) - off + sum(widths[i:])
                new.append(1 if remaining <= 256 else 2)
            if new == widths:
                break
            widths = new
        tail = b''
        for (off, n), w in zip(self.lengths, widths):
            tail = (bytes([n]) if w == 1 else struct.pack('>H', n)) + tail
        return bytes(self.front) + tail


def pick(e, v):  # Pick: Known(u8) | Any(String)
    if isinstance(v, int):
        e.variant(0, 2)
        e.u8(v)
    else:
        e.variant(1, 2)
        e.string(v)


def option(e, v, f):
    e.flag(v is not None)
    if v is not None:
        f(e, v)


def address(e, v):  # AddressIn: Known(u8) | Local(String, u8) | Any(String)
    if isinstance(v, int):
        e.variant(0, 3)
        e.u8(v)
    elif isinstance(v, tuple):
        e.variant(1, 3)
        e.string(v[0])
        e.u8(v[1])
    else:
        e.variant(2, 3)
        e.string(v)


def mailbox(e, m):  # (name, address)
    option(e, m[0], pick)
    address(e, m[1])


def vec(e, items, f):
    for item in items:
        e.flag(True)
        f(e, item)
    e.flag(False)


def attachment(e, a):  # (filename, content_type, bytes, content_id)
    pick(e, a[0])
    option(e, a[1], pick)
    vec(e, a[2], lambda e, b: e.u8(b))
    option(e, a[3], pick)


def draft(frm, to, subject, text=None, html=None, reply_to=None, cc=(), bcc=(), attachments=(),
          priority=2, headers=(), unix_time=1795707464, random=0x0123456789abcdef):
    """Ints pick from the harness's lists (ADDRESSES, NAMES, ...), strings are
    taken as they are, (local, i) is local@DOMAINS[i]."""
    e = Enc()
    mailbox(e, frm)
    option(e, reply_to, mailbox)
    vec(e, to, mailbox)
    vec(e, cc, mailbox)
    vec(e, bcc, mailbox)
    pick(e, subject)
    option(e, text, pick)
    option(e, html, lambda e, v: e.string(v))
    vec(e, attachments, attachment)
    e.u8(priority)
    vec(e, headers, lambda e, h: (pick(e, h[0]), pick(e, h[1])))
    e.u64(unix_time)
    e.u64(random)
    return e.data()


SEEDS = {
    'plain-text': draft((0, 0), [(None, 1)], 0, text=0),
    'alternative-related-mixed': draft(
        (1, 0), [(None, 0)], 'Grüße', text='Hi there\n.\n', html='<p>Hi <img src="cid:logo"></p>',
        attachments=[(0, None, [1, 2, 3], None), (5, 2, [0x89, 0x50, 0x4E, 0x47], 0)], headers=[(0, 0)]),
    'utf8-literals-cc-bcc': draft(
        ('Jürgen', ('jürgen', 2)), [(None, 6), (2, ('a.b', 0))], 3, reply_to=(None, 4),
        cc=[(None, 2)], bcc=[(None, 3)], priority=0, text=3),
    'text-attachment-invalid-utf8': draft(
        (None, 0), [(None, 0)], 4, text=6,
        attachments=[(1, 1, [0x66, 0xFF, 0x0D, 0x0A], None), (6, None, list(b'S: x\r\n\r\nb'), None)]),
    'refused-from': draft((None, 'not-an-address'), [(None, 0)], 0),
}

REGRESSIONS = {
    # A display name of 500 double quotes is valid (<= 512 bytes, no
    # controls); quoted and escaped it is 1002 octets on the From line.
    'quoted-display-name-over-998': draft(('"' * 500, 0), [(None, 0)], 0, random=0),
}


def write(folder, files):
    path = os.path.join(HERE, folder)
    os.makedirs(path, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(path, name), 'wb') as f:
            f.write(data)


if __name__ == '__main__':
    write('corpus/mime_builder', SEEDS)
    write('regressions/mime_builder', REGRESSIONS)
