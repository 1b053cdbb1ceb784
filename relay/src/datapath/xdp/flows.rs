//! The daemon's side of the flow table: installs the flows a stream should have in the kernel,
//! removes them before the stream's ports are released, and copies the kernel's per-flow
//! counters into the stream's shared statistics.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, PerCpuValues};
use sluice_common::{FLOW_RTP, FlowAction, FlowKey, FlowStats, NO_FLOW_SLOT, v4_padded};

use super::XdpError;
use super::lookup::{FlowIndex, LookupError, LookupMaps};
use super::merge::{FlowAccount, FlowTotals, PathTotals, merge};
use crate::session::StreamId;
use crate::session::offload::{Component, FlowSpec};
use crate::session::stats::StreamShared;

struct Entry {
    spec: FlowSpec,
    key: FlowKey,
    slot: u32,
    /// What of the slot's counters [`FlowTable::totals`] already holds.
    account: FlowAccount,
}

struct Installed {
    shared: Arc<StreamShared>,
    entries: Vec<Entry>,
    /// Totals of flows already removed (a relatch restarts a flow's counters), per ingress leg.
    retired: [FlowTotals; 2],
    /// Packets received per leg at the last publish: when the count moves, the leg is alive
    /// (the program keeps no clock; the media timeout needs seconds, not packet times).
    rx_seen: [u64; 2],
}

/// The kernel maps of the flow lookup.
pub(super) struct KernelMaps {
    pub ports: Array<MapData, u32>,
    pub actions: Array<MapData, FlowAction>,
    pub hash: BpfHashMap<MapData, FlowKey, u32>,
    pub epoch: Array<MapData, u64>,
}

impl LookupMaps for KernelMaps {
    type Error = MapError;
    fn set_action(&mut self, slot: u32, action: &FlowAction) -> Result<(), MapError> {
        self.actions.set(slot, action, 0)
    }
    fn set_port(&mut self, port: u16, value: u32) -> Result<(), MapError> {
        self.ports.set(u32::from(port), value, 0)
    }
    fn insert_hash(&mut self, key: &FlowKey, value: u32) -> Result<(), MapError> {
        self.hash.insert(key, value, 0)
    }
    fn remove_hash(&mut self, key: &FlowKey) -> Result<(), MapError> {
        match self.hash.remove(key) {
            Err(MapError::KeyNotFound) => Ok(()),
            other => other,
        }
    }
}

impl From<LookupError<MapError>> for XdpError {
    fn from(e: LookupError<MapError>) -> XdpError {
        match e {
            LookupError::Full => XdpError::ActionsFull,
            LookupError::Map(e) => XdpError::Map(e),
        }
    }
}

/// What [`FlowTable::apply`] changed, for events.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Legs whose RTP is now forwarded in the kernel and was not before.
    pub offloaded: Vec<usize>,
}

pub struct FlowTable {
    maps: KernelMaps,
    index: FlowIndex,
    route_epoch: u64,
    stats: PerCpuArray<MapData, FlowStats>,
    free_slots: Vec<u32>,
    streams: HashMap<StreamId, Installed>,
    ttl: u8,
    nr_cpus: usize,
    capacity: u32,
    /// Everything the kernel forwarded since start, removed flows included (for metrics).
    totals: PathTotals,
}

