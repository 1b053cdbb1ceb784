//! The auxiliary XDP programs (`ebpf/src/bin/aux.rs`), for tests and benchmarks: a pass-through
//! for the receiving end of a veth pair, and the minimal XDP_TX reflector that is the floor for
//! the fast path's per-packet cost. The daemon never attaches them.

use std::ffi::CString;

use aya::Ebpf;
use aya::programs::Xdp;
use sluice_common::{PASS_PROGRAM, REFLECT_PROGRAM};

use super::{AttachMode, XdpError};

/// The auxiliary object built by relay/build.rs next to the fast path's.
pub static AUX_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-aux"));

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuxKind {
    /// XDP_PASS for every frame.
    Pass,
    /// Turns UDP packets around with XDP_TX (MACs, addresses and ports swapped).
    Reflect,
}

impl AuxKind {
    fn program(self) -> &'static str {
        match self {
            AuxKind::Pass => PASS_PROGRAM,
            AuxKind::Reflect => REFLECT_PROGRAM,
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
        program_mut(&mut aux.ebpf, kind)?
            .attach(interface, mode.into())
            .map_err(|source| XdpError::Attach {
                interface: interface.to_owned(),
                mode,
                source,
            })?;
        Ok(aux)
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
