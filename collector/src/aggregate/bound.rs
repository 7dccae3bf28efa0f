//! The key bound: per (dimension, base bucket) at most `max_keys_per_bucket` keys keep their
//! name, the rest fold into [`Key::Other`]; the first keys seen keep their name for the
//! bucket's whole life, across commits. The bookkeeping itself is bounded too: at most
//! `max_tracked_keys` keys over all buckets; past it the oldest buckets' sets are forgotten
//! first (a late record for a forgotten bucket may then name up to `max_keys_per_bucket`
//! more keys in it: the store holds at most twice the bound there, memory never grows).
//!
//! A set holds 64-bit fingerprints of its keys, not the keys (up to 40 octets each): with
//! the default 262,144 tracked keys that is about 3 MB instead of about 14 MB. The
//! fingerprint is SipHash-1-3 under a key drawn at random per process (std's `RandomState`),
//! so a sender cannot make two keys collide on purpose. By chance, a new key passes for one
//! its set admitted with probability (keys in the set) / 2^64, below 2^-46 even for a set
//! of 262,144 keys; the only effect is that it is named past the per-bucket bound.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use super::keys::{Dim, Key};

/// Which keys each (base bucket, dimension) admitted, oldest bucket first.
#[derive(Debug, Default)]
pub(crate) struct KeyBound {
    sets: BTreeMap<(i64, Dim), HashSet<u64, Fingerprinted>>,
    /// The fingerprint's secret key.
    hasher: RandomState,
    keys: usize,
    /// Keys folded into [`Key::Other`] by the per-bucket bound.
    pub folded: u64,
    /// Bucket sets forgotten to stay within `max_tracked_keys`.
    pub forgotten: u64,
}

impl KeyBound {
    /// The key to count `key` under in (`dim`, `bucket`): itself, or [`Key::Other`] when the
    /// bucket already named `max_per_bucket` others.
    pub fn admit(
        &mut self,
        max_per_bucket: usize,
        max_tracked: usize,
        dim: Dim,
        bucket: i64,
        key: Key,
    ) -> Key {
        let print = self.hasher.hash_one(key);
        if let Some(set) = self.sets.get(&(bucket, dim)) {
            if set.contains(&print) {
                return key;
            }
            if set.len() >= max_per_bucket {
                self.folded += 1;
                return Key::Other;
            }
        }
        while self.keys >= max_tracked.max(1) {
            let Some((_, set)) = self.sets.pop_first() else {
                break;
            };
            self.keys -= set.len();
            self.forgotten += 1;
        }
        self.sets.entry((bucket, dim)).or_default().insert(print);
        self.keys += 1;
        key
    }

    /// Forget the sets of buckets that started before `before` (seconds).
    pub fn forget_before(&mut self, before: i64) {
        let keep = self.sets.split_off(&(before, Dim::Label));
        let gone = std::mem::replace(&mut self.sets, keep);
        self.keys -= gone.values().map(HashSet::len).sum::<usize>();
    }

    /// Keys tracked over all buckets.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.keys
    }
}

/// The hasher of a set of fingerprints: they are uniform already, so it passes them on.
type Fingerprinted = BuildHasherDefault<PassThrough>;

#[derive(Debug, Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 fingerprints are hashed; any other input still hashes deterministically.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_bucket_bound_folds_and_total_bound_forgets_oldest() {
        let mut b = KeyBound::default();
        let port = |p| Key::Port(6, p);
        assert_eq!(b.admit(2, 4, Dim::Port, 60, port(1)), port(1));
        assert_eq!(b.admit(2, 4, Dim::Port, 60, port(2)), port(2));
        assert_eq!(b.admit(2, 4, Dim::Port, 60, port(3)), Key::Other);
        assert_eq!(
            b.admit(2, 4, Dim::Port, 60, port(1)),
            port(1),
            "named for life"
        );
        assert_eq!(b.folded, 1);
        assert_eq!(b.admit(2, 4, Dim::Port, 120, port(1)), port(1));
        assert_eq!(b.admit(2, 4, Dim::Port, 180, port(1)), port(1));
        assert_eq!(b.len(), 4);
        // A fifth key: bucket 60 (the oldest) is forgotten.
        assert_eq!(b.admit(2, 4, Dim::Port, 240, port(1)), port(1));
        assert_eq!((b.len(), b.forgotten), (3, 1));
        assert_eq!(
            b.admit(2, 4, Dim::Port, 60, port(3)),
            port(3),
            "forgotten: admits anew"
        );
        b.forget_before(200);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn memory_stays_within_the_total_bound_under_any_stream() {
        let mut b = KeyBound::default();
        let mut x = 7u64;
        for _ in 0..100_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let bucket = ((x >> 33) % 100_000) as i64 * 60;
            b.admit(
                100,
                1000,
                Dim::Port,
                bucket,
                Key::Port(17, (x >> 17) as u16),
            );
            assert!(b.len() <= 1000);
        }
    }
}
