//! The ingest state machine: datagram → session decode → label → aggregation, plus what the
//! next commit must write. No sockets, no clock: the daemon drives it, tests and benches call
//! it directly.

use std::collections::HashMap;
use std::net::IpAddr;

use labelflow_proto::FlowRecord;

use crate::aggregate::{resolve_label, AggStats, Aggregator, Delta, FxBuild, OTHER};
use crate::config::{Config, LabelRule};
use crate::session::{DecodeError, Ingested, SessionStats, SessionTable};
use crate::store::{ScopedTemplate, Store, StoreError};
use crate::templates::TemplateRecord;

/// What one commit writes.
#[derive(Debug, Default)]
pub struct Batch {
    pub deltas: Vec<Delta>,
    pub templates: Vec<ScopedTemplate>,
    pub datagrams: usize,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub sessions: SessionStats,
    pub aggregation: AggStats,
    pub scopes: usize,
    /// (label, bytes, packets) since start, bounded; the rest under `other`.
    pub labels: Vec<(String, u64, u64)>,
    pub commits: u64,
    pub commit_errors: u64,
    pub committed_datagrams: u64,
    pub receive_errors: u64,
}

#[derive(Debug)]
pub struct Ingest {
    sessions: SessionTable,
    agg: Aggregator,
    rules: Vec<LabelRule>,
    records: Vec<FlowRecord>,
    found: Vec<TemplateRecord>,
    templates: Vec<ScopedTemplate>,
    datagrams: usize,
    labels: Vec<(String, u64, u64)>,
    label_index: HashMap<String, usize, FxBuild>,
    max_metric_labels: usize,
}

impl Ingest {
    pub fn new(cfg: &Config) -> Ingest {
        Ingest {
            sessions: SessionTable::new(cfg.max_exporters, cfg.max_templates_per_exporter),
            agg: Aggregator::new(cfg.agg.clone()),
            rules: cfg.label_rules.clone(),
            records: Vec::new(),
            found: Vec::new(),
            templates: Vec::new(),
            datagrams: 0,
            labels: Vec::new(),
            label_index: HashMap::default(),
            max_metric_labels: cfg.max_metric_labels,
        }
    }

    /// Replay the templates persisted in `store`; returns how many were loaded.
    pub fn restore(&mut self, store: &Store) -> Result<usize, StoreError> {
        let mut n = 0;
        for (scope, recs) in store.load_templates()? {
            n += recs.len();
            self.sessions.restore(scope, &recs);
        }
        Ok(n)
    }

    /// Handle one datagram.
    pub fn datagram(&mut self, exporter: IpAddr, bytes: &[u8]) -> Result<Ingested, DecodeError> {
        self.datagrams += 1;
        self.records.clear();
        self.found.clear();
        let r = self
            .sessions
            .ingest(exporter, bytes, &mut self.records, &mut self.found);
        if let Ok(i) = &r {
            for t in self.found.drain(..) {
                self.templates.push(ScopedTemplate {
                    scope: i.scope,
                    record: t,
                });
            }
            for rec in &self.records {
                let label = resolve_label(rec, exporter, &self.rules);
                let scale = u64::from(rec.sampling_interval.max(1));
                let idx = match self.label_index.get(label.as_ref()) {
                    Some(i) => *i,
                    None => {
                        let name = if self.labels.len() < self.max_metric_labels {
                            label.to_string()
                        } else {
                            OTHER.to_string()
                        };
                        let i = match self.labels.iter().position(|l| l.0 == name) {
                            Some(i) => i,
                            None => {
                                self.labels.push((name, 0, 0));
                                self.labels.len() - 1
                            }
                        };
                        if self.label_index.len() < 4 * self.max_metric_labels.max(16) {
                            self.label_index.insert(label.to_string(), i);
                        }
                        i
                    }
                };
                self.labels[idx].1 += rec.bytes.saturating_mul(scale);
                self.labels[idx].2 += rec.packets.saturating_mul(scale);
                self.agg.add(rec, &label);
            }
        }
        r
    }

    /// Datagrams handled since the last [`Ingest::take_batch`].
    pub fn pending_datagrams(&self) -> usize {
        self.datagrams
    }

    pub fn take_batch(&mut self) -> Batch {
        let b = Batch {
            deltas: self.agg.take(),
            templates: std::mem::take(&mut self.templates),
            datagrams: self.datagrams,
        };
        self.datagrams = 0;
        b
    }

    /// Forget per-bucket key bookkeeping older than `before` (seconds).
    pub fn forget_before(&mut self, before: i64) {
        self.agg.forget_before(before);
    }

    pub fn aggregator(&self) -> &Aggregator {
        &self.agg
    }

    pub fn fill(&self, s: &mut Snapshot) {
        s.sessions = self.sessions.stats.clone();
        s.aggregation = self.agg.stats.clone();
        s.scopes = self.sessions.scopes();
        s.labels = self.labels.clone();
    }
}

/// Log at most once per `interval_ms` per key; reports how many were suppressed meanwhile.
#[derive(Debug, Default)]
pub struct RateLimit {
    last: HashMap<&'static str, (u64, u64)>,
}

impl RateLimit {
    pub fn allow(&mut self, key: &'static str, now_ms: u64, interval_ms: u64) -> Option<u64> {
        let e = self.last.entry(key).or_insert((0, 0));
        if e.0 == 0 || now_ms.saturating_sub(e.0) >= interval_ms {
            let suppressed = e.1;
            *e = (now_ms.max(1), 0);
            Some(suppressed)
        } else {
            e.1 += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_suppressed() {
        let mut r = RateLimit::default();
        assert_eq!(r.allow("x", 1000, 1000), Some(0));
        assert_eq!(r.allow("x", 1500, 1000), None);
        assert_eq!(r.allow("x", 1600, 1000), None);
        assert_eq!(r.allow("y", 1600, 1000), Some(0));
        assert_eq!(r.allow("x", 2000, 1000), Some(2));
    }
}
