//! The XDP fast path, userspace side: load the embedded program (flow table sized from the
//! config), attach it to the media devices in the mode [`device::choose`] picks, install and
//! remove flows ([`flows::FlowTable`]), read its counters.

pub mod aux_prog;
pub mod device;
pub mod flows;
pub mod lookup;
pub mod merge;

use std::ffi::CString;
use std::net::IpAddr;

use aya::maps::{Array, DevMapHash, HashMap as BpfHashMap, MapData, PerCpuArray};
use aya::programs::{Xdp, XdpMode, xdp::XdpLinkId};
use aya::{Ebpf, EbpfLoader};
use sluice_common::{
    ACTIONS_MAP, Counter, DEVMAP, EPOCH_MAP, FLOW_STATS_MAP, FLOWS_MAP, PORTS_MAP, STATS_MAP, Stat,
    VLANS_MAP, VlanDev, XDP_PROGRAM,
};

use crate::config::XdpConfig;
pub use flows::FlowTable;
pub use merge::PathTotals;

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
    #[error("XDP device map: {0}")]
    DevMap(#[from] aya::maps::xdp::XdpMapError),
    #[error("no free XDP action slot")]
    ActionsFull,
    #[error("cannot count CPUs: {0}")]
    Cpus(std::io::Error),
    #[error("network device {name}: {source}")]
    Device {
        name: String,
        source: std::io::Error,
    },
    #[error("xdp.mode = {mode:?} but no device to attach to: {why}")]
    NoDevice { mode: &'static str, why: String },
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

/// TTL / hop limit of forwarded packets when the system default cannot be read.
const DEFAULT_TTL: u8 = 64;

/// The loaded (verified) program and its maps. Dropping it detaches every attachment.
pub struct FastPath {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
    flows: FlowTable,
    devmap: DevMapHash<MapData>,
    vlans: BpfHashMap<MapData, u32, VlanDev>,
}

impl FastPath {
    /// Parses the embedded object, sizes the flow table for `max_flows` flows (four per
    /// stream) and loads the program into the kernel (runs the verifier). Needs CAP_BPF and
    /// CAP_NET_ADMIN (or root).
    pub fn load(max_flows: u32) -> Result<FastPath, XdpError> {
        let max_flows = max_flows.max(1);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(FLOWS_MAP, max_flows)
            .map_max_entries(ACTIONS_MAP, max_flows.saturating_mul(2).saturating_add(1))
            .map_max_entries(FLOW_STATS_MAP, max_flows)
            .load(PROGRAM_OBJECT)?;
        program_mut(&mut ebpf)?.load()?;
        if ebpf.map(STATS_MAP).is_none() {
            return Err(XdpError::MissingMap(STATS_MAP));
        }
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(XdpError::MissingMap(name));
        let maps = flows::KernelMaps {
            ports: Array::try_from(take(PORTS_MAP)?)?,
            actions: Array::try_from(take(ACTIONS_MAP)?)?,
            hash: BpfHashMap::try_from(take(FLOWS_MAP)?)?,
            epoch: Array::try_from(take(EPOCH_MAP)?)?,
        };
        let stats = PerCpuArray::try_from(take(FLOW_STATS_MAP)?)?;
        let devmap = DevMapHash::try_from(take(DEVMAP)?)?;
        let vlans = BpfHashMap::try_from(take(VLANS_MAP)?)?;
        Ok(FastPath {
            ebpf,
            attachments: Vec::new(),
            flows: FlowTable::new(maps, stats, max_flows, system_ttl())?,
            devmap,
            vlans,
        })
    }

    /// The flow table: what the kernel forwards.
    pub fn flows(&mut self) -> &mut FlowTable {
        &mut self.flows
    }

    /// Makes `interface` (and its 802.1Q children) a device the program may send to; returns
    /// its ifindex. [`FastPath::attach`] does this for the devices it attaches to.
    pub fn add_device(&mut self, interface: &str) -> Result<u32, XdpError> {
        let dev = device::facts(interface).map_err(|source| XdpError::Device {
            name: interface.to_owned(),
            source,
        })?;
        self.devmap.insert(dev.ifindex, dev.ifindex, None, 0)?;
        for (name, vid) in device::vlan_children(interface) {
            match device::facts(&name) {
                Ok(child) => self.vlans.insert(
                    child.ifindex,
                    VlanDev {
                        parent: dev.ifindex,
                        vid,
                        _pad: 0,
                    },
                    0,
                )?,
                Err(e) => tracing::warn!(vlan = %name, error = %e, "skipping VLAN device"),
            }
        }
        Ok(dev.ifindex)
    }

    /// Attaches to `interface` in the caller's network namespace (per thread: see setns(2)),
    /// and makes it (and its 802.1Q children) a target the program can send to.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<&Attachment, XdpError> {
        // aya panics on an interior NUL; reject it here since names come from config.
        if interface.is_empty() || CString::new(interface).is_err() {
            return Err(XdpError::InterfaceName(interface.to_owned()));
        }
        self.add_device(interface)?;
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

    /// The kernel's id of the loaded program (bpftool, bpf stats).
    pub fn program_id(&self) -> Result<u32, XdpError> {
        Ok(self.program()?.info()?.id())
    }

    /// Global verdict/reason counters, summed over CPUs.
    pub fn stats(&self) -> Result<Vec<(Stat, Counter)>, XdpError> {
        let map = self
            .ebpf
            .map(STATS_MAP)
            .ok_or(XdpError::MissingMap(STATS_MAP))?;
        let array: PerCpuArray<&MapData, Counter> = PerCpuArray::try_from(map)?;
        let mut stats = Stat::ALL
            .iter()
            .filter(|&&stat| stat != Stat::Received)
            .map(|&stat| {
                let per_cpu = array.get(&(stat as u32), 0)?;
                Ok((stat, Counter::sum(per_cpu.iter())))
            })
            .collect::<Result<Vec<_>, XdpError>>()?;
        // The program counts each frame once, under its verdict (one counter less per packet);
        // what it received is their sum.
        let received = Counter::sum(stats.iter().map(|(_, c)| c));
        stats.insert(0, (Stat::Received, received));
        Ok(stats)
    }

    /// Everything the metrics export about the fast path. The verdict counters are read now;
    /// the forwarding totals are those of the last flow poll (about a second old at most).
    pub fn snapshot(&self) -> XdpSnapshot {
        let verdicts = self.stats().unwrap_or_else(|e| {
            tracing::debug!(error = %e, "reading the XDP verdict counters failed");
            Vec::new()
        });
        XdpSnapshot {
            verdicts,
            forwarded: self.flows.totals(),
            flows_active: self.flows.len(),
            flows_capacity: self.flows.capacity() as usize,
        }
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

/// The system's default TTL, so forwarded packets look like the relay's own.
fn system_ttl() -> u8 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_default_ttl")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_TTL)
}

/// The fast path's counters at one moment, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XdpSnapshot {
    /// The program's global per-reason counters, summed over CPUs (every packet it ran on is
    /// in `Stat::Received` and in exactly one other).
    pub verdicts: Vec<(Stat, Counter)>,
    /// What the kernel forwarded itself (never seen by the userspace workers).
    pub forwarded: PathTotals,
    pub flows_active: usize,
    pub flows_capacity: usize,
}

/// What [`start`] did: where the program runs, or why it does not.
#[derive(Debug, Clone, Default)]
pub struct XdpStatus {
    /// (device, mode) for every attachment.
    pub attached: Vec<(String, AttachMode)>,
    /// Why some or all media devices stay on the userspace path.
    pub fallback: Vec<String>,
}

/// Loads and attaches the fast path per `config` for the media `addresses`. `auto` never
/// fails: anything missing leaves the relay on the userspace path with the reasons in the
/// status. `native`/`generic` fail when they cannot be honoured.
pub fn start(
    config: &XdpConfig,
    addresses: &[IpAddr],
) -> Result<(Option<FastPath>, XdpStatus), XdpError> {
    use crate::config::XdpMode;
    let mut status = XdpStatus::default();
    let strict = matches!(config.mode, XdpMode::Native | XdpMode::Generic);
    let mode_name = match config.mode {
        XdpMode::Off => {
            status.fallback.push("xdp.mode = \"off\"".into());
            return Ok((None, status));
        }
        XdpMode::Auto => "auto",
        XdpMode::Native => "native",
        XdpMode::Generic => "generic",
    };
    let devices = if config.interfaces.is_empty() {
        device::devices_for(addresses)
    } else {
        config.interfaces.clone()
    };
    if devices.is_empty() {
        let why = "no network device carries the media addresses (wildcard or loopback-only \
                   configuration); set xdp.interfaces"
            .to_owned();
        if strict {
            return Err(XdpError::NoDevice {
                mode: mode_name,
                why,
            });
        }
        status.fallback.push(why);
        return Ok((None, status));
    }
    let need_v4 = addresses.iter().any(IpAddr::is_ipv4);
    let need_v6 = addresses.iter().any(IpAddr::is_ipv6);
    // Decide per device first: loading (verifying) the program is only worth it when some
    // device will run it, and a loopback-only relay should not need BPF privileges at all.
    let mut plan = Vec::new();
    for name in devices {
        if config.enable_forwarding {
            for v6 in [false, true]
                .into_iter()
                .filter(|&v6| if v6 { need_v6 } else { need_v4 })
            {
                if let Err(e) = device::enable_forwarding(&name, v6) {
                    tracing::warn!(device = %name, error = %e, "cannot enable forwarding");
                }
            }
        }
        match device::facts(&name) {
            Ok(facts) => {
                if (need_v4 && !facts.forwarding_v4) || (need_v6 && !facts.forwarding_v6) {
                    tracing::warn!(
                        device = %name,
                        "forwarding is off on this device: the XDP program's route lookups \
                         fail and every packet goes to userspace"
                    );
                }
                match device::choose(config.mode, &facts, need_v4, need_v6) {
                    device::Choice::Skip(why) => status.fallback.push(format!("{name}: {why}")),
                    device::Choice::Attach { mode, why } => plan.push((name, mode, why)),
                }
            }
            Err(e) if !strict => status.fallback.push(format!("{name}: {e}")),
            Err(source) => return Err(XdpError::Device { name, source }),
        }
    }
    if plan.is_empty() {
        return Ok((None, status));
    }
    let mut fast_path = match FastPath::load(config.max_flows) {
        Ok(f) => f,
        Err(e) if !strict => {
            status
                .fallback
                .push(format!("cannot load the XDP program: {e}"));
            return Ok((None, status));
        }
        Err(e) => return Err(e),
    };
    for (name, mode, why) in plan {
        if let Some(why) = why {
            tracing::info!(device = %name, %mode, "XDP mode: {why}");
        }
        match fast_path.attach(&name, mode) {
            Ok(_) => status.attached.push((name, mode)),
            Err(e) if !strict => status.fallback.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    if status.attached.is_empty() {
        return Ok((None, status));
    }
    Ok((Some(fast_path), status))
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    ebpf.program_mut(XDP_PROGRAM)
        .ok_or(XdpError::MissingProgram(XDP_PROGRAM))?
        .try_into()
        .map_err(XdpError::Program)
}
