//! Rendering a take for the store: base-resolution counters rolled up into every coarser
//! resolution and their keys named. Pure, and apart from the aggregator so that it runs on
//! the store thread: the ingest thread only swaps its pending maps out and goes on receiving.

use std::collections::HashMap;
use std::sync::Arc;

use super::keys::{Counters, Delta, Dim, FxBuild, Key, Slot};
use super::KeyNames;

/// The base-resolution counters of one [`Aggregator::take_base`](super::Aggregator::take_base),
/// keyed as stored (label bound applied, views summed), with the names to render them.
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

    /// The deltas of every resolution, keys as text.
    pub fn render(self) -> Vec<Delta> {
        let resolutions = &self.names.cfg.resolutions;
        let mut all: HashMap<Slot, Counters, FxBuild> = HashMap::default();
        all.reserve(self.base.len() * resolutions.len());
        for (bucket, dim, key, c) in self.base {
            for (res, r) in resolutions.iter().enumerate() {
                let r = *r as i64;
                all.entry(Slot {
                    res: res as u8,
                    bucket: bucket.div_euclid(r) * r,
                    dim,
                    key,
                })
                .or_default()
                .add(&c);
            }
        }
        all.into_iter()
            .map(|(s, c)| Delta {
                resolution: resolutions[s.res as usize] as i64,
                bucket: s.bucket,
                dim: s.dim,
                key: self.names.key_text(&s.key),
                counters: c,
            })
            .collect()
    }
}
