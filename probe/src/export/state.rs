//! `ExportState`: the pure per-target exporter.

use std::time::Duration;

use labelflow_proto::ipfix::MessageWriter;
use labelflow_proto::template::{self, AppIdEncoding, OptionsRecord};
use labelflow_proto::{v5, v9, FlowRecord};

use super::Format;

/// Knobs of one target's exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportConfig {
    /// Largest datagram payload, octets (default 1400: fits a 1500 MTU with IP/UDP headers
    /// and tunnel overhead).
    pub mtu: usize,
    /// IPFIX observation domain / v9 source id / v5 engine type (low 8 bits).
    pub domain: u32,
    /// Resend templates and options at least this often (default 60 s). RFC 7011
    /// section 8.4: over UDP, templates are resent periodically so a collector that
    /// started late or lost a datagram learns them.
    pub template_interval: Duration,
    /// ... and at least every this many messages (default 100).
    pub template_every: u32,
    /// Longest a partly filled message waits before it is sent (default 1 s).
    pub max_delay: Duration,
    /// How IPFIX data records carry `applicationId` (default RFC 6759's fixed 5 octets;
    /// see [`AppIdEncoding`] for which collector needs which).
    pub app_id: AppIdEncoding,
    /// Also announce the conntrack data templates (262, 263; the conntrack source is on).
    pub conntrack: bool,
}

/// Default largest datagram payload, octets.
pub const DEFAULT_MTU: usize = 1400;
/// Default template and options refresh interval.
pub const DEFAULT_TEMPLATE_INTERVAL: Duration = Duration::from_secs(60);
/// Default template and options refresh, in messages.
pub const DEFAULT_TEMPLATE_EVERY: u32 = 100;

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            mtu: DEFAULT_MTU,
            domain: 0,
            template_interval: DEFAULT_TEMPLATE_INTERVAL,
            template_every: DEFAULT_TEMPLATE_EVERY,
            max_delay: Duration::from_secs(1),
            app_id: AppIdEncoding::Rfc6759,
            conntrack: false,
        }
    }
}

/// One NFLOG group as collectors should see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupMeta {
    pub group: u32,
    pub label: String,
    pub description: String,
    /// Packets the probe received from this group so far.
    pub packets_total: u64,
    /// Packets lost before the probe could count them (sequence gaps, ENOBUFS).
    pub ignored_packets: u64,
}

/// An interface the probe saw, by ifindex.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InterfaceMeta {
    pub ifindex: u32,
    pub name: String,
    pub description: String,
}

/// What the exporter announces in options records beside the flows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExportMeta {
    pub groups: Vec<GroupMeta>,
    pub interfaces: Vec<InterfaceMeta>,
}

/// Counters of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportStats {
    /// Datagrams handed to the sink.
    pub messages: u64,
    /// Flow records exported.
    pub records: u64,
    /// Options records exported.
    pub options_records: u64,
    /// Octets handed to the sink.
    pub bytes: u64,
    /// Template (re)sends.
    pub template_sends: u64,
    /// Records a format cannot carry (IPv6 over NetFlow v5).
    pub skipped: u64,
}

#[derive(Debug, Clone)]
enum Writer {
    Ipfix(MessageWriter),
    V9(v9::PacketWriter),
    /// Boxed: the v5 packet is a fixed 1464-octet array.
    V5(Box<v5::PacketWriter>, usize),
}

/// The exporter of one target: packs records into MTU-bounded messages, interleaves
/// templates and options, keeps sequence numbers, and hands finished datagrams to a sink.
#[derive(Debug, Clone)]
pub struct ExportState {
    format: Format,
    cfg: ExportConfig,
    writer: Writer,
    /// Whether a message is being filled, and since when.
    open_since: Option<u64>,
    /// Uptime origin for v9/v5 (a whole second, so that `unix_secs * 1000 - sys_uptime`
    /// gives it back exactly).
    boot_ms: Option<u64>,
    /// IPFIX: data records sent; v9: packets sent; v5: flows sent.
    sequence: u32,
    last_templates_ms: Option<u64>,
    messages_since_templates: u32,
    meta: ExportMeta,
    stats: ExportStats,
}

