//! The flow cache: packets in, [`FlowRecord`]s out when a flow ends.
//!
//! ```text
//!  observe(meta, pkt, now) ──► index (hashbrown, u32 slot ids) ──► slot: key + counters
//!                                                                   │ LRU list (last seen)    ─► idle expiry, eviction
//!                                                                   │ start list (first seen) ─► active expiry
//!  expire(now, sink) / flush(now, sink) ◄── pending (ended by FIN/RST, evicted, timed out) ◄┘
//! ```
//!
//! Time is a parameter: `now_ms` is wall-clock milliseconds since the UNIX epoch, passed in by
//! the caller (the daemon's clock, or packet timestamps in replay). Nothing here reads a clock.
//! Inside the cache time never goes backwards: an earlier `now_ms` than one already seen counts
//! as the latest seen, which keeps both lists ordered.
//!
//! # End reasons (RFC 5102 §5.11.3, `flowEndReason`)
//! * 1 idle timeout: no packet for `idle_timeout`.
//! * 2 active timeout: the flow is older than `active_timeout`; also when a counter would
//!   overflow its field (packets `u32`, octets 48 bits), so a record is never wrong.
//! * 3 end of flow: a TCP packet with FIN or RST; the packet is counted, the flow leaves the
//!   index at once (the next packet with that key starts a new flow) and waits in the pending
//!   list for the next `expire`.
//! * 4 forced end: `flush` (shutdown, end of a replay).
//! * 5 lack of resources: a new flow found the cache full and the least recently seen flow was
//!   evicted.
//!
//! When a packet arrives for a flow whose idle or active deadline has passed but which no
//! `expire` call has ended yet, the old flow ends with that reason first and the packet opens a
//! new flow: records do not depend on how punctually the caller calls `expire`.
//!
//! # Memory: why not the `lru` crate
//! DESIGN.md planned the `lru` crate. Measured with the `flow_memory` bench (a counting global
//! allocator, 1,000,000 live flows, `cargo bench -p labelflow-probe --bench flow_memory`):
//! `lru::LruCache<FlowKey, state>` needs one boxed node per entry (key + value + two 8-byte
//! pointers, rounded up by malloc) plus a `HashMap` of 8-byte key pointers to 8-byte node
//! pointers, and still has no second order for active timeouts. It came to 132 bytes per flow
//! requested from the allocator (148 bytes of resident memory). This cache keeps every flow in one slab of 92-byte slots (52-byte key, 48-bit octet
//! count, `u32` packets, times as `u32` millisecond offsets from an epoch, an interned
//! attribute id, and two intrusive doubly linked lists with `u32` links) indexed by a
//! `hashbrown::HashTable<u32>`: 102.5 bytes per flow requested, 102.7 resident, at 1M flows
//! (a quarter of them IPv6), and idle expiry, active expiry and eviction are all O(1) per flow.
//! The slab grows by doubling but never past `max_flows`; the index grows as hashbrown does.

mod attrs;
mod key;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::time::Duration;

use hashbrown::HashTable;
use labelflow_proto::{Direction, EndReason, FlowRecord};

use crate::decode::{proto, tcp_flags, Decoded};
use crate::packet::{Hook, PacketMeta};

use attrs::AttrTable;
pub use attrs::{system_user_name, UserNameLookup};
pub use key::FlowKey;

const NIL: u32 = u32::MAX;
const LRU: usize = 0;
const START: usize = 1;
const MAX_BYTES: u64 = (1 << 48) - 1;
/// Timeouts above this are clamped, so times fit the `u32` offsets with room to rebase.
const MAX_TIMEOUT_MS: u64 = 1 << 30;
/// Offsets past this trigger a rebase of the epoch.
const REBASE_AT: u64 = 1 << 31;

/// How the cache is bounded and labelled.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Live flows kept at most; a new flow beyond this evicts the least recently seen one.
    pub max_flows: NonZeroU32,
    /// A flow with no packet for this long ends (reason 1). Default 15 s.
    pub idle_timeout: Duration,
    /// A flow older than this ends (reason 2) even while packets still arrive. Default 60 s.
    pub active_timeout: Duration,
    /// NFLOG group → label, exported as `applicationName`.
    pub labels: Vec<(u16, String)>,
    /// uid → user name, called once per uid and never on the per-packet path.
    pub user_names: UserNameLookup,
    /// UDP ports decoded as NAT-T ESP and IKE (see [`crate::decode::IpsecPorts`]).
    pub ipsec_ports: crate::decode::IpsecPorts,
}

