//! Network-namespace topology on 198.18.0.0/15 (RFC 2544 benchmark range) and 2001:2::/48.
//!
//! [`Shape::Routed`], the relay between two links (a relay with a public and a private side):
//!
//! ```text
//!  {prefix}-caller            {prefix}-relay                 {prefix}-callee
//!  eth0 198.18.1.2/24 ── veth ── caller 198.18.1.1/24
//!       2001:2:0:1::2/64           2001:2:0:1::1/64
//!                                callee 198.18.2.1/24 ── veth ── eth0 198.18.2.2/24
//!                                       2001:2:0:2::1/64           2001:2:0:2::2/64
//! ```
//!
//! [`Shape::OneArm`], everyone on one bridged segment (the common single-NIC media relay: it
//! answers on the device it received on, so the XDP program sends with XDP_TX). The bridge
//! lives in a fourth namespace, `{prefix}-lan`; the addresses are those above with /16 and
//! /48 prefixes, so everyone is on-link, and the relay's device `lan` holds both of its.
//!
//! ```text
//!  {prefix}-caller eth0 ── veth ── caller ┐
//!  {prefix}-relay  lan  ── veth ── relay  ├ br0 in {prefix}-lan
//!  {prefix}-callee eth0 ── veth ── callee ┘
//! ```
//!
//! Built with the `ip` command (iproute2). Building is idempotent (leftovers of the same prefix
//! are removed first) and a [`Topology`] removes its namespaces when dropped, which also removes
//! the veth pairs inside them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefixes of the topologies this process built and still owns, so a signal handler can
/// remove them ([`down_all_live`]) when Drop will not run.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<String>> {
    // A panic while holding the lock leaves a plain Vec behind: still usable.
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Removes every topology this process built and has not torn down yet; for a SIGINT/SIGTERM
/// handler (the process is about to exit without running destructors).
pub fn down_all_live() {
    let prefixes = live().clone();
    for prefix in prefixes {
        if let Err(e) = down(&prefix) {
            eprintln!("topology {prefix}: teardown failed: {e}");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopoError {
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("cannot run `ip` (install iproute2): {0}")]
    Spawn(std::io::Error),
    #[error("cannot enter network namespace {ns}: {source}")]
    Enter { ns: String, source: std::io::Error },
    #[error("prefix `{0}` must be 1-12 characters of [a-z0-9-]")]
    Prefix(String),
}

/// The three roles of the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Caller,
    Relay,
    Callee,
}

impl Role {
    fn suffix(self) -> &'static str {
        match self {
            Role::Caller => "caller",
            Role::Relay => "relay",
            Role::Callee => "callee",
        }
    }
}

pub const CALLER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const RELAY_CALLER_SIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const RELAY_CALLEE_SIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
pub const CALLEE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
pub const CALLER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 2);
pub const RELAY_CALLER_SIDE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 1);
pub const RELAY_CALLEE_SIDE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 1);
pub const CALLEE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 2);

/// Device names inside the namespaces.
pub const ENDPOINT_DEV: &str = "eth0";
pub const RELAY_CALLER_DEV: &str = "caller";
pub const RELAY_CALLEE_DEV: &str = "callee";
/// The relay's only device in [`Shape::OneArm`].
pub const RELAY_LAN_DEV: &str = "lan";
/// The bridge port in `{prefix}-lan` that leads to the relay: a veth into which the relay's
/// XDP program sends with XDP_TX, so it must run an XDP program itself (see testbed.rs).
pub const LAN_RELAY_PORT: &str = "relay";
/// Namespace suffix of the bridge in [`Shape::OneArm`].
const LAN_SUFFIX: &str = "lan";

/// How the relay is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    /// Two links, one per side: packets leave through the other device (DEVMAP redirect).
    #[default]
    Routed,
    /// One bridged segment: packets leave through the device they came in on (XDP_TX).
    OneArm,
}

/// A live topology; dropping it tears it down unless [`Topology::keep`] was called.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    shape: Shape,
    keep: bool,
}

impl Topology {
    /// Builds the routed topology under `prefix` (namespaces `{prefix}-caller|relay|callee`).
    pub fn up(prefix: &str) -> Result<Topology, TopoError> {
        Topology::up_shaped(prefix, Shape::Routed)
    }

