//! Network devices for the fast path: which devices carry the media addresses, what kind of
//! device each is, and which XDP mode `auto` picks for it.

use std::net::IpAddr;

use super::AttachMode;
use crate::config::XdpMode;

/// What the mode decision needs to know about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFacts {
    pub name: String,
    pub ifindex: u32,
    pub loopback: bool,
    /// Driver name as `ethtool -i` shows it ("veth", "virtio_net", "mlx5_core", ...).
    pub driver: Option<String>,
    /// `net.ipv{4,6}.conf.<dev>.forwarding`: bpf_fib_lookup refuses to route packets that
    /// arrive on a device without it (BPF_FIB_LKUP_RET_FWD_DISABLED).
    pub forwarding_v4: bool,
    pub forwarding_v6: bool,
}

/// The decision for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Attach in this mode; `why` explains a choice other than native.
    Attach {
        mode: AttachMode,
        why: Option<&'static str>,
    },
    /// Leave the device to the userspace path.
    Skip(&'static str),
}

/// The mode for a device. `native` and `generic` are what the operator asked for; `auto`
/// never picks something that can turn a working relay into a black hole.
pub fn choose(mode: XdpMode, dev: &DeviceFacts, need_v4: bool, need_v6: bool) -> Choice {
    match mode {
        XdpMode::Off => Choice::Skip("xdp.mode = \"off\""),
        XdpMode::Native => Choice::Attach {
            mode: AttachMode::Native,
            why: None,
        },
        XdpMode::Generic => Choice::Attach {
            mode: AttachMode::Generic,
            why: None,
        },
        XdpMode::Auto if dev.loopback => {
            Choice::Skip("loopback device: nothing to offload, userspace forwards")
        }
        XdpMode::Auto if need_v4 && !dev.forwarding_v4 => Choice::Skip(
            "net.ipv4.conf.<device>.forwarding is 0, so the kernel's route lookup for XDP refuses \
             to forward (enable it, or set xdp.enable_forwarding = true)",
        ),
        XdpMode::Auto if need_v6 && !dev.forwarding_v6 => Choice::Skip(
            "net.ipv6.conf.<device>.forwarding is 0, so the kernel's route lookup for XDP refuses \
             to forward (enable it, or set xdp.enable_forwarding = true)",
        ),
        // A native veth hands XDP_TX/redirect frames to its peer only when the peer runs XDP
        // itself (or has GRO on): otherwise they are dropped (xdp_tx_errors). The peer sits in
        // another namespace we cannot inspect; generic XDP transmits through the normal stack
        // and always arrives.
        XdpMode::Auto if dev.driver.as_deref() == Some("veth") => Choice::Attach {
            mode: AttachMode::Generic,
            why: Some(
                "veth: native XDP_TX needs an XDP program on the peer; generic mode works without \
                 (set xdp.mode = \"native\" when the peer runs one)",
            ),
        },
        XdpMode::Auto => Choice::Attach {
            mode: AttachMode::Native,
            why: None,
        },
    }
}

/// Reads a device's facts from the kernel.
pub fn facts(name: &str) -> std::io::Result<DeviceFacts> {
    let ifindex = nix::net::if_::if_nametoindex(name).map_err(std::io::Error::from)?;
    let kind = std::fs::read_to_string(format!("/sys/class/net/{name}/type")).unwrap_or_default();
    // ARPHRD_LOOPBACK; `lo` is ifindex 1 in every namespace, also where /sys shows another one.
    let loopback = kind.trim() == "772" || ifindex == 1;
    Ok(DeviceFacts {
        name: name.to_owned(),
        ifindex,
        loopback,
        driver: driver(name),
        forwarding_v4: read_flag(&forwarding_path(name, false)),
        forwarding_v6: read_flag(&forwarding_path(name, true)),
    })
}

/// The per-device forwarding sysctl, in the calling thread's network namespace.
pub fn forwarding_path(name: &str, v6: bool) -> String {
    let family = if v6 { "ipv6" } else { "ipv4" };
    format!("/proc/sys/net/{family}/conf/{name}/forwarding")
}

/// Turns forwarding on for a device (`xdp.enable_forwarding`).
pub fn enable_forwarding(name: &str, v6: bool) -> std::io::Result<()> {
    std::fs::write(forwarding_path(name, v6), "1")
}

fn read_flag(path: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.trim() == "1")
}