impl FlowTable {
    pub(super) fn new(
        maps: KernelMaps,
        stats: PerCpuArray<MapData, FlowStats>,
        max_flows: u32,
        ttl: u8,
    ) -> Result<FlowTable, XdpError> {
        let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| XdpError::Cpus(e))?;
        let action_slots = maps.actions.len();
        Ok(FlowTable {
            maps,
            index: FlowIndex::new(action_slots),
            route_epoch: 0,
            stats,
            // Popped from the end: low slots first.
            free_slots: (0..max_flows).rev().collect(),
            streams: HashMap::new(),
            ttl,
            nr_cpus,
            capacity: max_flows,
            totals: PathTotals::default(),
        })
    }

    /// Flow slots in the kernel table.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// What the kernel forwarded since start, as of the last [`FlowTable::poll`] or flow
    /// removal. Never decreases.
    pub fn totals(&self) -> PathTotals {
        self.totals
    }

    /// Flows installed now.
    pub fn len(&self) -> usize {
        self.streams.values().map(|s| s.entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes the kernel forward exactly `specs` for `stream`. A flow that cannot be installed
    /// (table full) stays in userspace, which forwards it correctly, just slower.
    pub fn apply(
        &mut self,
        stream: StreamId,
        specs: &[FlowSpec],
        shared: &Arc<StreamShared>,
    ) -> Result<Applied, XdpError> {
        let installed = self.streams.entry(stream).or_insert_with(|| Installed {
            shared: shared.clone(),
            entries: Vec::new(),
            retired: Default::default(),
            rx_seen: [0; 2],
        });
        let was = offloaded_legs(&installed.entries);
        // Remove what is no longer wanted first, so its slot can serve a new flow.
        let mut i = 0;
        while i < installed.entries.len() {
            let e = &installed.entries[i];
            let wanted = specs
                .iter()
                .any(|s| s.component == e.spec.component && s.ingress_leg == e.spec.ingress_leg);
            if wanted {
                i += 1;
                continue;
            }
            let mut e = installed.entries.swap_remove(i);
            remove_entry(
                &mut self.index,
                &mut self.maps,
                &self.stats,
                &mut e,
                &mut installed.retired,
                &mut self.totals,
            );
            self.free_slots.push(e.slot);
        }
        let mut result = Ok(());
        for spec in specs {
            let Some(key) = flow_key(spec.local) else {
                continue;
            };
            let action = |slot| flow_action(spec, slot, self.ttl);
            match installed.entries.iter_mut().find(|e| {
                e.spec.component == spec.component && e.spec.ingress_leg == spec.ingress_leg
            }) {
                Some(e) if e.spec == *spec => {}
                Some(e) => {
                    if e.spec.remote != spec.remote {
                        // Relatched: the old source's counters are final; the sequence numbers
                        // of the new one start afresh.
                        if let Some(old) = read(&self.stats, e.slot) {
                            e.account
                                .account(&old, e.spec.ingress_leg, &mut self.totals);
                            installed.retired[e.spec.ingress_leg].add(&old);
                        }
                        zero(&mut self.stats, e.slot, self.nr_cpus)?;
                        e.account.reset();
                    }
                    if e.key != key
                        && let Err(err) = self.index.remove(&mut self.maps, &e.key)
                    {
                        tracing::warn!(stream, error = %err, "removing an XDP flow failed");
                    }
                    let Some(a) = action(e.slot) else { continue };
                    self.index.upsert(&mut self.maps, key, &a)?;
                    e.spec = *spec;
                    e.key = key;
                }
                None => {
                    let Some(slot) = self.free_slots.pop() else {
                        tracing::warn!(stream, "XDP flow table full: this flow stays in userspace");
                        continue;
                    };
                    let Some(a) = action(slot) else {
                        self.free_slots.push(slot);
                        continue;
                    };
                    let installed_ok = zero(&mut self.stats, slot, self.nr_cpus).and_then(|()| {
                        self.index
                            .upsert(&mut self.maps, key, &a)
                            .map_err(XdpError::from)
                    });
                    if let Err(e) = installed_ok {
                        self.free_slots.push(slot);
                        result = Err(e);
                        continue;
                    }
                    installed.entries.push(Entry {
                        spec: *spec,
                        key,
                        slot,
                        account: FlowAccount::default(),
                    });
                }
            }
        }
        let now = offloaded_legs(&installed.entries);
        for (leg, k) in installed.shared.kernel.iter().enumerate() {
            k.offloaded.store(now[leg], Relaxed);
        }
        let applied = Applied {
            offloaded: (0..2).filter(|&l| now[l] && !was[l]).collect(),
        };
        if installed.entries.is_empty() {
            // Keep the retired totals visible: copy them once more before forgetting.
            publish(installed, &self.stats, &mut self.totals);
            self.streams.remove(&stream);
        }
        result.map(|()| applied)
    }

    /// Removes every flow of `stream` (before its sockets close and its ports are released),
    /// publishing the final kernel counters.
    pub fn remove_stream(&mut self, stream: StreamId) {
        let Some(mut installed) = self.streams.remove(&stream) else {
            return;
        };
        // Out of the kernel's lookup first, so the counters read next are final.
        for e in &installed.entries {
            if let Err(err) = self.index.remove(&mut self.maps, &e.key) {
                tracing::warn!(stream, error = %err, "removing an XDP flow failed");
            }
        }
        publish(&mut installed, &self.stats, &mut self.totals);
        for e in installed.entries.drain(..) {
            self.free_slots.push(e.slot);
        }
        for k in &installed.shared.kernel {
            k.offloaded.store(false, Relaxed);
        }
    }

    /// Copies every offloaded stream's kernel counters into its shared statistics and the
    /// path totals.
    pub fn poll(&mut self) {
        // Routes the program cached before now are re-resolved on their next packet.
        self.route_epoch += 1;
        if let Err(e) = self.maps.epoch.set(0, self.route_epoch, 0) {
            tracing::debug!(error = %e, "advancing the XDP route epoch failed");
        }
        for installed in self.streams.values_mut() {
            publish(installed, &self.stats, &mut self.totals);
        }
    }

    /// [`FlowTable::poll`] for some streams only: a query about one call reads its flows now
    /// instead of reporting counters up to a poll interval old.
    pub fn poll_streams(&mut self, ids: impl IntoIterator<Item = StreamId>) {
        for id in ids {
            if let Some(installed) = self.streams.get_mut(&id) {
                publish(installed, &self.stats, &mut self.totals);
            }
        }
    }
}

fn offloaded_legs(entries: &[Entry]) -> [bool; 2] {
    let mut legs = [false; 2];
    for e in entries
        .iter()
        .filter(|e| e.spec.component == Component::Rtp)
    {
        legs[e.spec.ingress_leg] = true;
    }
    legs
}

fn remove_entry(
    index: &mut FlowIndex,
    maps: &mut KernelMaps,
    stats: &PerCpuArray<MapData, FlowStats>,
    e: &mut Entry,
    retired: &mut [FlowTotals; 2],
    totals: &mut PathTotals,
) {
    if let Err(err) = index.remove(maps, &e.key) {
        tracing::warn!(error = %err, "removing an XDP flow failed");
    }
    if let Some(last) = read(stats, e.slot) {
        e.account.account(&last, e.spec.ingress_leg, totals);
        retired[e.spec.ingress_leg].add(&last);
    }
}

/// None when the read fails: accounting skips it (zeros would look like a restarted flow).
fn read(stats: &PerCpuArray<MapData, FlowStats>, slot: u32) -> Option<FlowTotals> {
    match stats.get(&slot, 0) {
        Ok(per_cpu) => Some(merge(&per_cpu)),
        Err(e) => {
            tracing::debug!(slot, error = %e, "reading XDP flow counters failed");
            None
        }
    }
}

fn zero(
    stats: &mut PerCpuArray<MapData, FlowStats>,
    slot: u32,
    nr_cpus: usize,
) -> Result<(), XdpError> {
    let values =
        PerCpuValues::try_from(vec![FlowStats::default(); nr_cpus]).map_err(XdpError::Cpus)?;
    stats.set(slot, values, 0)?;
    Ok(())
}

/// Per leg: what the kernel received from it (flows with that ingress) and sent to it (flows
/// of the other ingress), plus retired flows. Adds the growth since the last read to `totals`.
fn publish(
    installed: &mut Installed,
    stats: &PerCpuArray<MapData, FlowStats>,
    totals: &mut PathTotals,
) {
    let mut by_ingress = installed.retired;
    for e in &mut installed.entries {
        let Some(now) = read(stats, e.slot) else {
            continue;
        };
        e.account.account(&now, e.spec.ingress_leg, totals);
        by_ingress[e.spec.ingress_leg].add(&now);
    }
    let now = crate::clock::now_ns();
    for (leg, k) in installed.shared.kernel.iter().enumerate() {
        let rx = &by_ingress[leg];
        let tx = &by_ingress[1 - leg];
        k.rx_packets.store(rx.packets, Relaxed);
        k.rx_bytes.store(rx.bytes, Relaxed);
        k.tx_packets.store(tx.packets, Relaxed);
        k.tx_bytes.store(tx.bytes, Relaxed);
        k.rtp_expected.store(rx.rtp_expected, Relaxed);
        k.rtp_received.store(rx.rtp_received, Relaxed);
        if rx.packets > installed.rx_seen[leg] {
            installed.rx_seen[leg] = rx.packets;
            k.last_rx_ns.store(now, Relaxed);
        }
    }
}

const IPPROTO_UDP: u8 = 17;

fn flow_key(local: SocketAddr) -> Option<FlowKey> {
    match local.ip() {
        IpAddr::V4(a) => Some(FlowKey::v4(a.octets(), local.port())),
        IpAddr::V6(a) => Some(FlowKey::v6(a.octets(), local.port())),
    }
}

fn addr_bytes(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => v4_padded(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The kernel entry for `spec`; None when its addresses mix families (never offloaded).
fn flow_action(spec: &FlowSpec, slot: u32, ttl: u8) -> Option<FlowAction> {
    let v6 = spec.local.is_ipv6();
    if [spec.remote, spec.egress_local, spec.egress_remote]
        .iter()
        .any(|a| a.is_ipv6() != v6)
    {
        return None;
    }
    let ports = |a: SocketAddr, b: SocketAddr| {
        let (a, b) = (a.port().to_be_bytes(), b.port().to_be_bytes());
        [a[0], a[1], b[0], b[1]]
    };
    let (src, local) = (addr_bytes(spec.remote.ip()), addr_bytes(spec.local.ip()));
    let (new_src, new_dst) = (
        addr_bytes(spec.egress_local.ip()),
        addr_bytes(spec.egress_remote.ip()),
    );
    let pseudo = |a: &[u8; 16], b: &[u8; 16]| {
        use sluice_common::csum::{fold, pseudo_v4, pseudo_v6};
        let v4 = |x: &[u8; 16]| [x[0], x[1], x[2], x[3]];
        // Length 0: the program adds each packet's.
        fold(if v6 {
            pseudo_v6(a, b, IPPROTO_UDP, 0)
        } else {
            pseudo_v4(v4(a), v4(b), IPPROTO_UDP, 0)
        })
    };
    let csum_delta = sluice_common::csum::rewrite_delta(
        v6,
        (&src, &local, ports(spec.remote, spec.local)),
        (
            &new_src,
            &new_dst,
            ports(spec.egress_local, spec.egress_remote),
        ),
    );
    Some(FlowAction {
        local,
        old_pseudo: pseudo(&src, &local),
        new_pseudo: pseudo(&new_src, &new_dst),
        src,
        new_src,
        new_dst,
        src_port: spec.remote.port().to_be_bytes(),
        new_src_port: spec.egress_local.port().to_be_bytes(),
        new_dst_port: spec.egress_remote.port().to_be_bytes(),
        family: if v6 { 6 } else { 4 },
        tos: spec.dscp << 2,
        ttl,
        flags: if spec.component == Component::Rtp {
            FLOW_RTP
        } else {
            0
        },
        csum_delta,
        stats_slot: slot,
        // FlowIndex::upsert fills in the slot the action goes to.
        slot: NO_FLOW_SLOT,
        local_port: spec.local.port().to_be_bytes(),
        _pad: [0; 6],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_action_carries_the_rewrite_in_network_order() {
        let spec = FlowSpec {
            component: Component::Rtp,
            ingress_leg: 0,
            local: "198.18.1.1:30000".parse().unwrap(),
            remote: "198.18.1.2:4000".parse().unwrap(),
            egress_local: "198.18.2.1:30002".parse().unwrap(),
            egress_remote: "198.18.2.2:5000".parse().unwrap(),
            dscp: 46,
        };
        let a = flow_action(&spec, 7, 64).unwrap();
        assert_eq!(&a.src[..4], &[198, 18, 1, 2]);
        assert_eq!(a.src_port, 4000u16.to_be_bytes());
        assert_eq!(&a.new_src[..4], &[198, 18, 2, 1]);
        assert_eq!(a.new_dst_port, 5000u16.to_be_bytes());
        assert_eq!(
            (a.family, a.tos, a.ttl, a.flags, a.stats_slot),
            (4, 184, 64, FLOW_RTP, 7)
        );
        assert_eq!(
            flow_key(spec.local),
            Some(FlowKey::v4([198, 18, 1, 1], 30000))
        );
        let mixed = FlowSpec {
            egress_remote: "[2001:2::2]:5000".parse().unwrap(),
            ..spec
        };
        assert_eq!(flow_action(&mixed, 0, 64), None);
    }
}