    /// Builds the topology of `shape` under `prefix`.
    pub fn up_shaped(prefix: &str, shape: Shape) -> Result<Topology, TopoError> {
        validate_prefix(prefix)?;
        down(prefix)?;
        // Own it from here: a failure half-way through tears down what was built.
        let topo = Topology {
            prefix: prefix.to_owned(),
            shape,
            keep: false,
        };
        live().push(prefix.to_owned());
        for role in [Role::Caller, Role::Relay, Role::Callee] {
            ip(&["netns", "add", &topo.ns(role)])?;
            ip(&["-n", &topo.ns(role), "link", "set", "lo", "up"])?;
        }
        if shape == Shape::OneArm {
            topo.one_arm()?;
            return Ok(topo);
        }
        let (caller, relay, callee) = (
            topo.ns(Role::Caller),
            topo.ns(Role::Relay),
            topo.ns(Role::Callee),
        );
        link_pair(&caller, ENDPOINT_DEV, &relay, RELAY_CALLER_DEV)?;
        link_pair(&callee, ENDPOINT_DEV, &relay, RELAY_CALLEE_DEV)?;
        let v4 = |a: Ipv4Addr| format!("{a}/24");
        let v6 = |a: Ipv6Addr| format!("{a}/64");
        addr(&caller, ENDPOINT_DEV, &v4(CALLER_V4), &v6(CALLER_V6))?;
        addr(
            &relay,
            RELAY_CALLER_DEV,
            &v4(RELAY_CALLER_SIDE_V4),
            &v6(RELAY_CALLER_SIDE_V6),
        )?;
        addr(
            &relay,
            RELAY_CALLEE_DEV,
            &v4(RELAY_CALLEE_SIDE_V4),
            &v6(RELAY_CALLEE_SIDE_V6),
        )?;
        addr(&callee, ENDPOINT_DEV, &v4(CALLEE_V4), &v6(CALLEE_V6))?;
        // Endpoints reach the whole benchmark range through the relay's address on their link.
        route(&caller, "198.18.0.0/15", &RELAY_CALLER_SIDE_V4.to_string())?;
        route(&caller, "2001:2::/48", &RELAY_CALLER_SIDE_V6.to_string())?;
        route(&callee, "198.18.0.0/15", &RELAY_CALLEE_SIDE_V4.to_string())?;
        route(&callee, "2001:2::/48", &RELAY_CALLEE_SIDE_V6.to_string())?;
        Ok(topo)
    }

