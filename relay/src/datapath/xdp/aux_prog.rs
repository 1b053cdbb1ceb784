//! The auxiliary XDP programs (`ebpf/src/bin/aux.rs`), for tests and benchmarks: a pass-through
//! for the receiving end of a veth pair, and the minimal reflectors (XDP_TX, and DEVMAP
//! redirect to the ingress device) that are the floor for the fast path's per-packet cost. The
//! daemon never attaches them.

use std::ffi::CString;

use aya::Ebpf;
use aya::maps::DevMapHash;
use aya::programs::Xdp;
use sluice_common::{AUX_DEVMAP, PASS_PROGRAM, REFLECT_PROGRAM, REFLECT_REDIRECT_PROGRAM};

use super::{AttachMode, XdpError};

/// The auxiliary object built by relay/build.rs next to the fast path's.
pub static AUX_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-aux"));

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuxKind {
    /// XDP_PASS for every frame.
    Pass,
    /// Turns UDP packets around with XDP_TX (MACs, addresses and ports swapped).
    Reflect,
    /// The same turn-around, sent with `bpf_redirect_map` to the ingress device.
    ReflectRedirect,
}

impl AuxKind {
    fn program(self) -> &'static str {
        match self {
            AuxKind::Pass => PASS_PROGRAM,
            AuxKind::Reflect => REFLECT_PROGRAM,
            AuxKind::ReflectRedirect => REFLECT_REDIRECT_PROGRAM,
        }
    }
}

/// One auxiliary program attached to one device (of the calling thread's network namespace);
/// detached when dropped.
pub struct AuxProgram {
    // Dropping the object detaches the program (aya owns the link).
    ebpf: Ebpf,
    kind: AuxKind,
}

impl AuxProgram {
    /// Loads (verifies) the program without attaching it.
    pub fn load(kind: AuxKind) -> Result<AuxProgram, XdpError> {
        let mut ebpf = Ebpf::load(AUX_OBJECT)?;
        program_mut(&mut ebpf, kind)?.load()?;
        Ok(AuxProgram { ebpf, kind })
    }

    /// Loads the program and attaches it to `interface`.
    pub fn attach(
        kind: AuxKind,
        interface: &str,
        mode: AttachMode,
    ) -> Result<AuxProgram, XdpError> {
        // aya panics on an interior NUL.
        if interface.is_empty() || CString::new(interface).is_err() {
            return Err(XdpError::InterfaceName(interface.to_owned()));
        }
        let mut aux = AuxProgram::load(kind)?;
        if kind == AuxKind::ReflectRedirect {
            let ifindex =
                nix::net::if_::if_nametoindex(interface).map_err(|e| XdpError::Device {
                    name: interface.to_owned(),
                    source: e.into(),
                })?;
            aux.allow_redirect_to(ifindex)?;
        }
        program_mut(&mut aux.ebpf, kind)?
            .attach(interface, mode.into())
            .map_err(|source| XdpError::Attach {
                interface: interface.to_owned(),
                mode,
                source,
            })?;
        Ok(aux)
    }

    /// Puts `ifindex` in the reflect-redirect program's device map, so packets arriving on it
    /// are redirected back out of it (also what BPF_PROG_TEST_RUN needs for a redirect).
    pub fn allow_redirect_to(&mut self, ifindex: u32) -> Result<(), XdpError> {
        let map = self
            .ebpf
            .map_mut(AUX_DEVMAP)
            .ok_or(XdpError::MissingMap(AUX_DEVMAP))?;
        DevMapHash::try_from(map)?.insert(ifindex, ifindex, None, 0)?;
        Ok(())
    }

    /// The loaded program, e.g. for BPF_PROG_TEST_RUN.
    pub fn program(&self) -> Result<&Xdp, XdpError> {
        self.ebpf
            .program(self.kind.program())
            .ok_or(XdpError::MissingProgram(self.kind.program()))?
            .try_into()
            .map_err(XdpError::Program)
    }

    /// The kernel's id of the loaded program (for `bpftool prog show id N` and bpf stats).
    pub fn program_id(&self) -> Result<u32, XdpError> {
        Ok(self.program()?.info()?.id())
    }
}

fn program_mut(ebpf: &mut Ebpf, kind: AuxKind) -> Result<&mut Xdp, XdpError> {
    ebpf.program_mut(kind.program())
        .ok_or(XdpError::MissingProgram(kind.program()))?
        .try_into()
        .map_err(XdpError::Program)
}
