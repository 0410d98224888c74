//! The netgrab plugin: tries to open a TCP connection to 127.0.0.1:25. The
//! call makes the component import `wasi:sockets/*`, and the host must refuse
//! to instantiate a plugin that does.

wit_bindgen::generate!({
    path: "../../wit",
    world: "wasmail:mail/plugin",
    generate_all,
});

use std::hint::black_box;
use std::net::TcpStream;

/// Where the plugin tries to connect: the local SMTP port.
const TARGET: &str = "127.0.0.1:25";

struct Netgrab;

impl Guest for Netgrab {
    fn run(input: String) -> Result<String, String> {
        // Any non-empty input is taken as the address, so the call depends on
        // the input and cannot be folded away.
        let target = match input.trim() {
            "" => TARGET,
            other => other,
        };
        match TcpStream::connect(black_box(target)) {
            Ok(stream) => Ok(format!(
                "connected to {target} from {:?}: the sandbox let a socket through",
                stream.local_addr().ok()
            )),
            Err(e) => Err(format!("connecting to {target} failed: {e}")),
        }
    }
}

export!(Netgrab);
