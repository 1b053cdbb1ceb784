//! Where the program finds each flow (see `sluice_common::flow`): its action in a slot of the
//! action array, and the slot through the port array or, when another local address already
//! holds the port, through the hash. This module decides the slots and entries; the maps
//! themselves sit behind [`LookupMaps`], so the bookkeeping is tested here without a kernel.

use std::collections::{HashMap, VecDeque};

use sluice_common::{FlowAction, FlowKey, NO_FLOW_SLOT};

/// The three kernel maps the program's flow lookup reads. Values are action slots;
/// [`NO_FLOW_SLOT`] (0) = none.
pub trait LookupMaps {
    type Error;
    fn set_action(&mut self, slot: u32, action: &FlowAction) -> Result<(), Self::Error>;
    fn set_port(&mut self, port: u16, value: u32) -> Result<(), Self::Error>;
    fn insert_hash(&mut self, key: &FlowKey, value: u32) -> Result<(), Self::Error>;
    fn remove_hash(&mut self, key: &FlowKey) -> Result<(), Self::Error>;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LookupError<E> {
    #[error("no free XDP action slot")]
    Full,
    #[error(transparent)]
    Map(E),
}

pub struct FlowIndex {
    /// Free action slots, oldest free first: a slot just left by a flow is reused last, long
    /// after any program run that may still have been reading it.
    free: VecDeque<u32>,
    /// The action slot of every installed flow.
    slots: HashMap<FlowKey, u32>,
    /// Flows per port, in install order; the first is the one the port array points at.
    by_port: HashMap<u16, Vec<FlowKey>>,
}

impl FlowIndex {
    pub fn new(action_slots: u32) -> FlowIndex {
        FlowIndex {
            // The empty entry's slot is never handed out: its action stays all zero.
            free: (NO_FLOW_SLOT + 1..action_slots).collect(),
            slots: HashMap::new(),
            by_port: HashMap::new(),
        }
    }

    /// Makes `key` forward by `action`: a new flow, or a changed one. The action goes into a
    /// fresh slot first, then the lookup entry is pointed at it, so the program sees either the
    /// old action or the new one, never a mix.
    pub fn upsert<M: LookupMaps>(
        &mut self,
        maps: &mut M,
        key: FlowKey,
        action: &FlowAction,
    ) -> Result<(), LookupError<M::Error>> {
        let slot = self.free.pop_front().ok_or(LookupError::Full)?;
        if let Err(e) = maps.set_action(slot, &FlowAction { slot, ..*action }) {
            self.free.push_front(slot);
            return Err(LookupError::Map(e));
        }
        let port = key.port();
        let owners = self.by_port.get(&port);
        let published = if owners.and_then(|o| o.first()).is_none_or(|k| *k == key) {
            maps.set_port(port, slot)
        } else {
            maps.insert_hash(&key, slot)
        };
        if let Err(e) = published {
            self.free.push_front(slot);
            return Err(LookupError::Map(e));
        }
        let owners = self.by_port.entry(port).or_default();
        if !owners.contains(&key) {
            owners.push(key);
        }
        if let Some(old) = self.slots.insert(key, slot) {
            self.free.push_back(old);
        }
        Ok(())
    }

    /// Stops forwarding `key`. When it held its port's array entry and another local address
    /// uses the port too, that flow moves from the hash into the port entry (entry first, so
    /// it is findable throughout).
    pub fn remove<M: LookupMaps>(
        &mut self,
        maps: &mut M,
        key: &FlowKey,
    ) -> Result<(), LookupError<M::Error>> {
        let Some(slot) = self.slots.remove(key) else {
            return Ok(());
        };
        self.free.push_back(slot);
        let port = key.port();
        let Some(owners) = self.by_port.get_mut(&port) else {
            return Ok(());
        };
        let Some(pos) = owners.iter().position(|k| k == key) else {
            return Ok(());
        };
        owners.remove(pos);
        let result = if pos > 0 {
            maps.remove_hash(key)
        } else if let Some(next) = owners.first() {
            let next_slot = self.slots.get(next).copied().unwrap_or(NO_FLOW_SLOT);
            maps.set_port(port, next_slot)
                .and_then(|()| maps.remove_hash(next))
        } else {
            maps.set_port(port, NO_FLOW_SLOT)
        };
        if owners.is_empty() {
            self.by_port.remove(&port);
        }
        result.map_err(LookupError::Map)
    }

    /// Flows installed.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::FAMILY_V4;

    /// The maps as plain collections, plus what the program would find for a destination.
    #[derive(Default)]
    struct Fake {
        actions: HashMap<u32, FlowAction>,
        ports: HashMap<u16, u32>,
        hash: HashMap<FlowKey, u32>,
        fail: bool,
    }

