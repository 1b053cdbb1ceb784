//! The XDP fast path, userspace side: load the embedded program, attach it to network devices,
//! read its counters.

use std::ffi::CString;

use aya::Ebpf;
use aya::maps::{MapData, PerCpuArray};
use aya::programs::{Xdp, XdpMode, xdp::XdpLinkId};
use sluice_common::{Counter, STATS_MAP, Stat, XDP_PROGRAM};

/// The XDP object built by relay/build.rs (aya-build) from the `ebpf/` crate.
pub static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-xdp"));

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("cannot load the XDP object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("the XDP object has no program `{0}`")]
    MissingProgram(&'static str),
    #[error("the XDP object has no map `{0}`")]
    MissingMap(&'static str),
    #[error("XDP program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("XDP map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("invalid interface name {0:?}")]
    InterfaceName(String),
    #[error("cannot attach XDP ({mode}) to {interface}: {source}")]
    Attach {
        interface: String,
        mode: AttachMode,
        source: aya::programs::ProgramError,
    },
}

/// How the program runs on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver, before an skb exists (XDP_FLAGS_DRV_MODE).
    Native,
    /// In the generic network stack path: works on every device, far slower (XDP_FLAGS_SKB_MODE).
    Generic,
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        })
    }
}

impl From<AttachMode> for XdpMode {
    fn from(mode: AttachMode) -> XdpMode {
        match mode {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
        }
    }
}

#[derive(Debug)]
pub struct Attachment {
    pub interface: String,
    pub mode: AttachMode,
    link: XdpLinkId,
}

/// The loaded (verified) program and its maps. Dropping it detaches every attachment.
pub struct FastPath {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
}

impl FastPath {
    /// Parses the embedded object and loads the program into the kernel (runs the verifier).
    /// Needs CAP_BPF (or root).
    pub fn load() -> Result<FastPath, XdpError> {
        let mut ebpf = Ebpf::load(PROGRAM_OBJECT)?;
        program_mut(&mut ebpf)?.load()?;
        if ebpf.map(STATS_MAP).is_none() {
            return Err(XdpError::MissingMap(STATS_MAP));
        }
        Ok(FastPath {
            ebpf,
            attachments: Vec::new(),
        })
    }

    /// Attaches to `interface` in the caller's network namespace (per thread: see setns(2)).
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<&Attachment, XdpError> {
        // aya panics on an interior NUL; reject it here since names come from config.
        if interface.is_empty() || CString::new(interface).is_err() {
            return Err(XdpError::InterfaceName(interface.to_owned()));
        }
        let link = program_mut(&mut self.ebpf)?
            .attach(interface, mode.into())
            .map_err(|source| XdpError::Attach {
                interface: interface.to_owned(),
                mode,
                source,
            })?;
        self.attachments.push(Attachment {
            interface: interface.to_owned(),
            mode,
            link,
        });
        Ok(self.attachments.last().expect("just pushed"))
    }

    /// Detaches from every device (also happens on drop).
    pub fn detach_all(&mut self) -> Result<(), XdpError> {
        let program = program_mut(&mut self.ebpf)?;
        for attachment in self.attachments.drain(..) {
            if let Err(e) = program.detach(attachment.link) {
                tracing::warn!(interface = %attachment.interface, error = %e, "XDP detach failed");
            }
        }
        Ok(())
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// The program, e.g. for BPF_PROG_TEST_RUN.
    pub fn program(&self) -> Result<&Xdp, XdpError> {
        self.ebpf
            .program(XDP_PROGRAM)
            .ok_or(XdpError::MissingProgram(XDP_PROGRAM))?
            .try_into()
            .map_err(XdpError::Program)
    }

    /// Global verdict/reason counters, summed over CPUs.
    pub fn stats(&self) -> Result<Vec<(Stat, Counter)>, XdpError> {
        let map = self
            .ebpf
            .map(STATS_MAP)
            .ok_or(XdpError::MissingMap(STATS_MAP))?;
        let array: PerCpuArray<&MapData, Counter> = PerCpuArray::try_from(map)?;
        Stat::ALL
            .iter()
            .map(|&stat| {
                let per_cpu = array.get(&(stat as u32), 0)?;
                Ok((stat, Counter::sum(per_cpu.iter())))
            })
            .collect()
    }

    /// One counter, summed over CPUs.
    pub fn stat(&self, stat: Stat) -> Result<Counter, XdpError> {
        Ok(self
            .stats()?
            .into_iter()
            .find_map(|(s, c)| (s == stat).then_some(c))
            .unwrap_or_default())
    }
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    ebpf.program_mut(XDP_PROGRAM)
        .ok_or(XdpError::MissingProgram(XDP_PROGRAM))?
        .try_into()
        .map_err(XdpError::Program)
}
