//! Feeds arbitrary bytes to the rtpproxy command parser in both framings. The parser must never
//! panic; an error must still encode as a reply (with the cookie when there is one); a parsed
//! command must encode to text that parses back to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::control::rtpp::proto::{Command, Framing, parse};

fuzz_target!(|data: &[u8]| {
    for framing in [Framing::Datagram, Framing::Stream] {
        match parse(data, framing) {
            Ok(request) => {
                assert_eq!(request.cookie.is_some(), framing == Framing::Datagram);
                // Unsupported commands are kept as their letter only; nothing to re-encode.
                if matches!(request.command, Command::Unsupported { .. }) {
                    continue;
                }
                let text = request.encode();
                let again = parse(text.as_bytes(), framing);
                assert_eq!(again.as_ref(), Ok(&request), "re-encoded as {text:?}");
            }
            Err(error) => {
                let reply = error.reply();
                assert!(reply.ends_with('\n'));
                if let Some(cookie) = &error.cookie {
                    assert!(reply.starts_with(&format!("{cookie} E")));
                }
            }
        }
    }
});