/// Default bound on live flows (about 103 MB of cache at 103 bytes per flow).
pub const DEFAULT_MAX_FLOWS: u32 = 1_000_000;
/// Default idle (inactive) timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Default active timeout.
pub const DEFAULT_ACTIVE_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_flows: NonZeroU32::new(DEFAULT_MAX_FLOWS).expect("non-zero"),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            active_timeout: DEFAULT_ACTIVE_TIMEOUT,
            labels: Vec::new(),
            user_names: system_user_name,
            ipsec_ports: crate::decode::IpsecPorts::DEFAULT,
        }
    }
}

/// Counters of the cache since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Packets and octets observed (octets as the IP headers count them).
    pub packets: u64,
    pub bytes: u64,
    pub flows_created: u64,
    pub expired_idle: u64,
    pub expired_active: u64,
    /// Ended by TCP FIN or RST.
    pub ended_tcp: u64,
    /// Ended by `flush`.
    pub flushed: u64,
    /// Evicted from a full cache (exported with reason "lack of resources").
    pub evicted: u64,
    /// Records handed to a sink.
    pub exported: u64,
    /// Flows in the cache now.
    pub live_flows: u64,
    /// Ended flows waiting for the next `expire`.
    pub pending: u64,
}

/// A packet's flow key and its hash, from [`Keyer::prepare`].
#[derive(Debug, Clone, Copy)]
pub struct Prepared {
    key: FlowKey,
    hash: u64,
}

/// Computes a [`FlowCache`]'s keys and hashes, on any thread.
#[derive(Debug, Clone)]
pub struct Keyer {
    hasher: foldhash::fast::RandomState,
}

impl Keyer {
    #[inline]
    pub fn prepare(&self, meta: &PacketMeta<'_>, pkt: &Decoded) -> Prepared {
        let key = FlowKey::new(meta, pkt);
        Prepared {
            key,
            hash: self.hasher.hash_one(key),
        }
    }
}

/// One flow: 92 bytes.
#[derive(Debug, Clone, Copy)]
struct Slot {
    key: FlowKey,
    bytes_lo: u32,
    bytes_hi: u16,
    tcp_flags: u8,
    tos: u8,
    packets: u32,
    /// Milliseconds since `FlowCache::base`.
    first: u32,
    last: u32,
    attrs: u32,
    /// `[prev, next]` in the LRU list and in the start list; the free list uses `links[LRU][1]`.
    links: [[u32; 2]; 2],
}

const _: () = assert!(std::mem::size_of::<Slot>() == 92);

impl Slot {
    fn bytes(&self) -> u64 {
        u64::from(self.bytes_hi) << 32 | u64::from(self.bytes_lo)
    }
    fn set_bytes(&mut self, b: u64) {
        self.bytes_lo = b as u32;
        self.bytes_hi = (b >> 32) as u16;
    }
}

#[derive(Debug, Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

/// Bounded flow cache with idle, active, end-of-flow and eviction expiry. See the module docs.
#[derive(Debug)]
pub struct FlowCache {
    slots: Vec<Slot>,
    index: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    /// `lists[LRU]`: head most recently seen. `lists[START]`: head oldest first packet.
    lists: [List; 2],
    free: u32,
    live: u32,
    max_flows: u32,
    idle_ms: u64,
    active_ms: u64,
    /// Epoch of the slots' `u32` times, ms since the UNIX epoch; set by the first packet.
    base: Option<u64>,
    /// Latest `now_ms` seen.
    clock: u64,
    /// Ended flows, already turned into records, until the next `expire` or `flush`.
    pending: Vec<FlowRecord>,
    attrs: AttrTable,
    labels: HashMap<u16, String>,
    stats: CacheStats,
}

/// The hook a packet was logged at, as RFC 5102 §5.11.4 `flowDirection` relative to the
/// interface it crossed: PREROUTING and INPUT see it arriving (ingress), OUTPUT and POSTROUTING
/// leaving (egress). FORWARD sees a packet that has arrived and been routed but not yet left;
/// like an ingress flow monitor on a router it is ingress, and the record carries the egress
/// ifindex beside it.
pub fn direction_of(hook: Option<Hook>) -> Option<Direction> {
    match hook? {
        Hook::PreRouting | Hook::LocalIn | Hook::Forward => Some(Direction::Ingress),
        Hook::LocalOut | Hook::PostRouting => Some(Direction::Egress),
        Hook::Other(_) => None,
    }
}