    fn one_arm(&self) -> Result<(), TopoError> {
        let lan = self.lan_ns();
        ip(&["netns", "add", &lan])?;
        ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lan, "link", "set", "br0", "up"])?;
        for (role, dev, port) in [
            (Role::Caller, ENDPOINT_DEV, "caller"),
            (Role::Relay, RELAY_LAN_DEV, LAN_RELAY_PORT),
            (Role::Callee, ENDPOINT_DEV, "callee"),
        ] {
            link_pair(&self.ns(role), dev, &lan, port)?;
            ip(&["-n", &lan, "link", "set", port, "master", "br0"])?;
        }
        let v4 = |a: Ipv4Addr| format!("{a}/16");
        let v6 = |a: Ipv6Addr| format!("{a}/48");
        for (role, dev, a4, a6) in [
            (Role::Caller, ENDPOINT_DEV, CALLER_V4, CALLER_V6),
            (
                Role::Relay,
                RELAY_LAN_DEV,
                RELAY_CALLER_SIDE_V4,
                RELAY_CALLER_SIDE_V6,
            ),
            (
                Role::Relay,
                RELAY_LAN_DEV,
                RELAY_CALLEE_SIDE_V4,
                RELAY_CALLEE_SIDE_V6,
            ),
            (Role::Callee, ENDPOINT_DEV, CALLEE_V4, CALLEE_V6),
        ] {
            addr(&self.ns(role), dev, &v4(a4), &v6(a6))?;
        }
        Ok(())
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The relay's devices: where its XDP program (or the reflector) is attached.
    pub fn relay_devs(&self) -> &'static [&'static str] {
        match self.shape {
            Shape::Routed => &[RELAY_CALLER_DEV, RELAY_CALLEE_DEV],
            Shape::OneArm => &[RELAY_LAN_DEV],
        }
    }

    /// The bridge's namespace ([`Shape::OneArm`]).
    pub fn lan_ns(&self) -> String {
        format!("{}-{LAN_SUFFIX}", self.prefix)
    }

    /// A prefix unique to this process and call, for tests running in parallel.
    pub fn unique_prefix(tag: &str) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut prefix = format!("{tag}{}-{n}", std::process::id() % 100_000);
        prefix.truncate(12);
        prefix
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Namespace name of `role`.
    pub fn ns(&self, role: Role) -> String {
        format!("{}-{}", self.prefix, role.suffix())
    }

    /// Leaves the topology up after drop (for `sluice-bench topo up`).
    pub fn keep(mut self) {
        self.keep = true;
    }

    /// A permanent neighbour entry in `role`'s namespace: route lookups there (the XDP
    /// program's `bpf_fib_lookup` included) find `mac` for `addr` without ARP/ND traffic.
    pub fn static_neighbour(
        &self,
        role: Role,
        addr: IpAddr,
        mac: &str,
        dev: &str,
    ) -> Result<(), TopoError> {
        let (ns, addr) = (self.ns(role), addr.to_string());
        ip(&[
            "-n",
            &ns,
            "neigh",
            "replace",
            &addr,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ])
    }

    /// IPv4 and IPv6 forwarding on in `role`'s namespace: `bpf_fib_lookup` only routes packets
    /// that arrive on a forwarding device (see docs/xdp.md).
    pub fn enable_forwarding(&self, role: Role) -> Result<(), TopoError> {
        ip(&[
            "netns",
            "exec",
            &self.ns(role),
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.forwarding=1",
            "net.ipv6.conf.all.forwarding=1",
        ])
    }

    /// Moves `dev`'s receive processing (NAPI) in `role`'s namespace into kernel threads.
    pub fn thread_napi(&self, role: Role, dev: &str) -> Result<(), TopoError> {
        // sysfs shows the devices of the namespace it was mounted in; `ip netns exec` mounts
        // the one it enters.
        ip(&[
            "netns",
            "exec",
            &self.ns(role),
            "sh",
            "-c",
            &format!("echo 1 > /sys/class/net/{dev}/threaded"),
        ])
    }

    /// Runs `f` on a thread inside `role`'s namespace. Sockets and BPF links created there stay
    /// in that namespace when used from other threads afterwards.
    pub fn run_in<R: Send>(
        &self,
        role: Role,
        f: impl FnOnce() -> R + Send,
    ) -> Result<R, TopoError> {
        run_in_netns(&self.ns(role), f)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if !self.keep
            && let Err(e) = down(&self.prefix)
        {
            eprintln!("topology {}: teardown failed: {e}", self.prefix);
        }
        live().retain(|p| *p != self.prefix);
    }
}

/// Removes every namespace of `prefix` (and with them their veth pairs). Idempotent.
pub fn down(prefix: &str) -> Result<(), TopoError> {
    validate_prefix(prefix)?;
    let suffixes = [Role::Caller, Role::Relay, Role::Callee].map(Role::suffix);
    for suffix in suffixes.into_iter().chain([LAN_SUFFIX]) {
        let ns = format!("{prefix}-{suffix}");
        if std::path::Path::new("/run/netns").join(&ns).exists() {
            ip(&["netns", "delete", &ns])?;
        }
    }
    Ok(())
}

/// Runs `f` on a fresh thread whose network namespace is `ns` (setns(2) is per thread).
pub fn run_in_netns<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> Result<R, TopoError> {
    let enter_err = |source| TopoError::Enter {
        ns: ns.to_owned(),
        source,
    };
    let file = std::fs::File::open(format!("/run/netns/{ns}")).map_err(enter_err)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| enter_err(std::io::Error::from(e)))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Address of `role` on the link towards the other side, for tests that need "the" address.
pub fn addr_of(role: Role, v6: bool) -> IpAddr {
    match (role, v6) {
        (Role::Caller, false) => CALLER_V4.into(),
        (Role::Caller, true) => CALLER_V6.into(),
        (Role::Relay, false) => RELAY_CALLER_SIDE_V4.into(),
        (Role::Relay, true) => RELAY_CALLER_SIDE_V6.into(),
        (Role::Callee, false) => CALLEE_V4.into(),
        (Role::Callee, true) => CALLEE_V6.into(),
    }
}

