//! What connection-tracking records add to aggregation: the NAT pair (inside host, public
//! address) and the label in its connection direction. Both are fed from
//! [`Aggregator::add_others`] for records whose [`Flow`](super::Flow) carries them.

use super::{Aggregator, Dim, Key, Sum};

/// The key of a label's traffic in one connection direction.
pub(super) fn direction_key(label: u32, reply: bool) -> Key {
    Key::LabelDir { label, reply }
}

impl Aggregator {
    /// Add a NAT pair's share, under `other` past `max_nat_keys_per_bucket` pairs in the
    /// bucket.
    pub(super) fn add_nat(&mut self, bucket: i64, key: Key, share: Sum) {
        if let Some(s) = self.nats.get_mut(&(bucket, key)) {
            s.add(share);
            return;
        }
        let max = self.cfg.max_nat_keys_per_bucket;
        let k = self
            .seen
            .admit(max, self.cfg.max_tracked_keys, Dim::Nat, bucket, key);
        self.stats.forgotten_key_sets = self.seen.forgotten;
        if k == Key::Other {
            self.stats.folded_nat_keys += 1;
        }
        let s = self.nats.entry((bucket, k)).or_default();
        self.cells += usize::from(s.is_zero());
        s.add(share);
    }

    /// Add a label's share in one connection direction, under the per-bucket key bound.
    pub(super) fn add_direction(&mut self, bucket: i64, key: Key, share: Sum) {
        if let Some(s) = self.directions.get_mut(&(bucket, key)) {
            s.add(share);
            return;
        }
        let k = self.bound(Dim::Direction, bucket, key);
        let s = self.directions.entry((bucket, k)).or_default();
        self.cells += usize::from(s.is_zero());
        s.add(share);
    }
}