impl FlowCache {
    pub fn new(config: CacheConfig) -> Self {
        let ms = |d: Duration| (d.as_millis().min(u128::from(MAX_TIMEOUT_MS)) as u64).max(1);
        FlowCache {
            slots: Vec::new(),
            index: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            lists: [List {
                head: NIL,
                tail: NIL,
            }; 2],
            free: NIL,
            live: 0,
            max_flows: config.max_flows.get().min(NIL - 1),
            idle_ms: ms(config.idle_timeout),
            active_ms: ms(config.active_timeout),
            base: None,
            clock: 0,
            pending: Vec::new(),
            attrs: AttrTable::new(config.user_names),
            labels: config.labels.into_iter().collect(),
            stats: CacheStats::default(),
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            live_flows: u64::from(self.live),
            pending: self.pending.len() as u64,
            ..self.stats
        }
    }

    /// Flows in the cache now (not counting ended flows waiting in the pending list).
    pub fn len(&self) -> usize {
        self.live as usize
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Counts one decoded packet into its flow.
    pub fn observe(&mut self, meta: &PacketMeta<'_>, pkt: &Decoded, now_ms: u64) {
        let key = FlowKey::new(meta, pkt);
        let hash = self.hasher.hash_one(key);
        self.observe_prepared(meta, pkt, Prepared { key, hash }, now_ms);
    }

    /// What computes this cache's flow keys and hashes: another thread can
    /// [`prepare`](Keyer::prepare) packets for it.
    pub fn keyer(&self) -> Keyer {
        Keyer {
            hasher: self.hasher.clone(),
        }
    }

    /// Prefetches the slots a lookup of `prepared` may compare: a caller that knows the
    /// next few packets finds their slots in cache when it observes them. A hint only.
    #[inline]
    pub fn prefetch(&self, prepared: &Prepared) {
        for &id in self.index.iter_hash(prepared.hash) {
            if let Some(slot) = self.slots.get(id as usize) {
                // 92 bytes over at most two cache lines: the key's and the counters'.
                crate::prefetch::prefetch(slot);
                crate::prefetch::prefetch(&slot.links);
            }
        }
    }

    /// [`observe`](Self::observe) of a packet whose key and hash a [`Keyer`] of this cache
    /// computed.
    pub fn observe_prepared(
        &mut self,
        meta: &PacketMeta<'_>,
        pkt: &Decoded,
        prepared: Prepared,
        now_ms: u64,
    ) {
        let Prepared { key, hash } = prepared;
        let now = self.tick(now_ms);
        self.stats.packets += 1;
        self.stats.bytes += u64::from(pkt.length);
        let slots = &self.slots;
        let found = self
            .index
            .find(hash, |&i| slots[i as usize].key == key)
            .copied();
        let id = match found {
            Some(id) => {
                let s = &self.slots[id as usize];
                let len = u64::from(pkt.length);
                let ended = if u64::from(now.saturating_sub(s.last)) >= self.idle_ms {
                    Some(EndReason::IdleTimeout)
                } else if u64::from(now.saturating_sub(s.first)) >= self.active_ms
                    || s.packets == u32::MAX
                    || s.bytes() + len > MAX_BYTES
                {
                    Some(EndReason::ActiveTimeout)
                } else {
                    None
                };
                match ended {
                    Some(reason) => {
                        self.end(id, hash, reason);
                        self.create(key, hash, meta, pkt, now)
                    }
                    None => {
                        let s = &mut self.slots[id as usize];
                        s.set_bytes(s.bytes() + len);
                        s.packets += 1;
                        s.tcp_flags |= pkt.tcp_flags;
                        s.last = now;
                        if self.lists[LRU].head != id {
                            self.unlink(LRU, id);
                            self.push_front(LRU, id);
                        }
                        id
                    }
                }
            }
            None => self.create(key, hash, meta, pkt, now),
        };
        if pkt.protocol == proto::TCP && pkt.tcp_flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
            self.end(id, hash, EndReason::EndOfFlow);
        }
    }

    /// Exports every flow whose idle or active deadline is at or before `now_ms`, and the
    /// flows already ended (FIN/RST, evicted), in deadline order.
    pub fn expire(&mut self, now_ms: u64, sink: &mut impl FnMut(FlowRecord)) {
        let now = self.tick(now_ms);
        self.drain_pending(sink);
        self.expire_due(now, Some(sink));
    }

