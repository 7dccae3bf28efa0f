//! Rendering a take for the store: base-resolution counters rolled up into every coarser
//! resolution and their keys named. Pure, and apart from the aggregator so that it runs on
//! the store thread: the ingest thread only swaps its pending maps out and goes on receiving.
//!
//! The port, host and tunnel dimensions are bounded in coarser buckets too: a coarse bucket
//! names the first `max_keys_per_bucket` keys its base buckets brought (over all commits;
//! each base bucket names at most `max_flow_keys_per_bucket`), the rest count under
//! `other`. Without it an hour of random ports would name every port its sixty minutes
//! named, and every commit would rewrite them all in the hour and in the day.

use std::collections::HashMap;
use std::sync::Arc;

use super::bound::KeyBound;
use super::keys::{is_system_port, Counters, Delta, Dim, FxBuild, Key, Slot};
use super::KeyNames;
use crate::config::AggConfig;

/// The base-resolution counters of one [`Aggregator::take_base`](super::Aggregator::take_base),
/// keyed as stored (key bounds applied, views summed), with the names to render them.
#[derive(Debug)]
pub struct Taken {
    pub(super) base: Vec<(i64, Dim, Key, Counters)>,
    pub(super) names: Arc<KeyNames>,
}

impl Taken {
    /// Base-resolution rows taken.
    pub fn len(&self) -> usize {
        self.base.len()
    }

    pub fn is_empty(&self) -> bool {
        self.base.is_empty()
    }
}

/// Rolls taken batches up and names their keys; holds the key bound of the coarser
/// resolutions across commits.
#[derive(Debug)]
pub struct Rollup {
    /// One per coarser resolution (index 0: the second resolution).
    seen: Vec<KeyBound>,
    max_keys: usize,
    max_tracked: usize,
    pub stats: RollupStats,
}

/// Counters of the coarse-resolution key bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollupStats {
    /// Shares of keys folded into `other` in a coarse bucket.
    pub folded_keys: u64,
    /// Coarse buckets' key sets forgotten to stay within the tracking bound.
    pub forgotten_key_sets: u64,
}

impl Rollup {
    /// Keys of the coarse-resolution bound tracked per resolution: an eighth of
    /// `max_tracked_keys` (coarse buckets are fewer than base ones by the ratio of the
    /// resolutions); past it the oldest coarse buckets' sets are forgotten first.
    pub fn new(cfg: &AggConfig) -> Rollup {
        Rollup {
            seen: (1..cfg.resolutions.len())
                .map(|_| KeyBound::default())
                .collect(),
            max_keys: cfg.max_keys_per_bucket,
            max_tracked: (cfg.max_tracked_keys / 8).max(cfg.max_keys_per_bucket),
            stats: RollupStats::default(),
        }
    }

    /// The deltas of every resolution, keys as text. Base rows are distinct already (but for
    /// `other`, which several folded labels may feed) and go out as they are; the coarser
    /// resolutions are summed.
    pub fn render(&mut self, taken: Taken) -> Vec<Delta> {
        let Taken { base, names } = taken;
        let resolutions = &names.cfg.resolutions;
        let base_res = resolutions[0] as i64;
        // Coarser rows, and the base resolution's `other` rows.
        let mut coarse: HashMap<Slot, Counters, FxBuild> = HashMap::default();
        let mut out = Vec::with_capacity(base.len() * 2);
        for (bucket, dim, key, c) in base {
            for (res, r) in resolutions.iter().enumerate().skip(1) {
                let r = *r as i64;
                let bucket = bucket.div_euclid(r) * r;
                let key = match self.seen.get_mut(res - 1) {
                    Some(seen)
                        if dim.is_flow_keyed() && key != Key::Other && !is_system_port(&key) =>
                    {
                        seen.admit(self.max_keys, self.max_tracked, dim, bucket, key)
                    }
                    _ => key,
                };
                coarse
                    .entry(Slot {
                        res: res as u8,
                        bucket,
                        dim,
                        key,
                    })
                    .or_default()
                    .add(&c);
            }
            if key == Key::Other {
                let slot = Slot {
                    res: 0,
                    bucket,
                    dim,
                    key,
                };
                coarse.entry(slot).or_default().add(&c);
                continue;
            }
            out.push(Delta {
                resolution: base_res,
                bucket,
                dim,
                key: names.key_text(&key),
                counters: c,
            });
        }
        self.stats = RollupStats {
            folded_keys: self.seen.iter().map(|s| s.folded).sum(),
            forgotten_key_sets: self.seen.iter().map(|s| s.forgotten).sum(),
        };
        out.extend(coarse.into_iter().map(|(s, c)| Delta {
            resolution: resolutions[s.res as usize] as i64,
            bucket: s.bucket,
            dim: s.dim,
            key: names.key_text(&s.key),
            counters: c,
        }));
        out
    }

    /// Forget the coarse buckets' key sets of buckets that started before `before`
    /// (seconds).
    pub fn forget_before(&mut self, before: i64) {
        for s in &mut self.seen {
            s.forget_before(before);
        }
    }
}