/// Devices that carry `addrs` (the media interfaces' addresses), in order, without repeats.
/// Addresses no device has (or wildcards) are left out.
pub fn devices_for(addrs: &[IpAddr]) -> Vec<String> {
    let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let ifaddrs: Vec<_> = ifaddrs.collect();
    let mut names: Vec<String> = Vec::new();
    for addr in addrs {
        let found = ifaddrs.iter().find(|i| {
            i.address.as_ref().is_some_and(|a| {
                a.as_sockaddr_in().map(|s| IpAddr::from(s.ip())) == Some(*addr)
                    || a.as_sockaddr_in6().map(|s| IpAddr::from(s.ip())) == Some(*addr)
            })
        });
        if let Some(i) = found
            && !names.contains(&i.interface_name)
        {
            names.push(i.interface_name.clone());
        }
    }
    names
}

/// 802.1Q devices on top of `parent`: (name, VLAN id), from /proc/net/vlan/config of the
/// calling thread's network namespace.
pub fn vlan_children(parent: &str) -> Vec<(String, u16)> {
    std::fs::read_to_string("/proc/thread-self/net/vlan/config")
        .map(|text| parse_vlan_config(&text, parent))
        .unwrap_or_default()
}

/// Parses /proc/net/vlan/config: two header lines, then `name | vid | parent`.
fn parse_vlan_config(text: &str, parent: &str) -> Vec<(String, u16)> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let mut cols = line.split('|').map(str::trim);
            let (name, vid, dev) = (cols.next()?, cols.next()?, cols.next()?);
            (dev == parent).then(|| Some((name.to_owned(), vid.parse().ok()?)))?
        })
        .collect()
}

/// The device's driver via the ETHTOOL_GDRVINFO ioctl (what `ethtool -i` prints).
fn driver(name: &str) -> Option<String> {
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: plain-data structs, all-zero is valid.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: a datagram socket only to carry the ioctl; closed by OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is ours and valid.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: req points to info, both live across the call; the kernel writes at most
    // size_of::<DrvInfo>() bytes into it.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SIOCETHTOOL,
            &mut req,
        )
    };
    if rc != 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    String::from_utf8(info.driver[..end].to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(driver: Option<&str>, loopback: bool) -> DeviceFacts {
        DeviceFacts {
            name: "eth0".into(),
            ifindex: 2,
            loopback,
            driver: driver.map(str::to_owned),
            forwarding_v4: true,
            forwarding_v6: false,
        }
    }

    #[test]
    fn auto_picks_native_generic_on_veth_and_skips_loopback() {
        assert!(matches!(
            choose(XdpMode::Auto, &dev(Some("virtio_net"), false), true, false),
            Choice::Attach {
                mode: AttachMode::Native,
                why: None
            }
        ));
        assert!(matches!(
            choose(XdpMode::Auto, &dev(Some("veth"), false), true, false),
            Choice::Attach {
                mode: AttachMode::Generic,
                why: Some(_)
            }
        ));
        assert!(matches!(
            choose(XdpMode::Auto, &dev(None, true), true, false),
            Choice::Skip(_)
        ));
        assert!(matches!(
            choose(XdpMode::Native, &dev(Some("veth"), false), true, true),
            Choice::Attach {
                mode: AttachMode::Native,
                ..
            }
        ));
        assert!(matches!(
            choose(XdpMode::Off, &dev(None, false), true, false),
            Choice::Skip(_)
        ));
    }

    #[test]
    fn auto_skips_devices_that_do_not_forward_the_families_in_use() {
        let d = dev(Some("virtio_net"), false);
        assert!(matches!(
            choose(XdpMode::Auto, &d, false, true),
            Choice::Skip(why) if why.contains("ipv6")
        ));
        let mut off = d.clone();
        off.forwarding_v4 = false;
        assert!(matches!(
            choose(XdpMode::Auto, &off, true, false),
            Choice::Skip(_)
        ));
        // Asked for explicitly: attach anyway (the daemon warns).
        assert!(matches!(
            choose(XdpMode::Native, &off, true, false),
            Choice::Attach { .. }
        ));
    }

    #[test]
    fn vlan_config_lists_children_of_the_parent() {
        let text = "VLAN Dev name    | VLAN ID\nName-Type: VLAN_NAME_TYPE_RAW_PLUS_VID_NO_PAD\n\
                    eth0.100       | 100  | eth0\neth1.7         | 7  | eth1\nbad | x | eth0\n";
        assert_eq!(
            parse_vlan_config(text, "eth0"),
            vec![("eth0.100".to_owned(), 100)]
        );
    }

    #[test]
    fn loopback_facts_come_from_the_kernel() {
        let lo = facts("lo").unwrap();
        assert!(lo.loopback);
        assert_eq!(lo.ifindex, 1);
        assert!(facts("no-such-device0").is_err());
    }
}