    /// Ends every flow whose deadline is at or before `now` (an epoch offset), handing each
    /// record straight to `sink` (no list of records builds up, however many flows are due),
    /// or to the pending list without one.
    fn expire_due(&mut self, now: u32, mut sink: Option<&mut dyn FnMut(FlowRecord)>) {
        let now = u64::from(now);
        loop {
            let idle = self.lists[LRU].tail;
            let active = self.lists[START].head;
            if idle == NIL {
                break;
            }
            let idle_at = u64::from(self.slots[idle as usize].last) + self.idle_ms;
            let active_at = u64::from(self.slots[active as usize].first) + self.active_ms;
            let (id, at, reason) = if active_at <= idle_at {
                (active, active_at, EndReason::ActiveTimeout)
            } else {
                (idle, idle_at, EndReason::IdleTimeout)
            };
            if at > now {
                break;
            }
            let hash = self.hasher.hash_one(self.slots[id as usize].key);
            match sink.as_deref_mut() {
                Some(sink) => {
                    let record = self.take(id, hash, reason);
                    self.stats.exported += 1;
                    sink(record);
                }
                None => self.end(id, hash, reason),
            }
        }
    }

    /// Ends and exports every flow (reason 4, forced end), oldest first. The cache is empty
    /// afterwards and keeps its counters.
    pub fn flush(&mut self, now_ms: u64, sink: &mut impl FnMut(FlowRecord)) {
        self.tick(now_ms);
        self.drain_pending(sink);
        while self.lists[START].head != NIL {
            let id = self.lists[START].head;
            let hash = self.hasher.hash_one(self.slots[id as usize].key);
            let record = self.take(id, hash, EndReason::ForcedEnd);
            self.stats.exported += 1;
            sink(record);
        }
        self.slots = Vec::new();
        self.index = HashTable::new();
        self.free = NIL;
    }

    /// The earliest time (ms since the UNIX epoch) at which `expire` has something to do:
    /// the latest time seen when ended flows are pending, `None` when the cache is empty.
    pub fn next_deadline(&self) -> Option<u64> {
        let base = self.base?;
        if !self.pending.is_empty() {
            return Some(self.clock);
        }
        let idle = self.lists[LRU].tail;
        let active = self.lists[START].head;
        if idle == NIL {
            return None;
        }
        let idle_at = u64::from(self.slots[idle as usize].last) + self.idle_ms;
        let active_at = u64::from(self.slots[active as usize].first) + self.active_ms;
        Some(base.saturating_add(idle_at.min(active_at)))
    }

    /// Advances the clock and returns `now` as an offset from the epoch.
    fn tick(&mut self, now_ms: u64) -> u32 {
        let base = *self.base.get_or_insert(now_ms);
        self.clock = self.clock.max(now_ms).max(base);
        if self.clock - base >= REBASE_AT {
            self.rebase();
        }
        let base = self.base.unwrap_or(self.clock);
        (self.clock - base).min(u64::from(u32::MAX)) as u32
    }

    /// Moves the epoch up to the oldest first packet still held, so offsets stay small: first
    /// ends the flows already due (so every flow left started less than a timeout ago and the
    /// epoch moves by at least `REBASE_AT - MAX_TIMEOUT_MS`), then shifts every slot. Runs once
    /// per ~12 days of cache time at most, over the live flows.
    fn rebase(&mut self) {
        let Some(base) = self.base else { return };
        let now = (self.clock - base).min(u64::from(u32::MAX)) as u32;
        self.expire_due(now, None);
        let shift = match self.slots.get(self.lists[START].head as usize) {
            Some(oldest) => oldest.first,
            None => now,
        };
        let mut id = self.lists[START].head;
        while id != NIL {
            let s = &mut self.slots[id as usize];
            s.first -= shift;
            s.last -= shift;
            id = s.links[START][1];
        }
        self.base = Some(base.saturating_add(u64::from(shift)));
    }

    fn create(
        &mut self,
        key: FlowKey,
        hash: u64,
        meta: &PacketMeta<'_>,
        pkt: &Decoded,
        now: u32,
    ) -> u32 {
        if self.live >= self.max_flows {
            let victim = self.lists[LRU].tail;
            let vhash = self.hasher.hash_one(self.slots[victim as usize].key);
            self.end(victim, vhash, EndReason::LackOfResources);
        }
        let attrs = self
            .attrs
            .acquire(meta.mark, meta.uid, direction_of(meta.hook), meta.prefix);
        let mut slot = Slot {
            key,
            bytes_lo: 0,
            bytes_hi: 0,
            tcp_flags: pkt.tcp_flags,
            tos: pkt.tos,
            packets: 1,
            first: now,
            last: now,
            attrs,
            links: [[NIL; 2]; 2],
        };
        slot.set_bytes(u64::from(pkt.length));
        let id = if self.free != NIL {
            let id = self.free;
            self.free = self.slots[id as usize].links[LRU][1];
            self.slots[id as usize] = slot;
            id
        } else {
            if self.slots.len() == self.slots.capacity() {
                // Double, but never past `max_flows`: the slab is most of the memory.
                let cap = self.slots.capacity();
                let want = cap.max(1024).min(self.max_flows as usize - cap).max(1);
                self.slots.reserve_exact(want);
            }
            self.slots.push(slot);
            (self.slots.len() - 1) as u32
        };
        self.push_front(LRU, id);
        self.push_back(START, id);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index
            .insert_unique(hash, id, |&i| hasher.hash_one(slots[i as usize].key));
        self.live += 1;
        self.stats.flows_created += 1;
        id
    }