impl ExportState {
    pub fn new(format: Format, cfg: ExportConfig) -> Self {
        let writer = match format {
            Format::Ipfix => Writer::Ipfix(MessageWriter::new(cfg.mtu)),
            Format::NetflowV9 => Writer::V9(v9::PacketWriter::new(cfg.mtu)),
            Format::NetflowV5 => {
                Writer::V5(Box::default(), v5::PacketWriter::capacity_for_mtu(cfg.mtu))
            }
        };
        ExportState {
            format,
            cfg,
            writer,
            open_since: None,
            boot_ms: None,
            sequence: 0,
            last_templates_ms: None,
            messages_since_templates: 0,
            meta: ExportMeta::default(),
            stats: ExportStats::default(),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }
    pub fn stats(&self) -> &ExportStats {
        &self.stats
    }
    /// The current sequence number (see the field meaning per format in the module docs).
    pub fn sequence(&self) -> u32 {
        self.sequence
    }

    /// Replaces the metadata sent in options records. A change of labels or interface
    /// names makes the next message carry templates and options again.
    pub fn set_meta(&mut self, meta: ExportMeta) {
        let names_changed = meta.interfaces != self.meta.interfaces
            || meta.groups.len() != self.meta.groups.len()
            || meta.groups.iter().zip(&self.meta.groups).any(|(a, b)| {
                a.group != b.group || a.label != b.label || a.description != b.description
            });
        self.meta = meta;
        if names_changed {
            self.last_templates_ms = None;
        }
    }

    fn boot(&mut self, now_ms: u64) -> u64 {
        *self.boot_ms.get_or_insert(now_ms / 1000 * 1000)
    }

    fn templates_due(&self, now_ms: u64) -> bool {
        match self.last_templates_ms {
            None => true,
            Some(t) => {
                now_ms.saturating_sub(t) >= self.cfg.template_interval.as_millis() as u64
                    || self.messages_since_templates >= self.cfg.template_every
            }
        }
    }

    /// When `tick` next has work: the flush of an open message or the template refresh.
    pub fn next_deadline(&self) -> Option<u64> {
        let flush = self
            .open_since
            .map(|t| t + self.cfg.max_delay.as_millis() as u64);
        let refresh = match (self.format, self.last_templates_ms) {
            (Format::NetflowV5, _) | (_, None) => None,
            (_, Some(t)) => Some(t + self.cfg.template_interval.as_millis() as u64),
        };
        match (flush, refresh) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn begin<F: FnMut(&[u8])>(&mut self, now_ms: u64, group: u32, sink: &mut F) {
        let boot = self.boot(now_ms);
        let secs = (now_ms / 1000) as u32;
        let uptime = (u64::from(secs) * 1000).saturating_sub(boot) as u32;
        let domain = self.cfg.domain;
        match &mut self.writer {
            Writer::Ipfix(w) => w.begin(secs, self.sequence, domain),
            Writer::V9(w) => w.begin(uptime, secs, self.sequence, domain),
            Writer::V5(w, _) => w.begin(uptime, secs, 0, self.sequence, domain as u8, group as u8),
        }
        self.open_since = Some(now_ms);
        if self.format != Format::NetflowV5 && self.templates_due(now_ms) {
            self.write_templates_and_options(now_ms, sink);
        }
    }

    fn options(&self) -> Vec<OptionsRecord> {
        let mut v = Vec::with_capacity(1 + 2 * self.meta.groups.len() + self.meta.interfaces.len());
        v.push(OptionsRecord::Sampling {
            domain: self.cfg.domain,
            interval: 1,
            space: 0,
        });
        for g in &self.meta.groups {
            v.push(OptionsRecord::AppName {
                group: g.group,
                name: g.label.clone(),
                description: g.description.clone(),
            });
            v.push(OptionsRecord::GroupStats {
                group: g.group,
                packets_total: g.packets_total,
                ignored_packets: g.ignored_packets,
            });
        }
        for i in &self.meta.interfaces {
            v.push(OptionsRecord::Interface {
                ifindex: i.ifindex,
                name: i.name.clone(),
                description: i.description.clone(),
            });
        }
        v
    }

    /// Writes all templates, then the options records, into the open message (continuing
    /// in new messages when they do not fit).
    fn write_templates_and_options<F: FnMut(&[u8])>(&mut self, now_ms: u64, sink: &mut F) {
        self.last_templates_ms = Some(now_ms);
        self.messages_since_templates = 0;
        self.stats.template_sends += 1;
        let ok = match &mut self.writer {
            Writer::Ipfix(w) => template::write_templates_with(w, self.cfg.app_id),
            Writer::V9(w) => v9::ALL.iter().all(|t| w.write_template(t)),
            Writer::V5(..) => true,
        };
        debug_assert!(ok, "templates fit in the smallest MTU");
        if let (Writer::Ipfix(_), true) = (&self.writer, self.cfg.conntrack) {
            for t in template::conntrack_templates(self.cfg.app_id) {
                for attempt in 0..2 {
                    let Writer::Ipfix(w) = &mut self.writer else {
                        break;
                    };
                    if w.write_template(t) {
                        break;
                    }
                    if attempt == 0 {
                        // Templates may continue in the next message (RFC 7011 section 8.4
                        // over UDP: they only have to come before the data that uses them).
                        self.emit(sink);
                        self.reopen_without_templates(now_ms);
                    }
                }
            }
        }
        let domain = self.cfg.domain;
        for o in self.options() {
            for attempt in 0..2 {
                let written = match (&mut self.writer, &o) {
                    (Writer::Ipfix(w), o) => o.write(w),
                    (Writer::V9(w), o) => w.write_options(&v9_options(o, domain)),
                    (Writer::V5(..), _) => true,
                };
                if written {
                    self.stats.options_records += 1;
                    break;
                }
                if attempt == 0 {
                    // Options data stays valid with the templates of the previous message.
                    self.emit(sink);
                    self.reopen_without_templates(now_ms);
                }
            }
        }
    }

    fn reopen_without_templates(&mut self, now_ms: u64) {
        let secs = (now_ms / 1000) as u32;
        let boot = self.boot(now_ms);
        let uptime = (u64::from(secs) * 1000).saturating_sub(boot) as u32;
        match &mut self.writer {
            Writer::Ipfix(w) => w.begin(secs, self.sequence, self.cfg.domain),
            Writer::V9(w) => w.begin(uptime, secs, self.sequence, self.cfg.domain),
            Writer::V5(..) => {}
        }
        self.open_since = Some(now_ms);
    }

    /// Finishes the open message and hands it to the sink.
    fn emit<F: FnMut(&[u8])>(&mut self, sink: &mut F) {
        if self.open_since.take().is_none() {
            return;
        }
        let (bytes, advance) = match &mut self.writer {
            Writer::Ipfix(w) => {
                let n = w.data_records();
                (w.finish(), n)
            }
            Writer::V9(w) => (w.finish(), 1),
            Writer::V5(w, _) => {
                let n = w.len() as u32;
                (w.finish(), n)
            }
        };
        self.stats.messages += 1;
        self.stats.bytes += bytes.len() as u64;
        sink(bytes);
        self.sequence = self.sequence.wrapping_add(advance);
        self.messages_since_templates = self.messages_since_templates.saturating_add(1);
    }

    /// Adds one flow record; full messages go to `sink`.
    pub fn push<F: FnMut(&[u8])>(&mut self, rec: &FlowRecord, now_ms: u64, mut sink: F) {
        let group = rec.group.unwrap_or(0);
        if self.format == Format::NetflowV5 && !(rec.src_addr.is_ipv4() && rec.dst_addr.is_ipv4()) {
            self.stats.skipped += 1;
            return;
        }
        // A v5 packet has one engine_id: a record of another group starts a new packet.
        if let (Writer::V5(w, _), Some(_)) = (&self.writer, self.open_since) {
            if !w.is_empty() && w.engine_id() != group as u8 {
                self.emit(&mut sink);
            }
        }
        // Three tries: the open message may be full; a new one may then be filled by the
        // templates and options it starts with (the conntrack templates make them nearly an
        // MTU); the one after that carries data only.
        for _ in 0..3 {
            if self.open_since.is_none() {
                self.begin(now_ms, group, &mut sink);
            }
            let boot = self.boot(now_ms);
            let written = match &mut self.writer {
                Writer::Ipfix(w) => template::write_flow_with(w, rec, self.cfg.app_id),
                Writer::V9(w) => w.write_flow(rec, boot),
                Writer::V5(w, cap) => w.len() < *cap && w.push(rec, boot),
            };
            if written {
                self.stats.records += 1;
                return;
            }
            self.emit(&mut sink);
        }
        // Larger than an empty message: cannot be sent at this MTU.
        self.stats.skipped += 1;
    }

    /// Sends a partly filled message older than `max_delay`, and templates and options
    /// when their refresh is due (even without flows, so loss counters keep flowing).
    pub fn tick<F: FnMut(&[u8])>(&mut self, now_ms: u64, mut sink: F) {
        if let Some(t) = self.open_since {
            if now_ms.saturating_sub(t) >= self.cfg.max_delay.as_millis() as u64 {
                self.emit(&mut sink);
            }
        }
        if self.format != Format::NetflowV5
            && self.open_since.is_none()
            && self.last_templates_ms.is_some()
            && self.templates_due(now_ms)
        {
            self.begin(now_ms, 0, &mut sink);
            self.emit(&mut sink);
        }
    }

    /// Sends the open message, then a message with templates and every options record
    /// (the current loss counters), e.g. at shutdown. No-op for NetFlow v5.
    pub fn send_options<F: FnMut(&[u8])>(&mut self, now_ms: u64, mut sink: F) {
        if self.format == Format::NetflowV5 {
            return;
        }
        self.emit(&mut sink);
        self.last_templates_ms = None;
        self.begin(now_ms, 0, &mut sink);
        self.emit(&mut sink);
    }

    /// Sends the open message now (shutdown, or before the meta changes).
    pub fn flush<F: FnMut(&[u8])>(&mut self, mut sink: F) {
        self.emit(&mut sink);
    }
}

fn v9_options(o: &OptionsRecord, source_id: u32) -> v9::OptionsData<'_> {
    match o {
        OptionsRecord::AppName {
            group,
            name,
            description,
        } => v9::OptionsData::AppName {
            source_id,
            group: *group,
            name,
            description,
        },
        OptionsRecord::Interface {
            ifindex,
            name,
            description,
        } => v9::OptionsData::Interface {
            ifindex: *ifindex,
            name,
            description,
        },
        OptionsRecord::GroupStats {
            group,
            packets_total,
            ignored_packets,
        } => v9::OptionsData::GroupStats {
            source_id,
            group: *group,
            packets_total: *packets_total,
            ignored_packets: *ignored_packets,
        },
        OptionsRecord::Sampling { interval, .. } => v9::OptionsData::Sampling {
            source_id,
            interval: *interval,
        },
        _ => v9::OptionsData::Sampling {
            source_id,
            interval: 1,
        },
    }
}

#[cfg(test)]
mod tests;
