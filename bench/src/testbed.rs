//! Where a run's traffic flows: loopback (everything in the harness's namespace) or the
//! caller/relay/callee namespace topology of [`crate::topo`], where packets cross veth pairs
//! and the relay's XDP fast path can take over.
//!
//! On the topology, both endpoint devices run the pass-through XDP program: a veth drops
//! frames that XDP sends into it (XDP_TX, redirect) unless its peer runs an XDP program, and
//! the helpers stay in place for every target so the endpoints' receive path costs the same
//! whoever forwards. On the one-armed shape the bridge's port towards the relay runs it too: the
//! relay's XDP_TX frames go into that veth. The endpoints compute UDP checksums in software (no
//! TX offload). The reflector target replaces the relay with the minimal XDP_TX reflector on
//! the relay's devices.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};
use sluice::datapath::xdp::AttachMode;
use sluice::datapath::xdp::aux_prog::{AuxKind, AuxProgram};

use crate::topo::{self, Role, Shape, Topology};

/// The namespaces and the XDP programs the harness itself attached.
pub struct Testbed {
    // Field order = drop order: programs detach before the namespaces go.
    reflectors: Vec<AuxProgram>,
    _helpers: Vec<AuxProgram>,
    topo: Topology,
}

impl Testbed {
    /// Builds the topology under a fresh prefix, with the pass-through helpers attached.
    pub fn up(shape: Shape) -> Result<Testbed> {
        let topo = Topology::up_shaped(&Topology::unique_prefix("sb"), shape)
            .context("namespace topology")?;
        let mut helpers = Vec::new();
        for role in [Role::Caller, Role::Callee] {
            // With TX checksum offload a veth hands over packets whose UDP checksum holds only
            // the pseudo-header sum, and XDP cannot tell: the reflector would send them back
            // unchanged and the receiver drop them. The endpoints checksum in software instead,
            // the same work whoever forwards. (The fast path copes either way: xdp_relay.rs.)
            let ns = topo.ns(role);
            let out = std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns,
                    "ethtool",
                    "-K",
                    topo::ENDPOINT_DEV,
                    "tx",
                    "off",
                ])
                .output()
                .context("running ethtool (cargo xtask setup installs it)")?;
            if !out.status.success() {
                anyhow::bail!(
                    "ethtool -K {} tx off in {ns}: {}",
                    topo::ENDPOINT_DEV,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let helper = topo
                .run_in(role, || {
                    AuxProgram::attach(AuxKind::Pass, topo::ENDPOINT_DEV, AttachMode::Native)
                })?
                .with_context(|| format!("XDP pass-through helper on {}", topo.ns(role)))?;
            helpers.push(helper);
        }
        if shape == Shape::OneArm {
            let helper = topo::run_in_netns(&topo.lan_ns(), || {
                AuxProgram::attach(AuxKind::Pass, topo::LAN_RELAY_PORT, AttachMode::Native)
            })?
            .context("XDP pass-through helper on the bridge port towards the relay")?;
            helpers.push(helper);
        }
        Ok(Testbed {
            reflectors: Vec::new(),
            _helpers: helpers,
            topo,
        })
    }

    pub fn topo(&self) -> &Topology {
        &self.topo
    }

    /// Attaches a reflector to the relay's devices; returns their program ids.
    pub fn attach_reflectors(&mut self, kind: AuxKind) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for &dev in self.topo.relay_devs() {
            let reflector = self
                .topo
                .run_in(Role::Relay, || {
                    AuxProgram::attach(kind, dev, AttachMode::Native)
                })?
                .with_context(|| format!("XDP reflector on {dev}"))?;
            ids.push(reflector.program_id()?);
            self.reflectors.push(reflector);
        }
        Ok(ids)
    }

    /// Moves the receive processing (NAPI, where XDP runs) of the relay's devices into kernel
    /// threads. On a veth the frames a socket sends are otherwise processed in softirq on the
    /// sender's CPU straight after each send, so every program run follows the generator's
    /// send path through the caches; in a thread, frames queued meanwhile are processed back
    /// to back, as a NIC's receive batches are. Only after an XDP program is attached: a veth
    /// has no NAPI instance before (the kernel then refuses with EIO, reported here).
    pub fn thread_relay_napi(&self) -> Result<()> {
        for &dev in self.topo.relay_devs() {
            self.topo
                .thread_napi(Role::Relay, dev)
                .with_context(|| format!("threaded NAPI on {dev}"))?;
        }
        Ok(())
    }

    /// The namespace of `role`.
    pub fn ns(&self, role: Role) -> String {
        self.topo.ns(role)
    }
}

/// Addresses of a run's parties, and the namespaces their sockets live in (None = the
/// harness's own).
#[derive(Debug, Clone)]
pub struct Placement {
    pub caller_ip: IpAddr,
    pub callee_ip: IpAddr,
    /// Where the caller/callee send when no relay tells them otherwise (the reflector).
    pub relay_ip_for_caller: IpAddr,
    pub relay_ip_for_callee: IpAddr,
    pub caller_ns: Option<String>,
    pub callee_ns: Option<String>,
    pub relay_ns: Option<String>,
}

impl Placement {
    pub fn loopback() -> Placement {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Placement {
            caller_ip: lo,
            callee_ip: lo,
            relay_ip_for_caller: lo,
            relay_ip_for_callee: lo,
            caller_ns: None,
            callee_ns: None,
            relay_ns: None,
        }
    }

    pub fn on(bed: &Testbed) -> Placement {
        Placement {
            caller_ip: topo::CALLER_V4.into(),
            callee_ip: topo::CALLEE_V4.into(),
            relay_ip_for_caller: topo::RELAY_CALLER_SIDE_V4.into(),
            relay_ip_for_callee: topo::RELAY_CALLEE_SIDE_V4.into(),
            caller_ns: Some(bed.ns(Role::Caller)),
            callee_ns: Some(bed.ns(Role::Callee)),
            relay_ns: Some(bed.ns(Role::Relay)),
        }
    }

    /// Runs `f` in `ns` (or right here when None).
    pub fn run_in<R: Send>(ns: Option<&str>, f: impl FnOnce() -> R + Send) -> Result<R> {
        match ns {
            Some(ns) => Ok(topo::run_in_netns(ns, f)?),
            None => Ok(f()),
        }
    }
}