    impl LookupMaps for Fake {
        type Error = &'static str;
        fn set_action(&mut self, slot: u32, action: &FlowAction) -> Result<(), &'static str> {
            if self.fail {
                return Err("injected");
            }
            self.actions.insert(slot, *action);
            Ok(())
        }
        fn set_port(&mut self, port: u16, value: u32) -> Result<(), &'static str> {
            self.ports.insert(port, value);
            Ok(())
        }
        fn insert_hash(&mut self, key: &FlowKey, value: u32) -> Result<(), &'static str> {
            self.hash.insert(*key, value);
            Ok(())
        }
        fn remove_hash(&mut self, key: &FlowKey) -> Result<(), &'static str> {
            self.hash.remove(key);
            Ok(())
        }
    }

    impl Fake {
        /// The program's `find`: port entry if its action is for this address, else the hash.
        fn find(&self, key: &FlowKey) -> Option<FlowAction> {
            let value = *self
                .ports
                .get(&key.port())
                .filter(|v| **v != NO_FLOW_SLOT)?;
            let first = self.actions[&value];
            if first.local == key.addr && first.family == key.family && first.local_port == key.port
            {
                return Some(first);
            }
            let value = *self.hash.get(key)?;
            Some(self.actions[&value])
        }
    }

    fn action(key: &FlowKey, tag: u8) -> FlowAction {
        FlowAction {
            local: key.addr,
            local_port: key.port,
            family: FAMILY_V4,
            ttl: tag,
            ..FlowAction::default()
        }
    }

    #[test]
    fn one_flow_per_port_uses_the_port_array_only() {
        let (mut maps, mut index) = (Fake::default(), FlowIndex::new(8));
        let a = FlowKey::v4([198, 18, 1, 1], 30_000);
        index.upsert(&mut maps, a, &action(&a, 1)).unwrap();
        assert_eq!(maps.find(&a).map(|f| f.ttl), Some(1));
        assert!(maps.hash.is_empty());
        // Another address on the same port is not this flow.
        assert_eq!(maps.find(&FlowKey::v4([198, 18, 2, 1], 30_000)), None);
        index.remove(&mut maps, &a).unwrap();
        assert_eq!(maps.find(&a), None);
        assert_eq!(maps.ports[&30_000], 0);
        assert!(index.is_empty());
    }

    #[test]
    fn a_change_goes_to_a_fresh_slot_and_the_old_one_is_reused_last() {
        // Slots 1-3: slot 0 is the empty entry's.
        let (mut maps, mut index) = (Fake::default(), FlowIndex::new(4));
        let a = FlowKey::v4([198, 18, 1, 1], 30_000);
        index.upsert(&mut maps, a, &action(&a, 1)).unwrap();
        let first = maps.ports[&30_000];
        assert_eq!(first, 1);
        assert_eq!(
            maps.actions[&first].slot, first,
            "an action names its own slot"
        );
        index.upsert(&mut maps, a, &action(&a, 2)).unwrap();
        assert_ne!(maps.ports[&30_000], first, "rewritten in place");
        assert_eq!(maps.actions[&first].ttl, 1, "old slot untouched");
        assert_eq!(maps.find(&a).map(|f| f.ttl), Some(2));
        // The first slot is free again, but behind the one never used.
        index.upsert(&mut maps, a, &action(&a, 3)).unwrap();
        assert_eq!(maps.ports[&30_000], 3);
        index.upsert(&mut maps, a, &action(&a, 4)).unwrap();
        assert_eq!(maps.ports[&30_000], first);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn shared_ports_fall_back_to_the_hash_and_promote_on_removal() {
        let (mut maps, mut index) = (Fake::default(), FlowIndex::new(8));
        let a = FlowKey::v4([198, 18, 1, 1], 30_000);
        let b = FlowKey::v4([198, 18, 2, 1], 30_000);
        let c = FlowKey::v4([198, 18, 3, 1], 30_000);
        for (k, tag) in [(a, 1), (b, 2), (c, 3)] {
            index.upsert(&mut maps, k, &action(&k, tag)).unwrap();
        }
        assert_eq!(maps.hash.len(), 2);
        for (k, tag) in [(a, 1), (b, 2), (c, 3)] {
            assert_eq!(maps.find(&k).map(|f| f.ttl), Some(tag));
        }
        // Changing a hashed flow updates its hash entry.
        index.upsert(&mut maps, b, &action(&b, 5)).unwrap();
        assert_eq!(maps.find(&b).map(|f| f.ttl), Some(5));
        // Removing the port entry's flow promotes the next one out of the hash.
        index.remove(&mut maps, &a).unwrap();
        assert_eq!(maps.find(&a), None);
        assert_eq!(maps.find(&b).map(|f| f.ttl), Some(5));
        assert_eq!(maps.find(&c).map(|f| f.ttl), Some(3));
        assert_eq!(maps.hash.len(), 1);
        index.remove(&mut maps, &c).unwrap();
        index.remove(&mut maps, &b).unwrap();
        assert!(maps.hash.is_empty());
        assert_eq!(maps.ports[&30_000], 0);
        // Removing twice is harmless.
        index.remove(&mut maps, &b).unwrap();
    }

    #[test]
    fn failures_and_exhaustion_leave_the_index_consistent() {
        // One usable slot besides the empty entry's.
        let (mut maps, mut index) = (Fake::default(), FlowIndex::new(2));
        let a = FlowKey::v4([198, 18, 1, 1], 30_000);
        let b = FlowKey::v4([198, 18, 1, 1], 30_002);
        maps.fail = true;
        assert_eq!(
            index.upsert(&mut maps, a, &action(&a, 1)),
            Err(LookupError::Map("injected"))
        );
        assert!(index.is_empty());
        maps.fail = false;
        index.upsert(&mut maps, a, &action(&a, 1)).unwrap();
        assert_eq!(
            index.upsert(&mut maps, b, &action(&b, 1)),
            Err(LookupError::Full)
        );
        assert_eq!(maps.find(&b), None);
        assert_eq!(maps.find(&a).map(|f| f.ttl), Some(1));
    }
}
