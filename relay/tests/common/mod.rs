//! Helpers shared by the loopback test binaries.
#![allow(dead_code)] // each test binary uses a subset

use std::net::SocketAddr;

use sluice::session::{InterfaceSel, LegOptions, UpdateKind, UpdateRequest};

/// An offer (`to` None) or answer for m-line 1, with default options.
pub fn request(
    kind: UpdateKind,
    call: &str,
    from: &str,
    to: Option<&str>,
    remote: SocketAddr,
) -> UpdateRequest {
    UpdateRequest {
        kind,
        call_id: call.into(),
        from_tag: from.into(),
        to_tag: to.map(Into::into),
        media_index: 1,
        remote: Some(remote),
        remote_rtcp: None,
        ipv6: false,
        interface: InterfaceSel::Auto,
        options: LegOptions::default(),
        notify: None,
        session: Default::default(),
    }
}
