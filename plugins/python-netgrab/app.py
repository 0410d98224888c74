"""A hostile Python plugin for the tests: it tries the network the ways a
Python program would. componentize-py links `wasi:sockets/*` into every
component; the host links them too, and denies every call at run time.
Input: `socket IP:PORT` (default: a raw socket, no lookup), `connect
HOST:PORT` (socket.create_connection) or `resolve NAME`. `run` returns err
with what Python raised; success would mean the sandbox leaked.
"""

import socket

# socket.getaddrinfo() encodes host names with the idna codec, which
# componentize-py only bundles when something imports it by name.
import encodings.idna  # noqa: F401

import wit_world
from componentize_py_types import Err


class WitWorld(wit_world.WitWorld):
    def run(self, input: str) -> str:
        mode, _, arg = (input.strip() or "socket 127.0.0.1:25").partition(" ")
        try:
            if mode == "resolve":
                found = socket.getaddrinfo(arg or "example.com", 25)
                return f"resolved {arg}: {found!r}: the sandbox let a lookup through"
            host, _, port = (arg or "127.0.0.1:25").rpartition(":")
            if mode == "socket":
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.connect((host, int(port)))
                return f"connected to {arg}: the sandbox let a socket through"
            conn = socket.create_connection((host, int(port)), timeout=5)
            return f"connected to {arg} from {conn.getsockname()!r}: the sandbox let a socket through"
        except OSError as e:
            raise Err(f"{mode} {arg}: {type(e).__name__}: {e}")