    /// Takes a live flow out of the index and the lists into the pending list (flows ended
    /// while observing a packet, where no sink is at hand).
    fn end(&mut self, id: u32, hash: u64, reason: EndReason) {
        let record = self.take(id, hash, reason);
        self.pending.push(record);
    }

    /// Takes a live flow out of the index and the lists; returns its record.
    fn take(&mut self, id: u32, hash: u64, reason: EndReason) -> FlowRecord {
        if let Ok(e) = self.index.find_entry(hash, |&i| i == id) {
            e.remove();
        }
        self.unlink(LRU, id);
        self.unlink(START, id);
        let slot = self.slots[id as usize];
        let record = self.record(&slot, reason);
        self.attrs.release(slot.attrs);
        self.slots[id as usize].links[LRU][1] = self.free;
        self.free = id;
        self.live -= 1;
        match reason {
            EndReason::IdleTimeout => self.stats.expired_idle += 1,
            EndReason::ActiveTimeout => self.stats.expired_active += 1,
            EndReason::EndOfFlow => self.stats.ended_tcp += 1,
            EndReason::ForcedEnd => self.stats.flushed += 1,
            EndReason::LackOfResources => self.stats.evicted += 1,
            _ => {}
        }
        record
    }

    fn drain_pending(&mut self, sink: &mut impl FnMut(FlowRecord)) {
        self.stats.exported += self.pending.len() as u64;
        for record in self.pending.drain(..) {
            sink(record);
        }
    }

    fn record(&self, s: &Slot, reason: EndReason) -> FlowRecord {
        let base = self.base.unwrap_or(0);
        let a = self.attrs.get(s.attrs);
        let k = &s.key;
        let (src_port, dst_port) = k.ports();
        FlowRecord {
            observation_domain: 0,
            group: Some(u32::from(k.group())),
            label: self.labels.get(&k.group()).cloned(),
            src_addr: k.src_addr(),
            dst_addr: k.dst_addr(),
            protocol: k.protocol(),
            src_port,
            dst_port,
            icmp_type_code: k.icmp_type_code(),
            ipsec_spi: k.spi(),
            ingress_if: k.ingress_if(),
            egress_if: k.egress_if(),
            bytes: s.bytes(),
            packets: u64::from(s.packets),
            tcp_flags: s.tcp_flags,
            tos: s.tos,
            start_ms: base.saturating_add(u64::from(s.first)),
            end_ms: base.saturating_add(u64::from(s.last)),
            end_reason: Some(reason),
            direction: a.direction,
            mark: Some(a.mark),
            user_name: a.user_name.as_deref().map(str::to_owned),
            nflog_prefix: (!a.prefix.is_empty())
                .then(|| String::from_utf8_lossy(&a.prefix).into_owned()),
            sampling_interval: 1,
            tunnel: None,
            conntrack: None,
        }
    }

    fn unlink(&mut self, l: usize, id: u32) {
        let [prev, next] = self.slots[id as usize].links[l];
        match prev {
            NIL => self.lists[l].head = next,
            p => self.slots[p as usize].links[l][1] = next,
        }
        match next {
            NIL => self.lists[l].tail = prev,
            n => self.slots[n as usize].links[l][0] = prev,
        }
        self.slots[id as usize].links[l] = [NIL, NIL];
    }

    fn push_front(&mut self, l: usize, id: u32) {
        let head = self.lists[l].head;
        self.slots[id as usize].links[l] = [NIL, head];
        match head {
            NIL => self.lists[l].tail = id,
            h => self.slots[h as usize].links[l][0] = id,
        }
        self.lists[l].head = id;
    }

    fn push_back(&mut self, l: usize, id: u32) {
        let tail = self.lists[l].tail;
        self.slots[id as usize].links[l] = [tail, NIL];
        match tail {
            NIL => self.lists[l].head = id,
            t => self.slots[t as usize].links[l][1] = id,
        }
        self.lists[l].tail = id;
    }
}

#[cfg(test)]
mod tests;