fn validate_prefix(prefix: &str) -> Result<(), TopoError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 12
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(TopoError::Prefix(prefix.to_owned()))
    }
}

fn link_pair(ns_a: &str, dev_a: &str, ns_b: &str, dev_b: &str) -> Result<(), TopoError> {
    ip(&[
        "-n", ns_a, "link", "add", dev_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b,
    ])?;
    ip(&["-n", ns_a, "link", "set", dev_a, "up"])?;
    ip(&["-n", ns_b, "link", "set", dev_b, "up"])
}

fn addr(ns: &str, dev: &str, v4: &str, v6: &str) -> Result<(), TopoError> {
    ip(&["-n", ns, "addr", "add", v4, "dev", dev])?;
    // nodad: the address is usable at once instead of after duplicate address detection.
    ip(&["-n", ns, "-6", "addr", "add", v6, "dev", dev, "nodad"])
}

fn route(ns: &str, dst: &str, via: &str) -> Result<(), TopoError> {
    ip(&["-n", ns, "route", "add", dst, "via", via])
}

fn ip(args: &[&str]) -> Result<(), TopoError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(TopoError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TopoError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_checked() {
        assert!(validate_prefix("sb").is_ok());
        assert!(validate_prefix("t12345-0").is_ok());
        for bad in ["", "UPPER", "has space", "much-too-long-prefix", "a/b"] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unique_prefixes_differ_and_fit() {
        let a = Topology::unique_prefix("t");
        let b = Topology::unique_prefix("t");
        assert_ne!(a, b);
        assert!(validate_prefix(&a).is_ok(), "{a}");
    }

    #[test]
    fn addresses_are_in_benchmark_ranges() {
        for role in [Role::Caller, Role::Relay, Role::Callee] {
            match addr_of(role, false) {
                IpAddr::V4(a) => assert_eq!(a.octets()[..2], [198, 18]),
                IpAddr::V6(_) => unreachable!(),
            }
            match addr_of(role, true) {
                IpAddr::V6(a) => assert_eq!(a.segments()[..2], [0x2001, 2]),
                IpAddr::V4(_) => unreachable!(),
            }
        }
    }

    #[test]
    fn topology_comes_up_and_goes_away() {
        if !crate::privileged::privileged_or_skip("topology_comes_up_and_goes_away") {
            return;
        }
        for shape in [Shape::Routed, Shape::OneArm] {
            let prefix = Topology::unique_prefix("tt");
            let topo = Topology::up_shaped(&prefix, shape).expect("topology up");
            // Both endpoints reach the relay, each from its own address.
            for (role, from, to) in [
                (Role::Caller, CALLER_V4, RELAY_CALLER_SIDE_V4),
                (Role::Callee, CALLEE_V4, RELAY_CALLEE_SIDE_V4),
            ] {
                let relay_addr = std::net::SocketAddr::new(to.into(), 40_000);
                let receiver = topo
                    .run_in(Role::Relay, || std::net::UdpSocket::bind(relay_addr))
                    .unwrap()
                    .expect("bind in relay namespace");
                topo.run_in(role, || {
                    let s = std::net::UdpSocket::bind((from, 0)).unwrap();
                    s.send_to(b"hello", relay_addr).unwrap();
                })
                .unwrap();
                receiver
                    .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .unwrap();
                let mut buf = [0u8; 16];
                let (n, src) = receiver
                    .recv_from(&mut buf)
                    .unwrap_or_else(|e| panic!("{shape:?}: datagram from {role:?}: {e}"));
                assert_eq!(&buf[..n], b"hello");
                assert_eq!(src.ip(), IpAddr::from(from));
            }
            assert_eq!(
                topo.relay_devs().len(),
                if shape == Shape::OneArm { 1 } else { 2 }
            );
            let lan = topo.lan_ns();
            drop(topo);
            for ns in [format!("{prefix}-relay"), lan] {
                assert!(!std::path::Path::new("/run/netns").join(ns).exists());
            }
        }
    }
}
