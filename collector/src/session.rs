//! Template sessions: one `netflow_parser` decoder and one option context per
//! (exporter address, observation domain), bounded by an LRU; sequence accounting; reasons
//! for rejected datagrams.
//!
//! `netflow_parser` keys its template cache by template id only, so two exporters (or two
//! domains of one exporter, RFC 7011 section 3.1) that use the same id would overwrite each
//! other in a shared decoder. Routing each datagram by the header's address and domain to
//! its own decoder keeps them apart.
//!
//! IPFIX messages made only of data sets whose (plain) templates the session already knows
//! take a zero-copy path: records are read straight from the datagram with
//! `labelflow_proto::ipfix` and mapped by the same [`RecordBuilder`] rules as the
//! `netflow_parser` path. Anything else (template or options sets, options templates,
//! unknown templates, any decode error) sends the whole datagram through `netflow_parser`,
//! which stays the reference and keeps learning templates and options. Templates whose
//! elements allow it are also compiled into a [`FlowPlan`], which hands records on as
//! borrowed [`FlowView`]s: no allocation per record.
//!
//! NetFlow v9 messages made only of data flowsets take the same compiled path when their
//! templates compile (v9 field types are IPFIX element ids, RFC 3954 section 8 and RFC 7012;
//! times are placed by the header's sysUpTime); anything else goes to `netflow_parser`.
//! [`RecordBuilder`]: labelflow_proto::convert::RecordBuilder

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroUsize;

use labelflow_proto::convert::{
    convert_ipfix_data_set, convert_packet, ApplicationKey, ExporterContext, PacketSummary,
};
use labelflow_proto::ie::{FieldSpec, VARLEN};
use labelflow_proto::ipfix::{Message, Template};
use labelflow_proto::plan::{ExportClock, FlowPlan, FlowView};
use labelflow_proto::FlowRecord;
use lru::LruCache;
use netflow_parser::variable_versions::MAX_FIELD_COUNT;
use netflow_parser::{
    NetflowError, NetflowParser, DEFAULT_MAX_DECODED_FIELD_VALUES_PER_MESSAGE,
    DEFAULT_MAX_RECORDS_PER_FLOWSET,
};

use crate::aggregate::FxBuild;
use crate::templates::{self, TemplateRecord};

/// Exporter scope: where the datagram came from and which observation domain it speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeKey {
    pub exporter: IpAddr,
    pub domain: u32,
}

/// Why a datagram (or part of it) was not decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum DecodeError {
    #[error("shorter than a header")]
    Truncated,
    #[error("unsupported version")]
    Version,
    #[error("header length disagrees with the datagram")]
    Length,
    #[error("malformed message")]
    Malformed,
    #[error("decoded output over the limit")]
    Limit,
    #[error("data set for an unknown template")]
    MissingTemplate,
    #[error("observation domain beyond max_domains_per_exporter")]
    DomainLimit,
}

impl DecodeError {
    pub const ALL: [DecodeError; 7] = [
        DecodeError::Truncated,
        DecodeError::Version,
        DecodeError::Length,
        DecodeError::Malformed,
        DecodeError::Limit,
        DecodeError::MissingTemplate,
        DecodeError::DomainLimit,
    ];

    /// Stable name for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            DecodeError::Truncated => "truncated",
            DecodeError::Version => "version",
            DecodeError::Length => "length",
            DecodeError::Malformed => "malformed",
            DecodeError::Limit => "limit",
            DecodeError::MissingTemplate => "missing_template",
            DecodeError::DomainLimit => "domain_limit",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of the session table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub datagrams: u64,
    pub flow_records: u64,
    pub options_records: u64,
    pub template_records: u64,
    /// Indexed by `DecodeError as usize`.
    pub errors: [u64; 7],
    /// Sequence discontinuities and the number of records (v5, IPFIX) or packets (v9) they
    /// imply were lost.
    pub sequence_gaps: u64,
    pub sequence_lost: u64,
    /// Sequence numbers that went backwards (reordering or exporter restart).
    pub sequence_resets: u64,
    pub evicted_scopes: u64,
    /// Datagrams decoded by the zero-copy IPFIX or v9 path (a subset of `datagrams`).
    pub fast_datagrams: u64,
    /// Application names (options records) not kept: the scope had
    /// `max_application_names`.
    pub refused_application_names: u64,
    /// Records (v5, IPFIX) or packets (v9) the first message of each exporter after a
    /// restart found missing: received but not committed before it, or sent while the
    /// collector was down (part of `sequence_lost`).
    pub lost_across_restart: u64,
}

/// The sequence number a scope expects next in one format (0: v5/v7, 1: v9, 2: IPFIX), as
/// persisted with the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceState {
    pub scope: ScopeKey,
    pub stream: u8,
    pub next: u32,
}

impl SessionStats {
    pub fn error(&self, e: DecodeError) -> u64 {
        self.errors[e.index()]
    }
}

#[derive(Debug)]
struct Session {
    parser: NetflowParser,
    ctx: ExporterContext,
    /// Sequence number the next message should carry, when known, per format (v5/v7, v9,
    /// IPFIX): each format numbers its own stream.
    next_sequence: [Option<u32>; 3],
    /// Per format, whether `next_sequence` came from the store (a restart) and no message
    /// has been checked against it yet.
    restored: [bool; 3],
    /// IPFIX templates for the zero-copy path, learned from the same template records the
    /// parser saw; `None` marks an id the fast path must not decode (options template,
    /// template it cannot use). Ids are the exporter's own, so a fast unkeyed hash risks
    /// nothing beyond its own scope.
    fast: HashMap<u16, Option<FastTemplate>, FxBuild>,
    /// NetFlow v9 templates compiled for the zero-copy path (`None`: the parser decodes
    /// that id), learned as `fast` is.
    fast_v9: HashMap<u16, Option<FlowPlan>, FxBuild>,
    /// Set for good once the parser's template caches hold half of
    /// `max_templates_per_exporter` (the cache size, so before it evicts anything):
    /// the parser then decodes all of the scope's data, so that use, not only arrival, keeps
    /// its least-recently-used order (a data set taken by the fast path does not touch it).
    crowded: bool,
    /// Records of templates without a plan, between checking and handing on.
    scratch: Vec<FlowRecord>,
}

impl Session {
    /// Learn the template records of a message `netflow_parser` has just parsed. When the
    /// parser reported an error, or the sets cannot be walked, nothing from this message is
    /// trusted: the ids it names (or all ids) go back to the parser.
    fn learn_templates(&mut self, message: &[u8], parser_failed: bool, max: usize) {
        if self.crowded {
            return;
        }
        let cached =
            self.parser.v9_cache_info().current_size + self.parser.ipfix_cache_info().current_size;
        if cached >= max.div_ceil(2) {
            self.crowded = true;
            self.fast.clear();
            self.fast_v9.clear();
            return;
        }
        if message.get(..2) == Some(&[0, 9]) {
            self.learn_v9_templates(message, parser_failed, max);
            return;
        }
        let Ok(msg) = Message::new_checked(message) else {
            return;
        };
        for set in msg.sets() {
            let Ok(set) = set else {
                self.fast.clear();
                return;
            };
            if set.is_data() {
                continue;
            }
            for t in set.templates() {
                let Ok(t) = t else {
                    self.fast.clear();
                    return;
                };
                // An id the map does not hold goes to the parser anyway: past the bound,
                // new ids are simply not learned.
                if self.fast.len() >= max && !self.fast.contains_key(&t.id) {
                    continue;
                }
                if parser_failed || set.is_options_template() || t.is_withdrawal() {
                    // RFC 7011 section 8.1: a withdrawal (field count 0) removes the id.
                    self.fast.insert(t.id, None);
                    continue;
                }
                self.fast
                    .insert(t.id, t.to_template().ok().map(FastTemplate::new));
            }
        }
    }

    /// The NetFlow v9 counterpart of [`Session::learn_templates`]: when the message cannot be
    /// walked whole, nothing v9 is decoded by the fast path until templates come again.
    fn learn_v9_templates(&mut self, message: &[u8], parser_failed: bool, max: usize) {
        let Some(found) = templates::v9_templates(message) else {
            self.fast_v9.clear();
            return;
        };
        for t in found {
            if self.fast_v9.len() >= max && !self.fast_v9.contains_key(&t.template_id) {
                continue;
            }
            let plan = if parser_failed || t.set_id != 0 {
                None
            } else {
                v9_plan(&t.bytes)
            };
            self.fast_v9.insert(t.template_id, plan);
        }
    }

    /// Decode a NetFlow v9 message made only of data flowsets whose templates compiled, as
    /// [`Session::decode_fast`] does for IPFIX.
    fn decode_fast_v9(
        &mut self,
        message: &[u8],
        sink: &mut impl FlowSink,
    ) -> Option<PacketSummary> {
        let be32 = |at: usize| {
            let b = message.get(at..at + 4)?;
            Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let (sys_uptime, unix_secs) = (be32(4)?, be32(8)?);
        let (sequence, source_id) = (be32(12)?, be32(16)?);
        let mut produced = 0u32;
        let mut values = 0usize;
        let mut at = 20;
        while at < message.len() {
            let (id, body) = v9_flowset(message, at)?;
            if !self.parser.has_v9_template(id) {
                return None;
            }
            let plan = self.fast_v9.get(&id)?.as_ref()?;
            let n = plan.check(body).ok()?;
            // Within what the parser decodes of a flowset and a message (its default
            // bounds, which the session's parsers keep); past them it decides.
            values += n * plan.fields();
            if n > DEFAULT_MAX_RECORDS_PER_FLOWSET
                || values > DEFAULT_MAX_DECODED_FIELD_VALUES_PER_MESSAGE
            {
                return None;
            }
            produced += n as u32;
            at += 4 + body.len();
        }
        if at == 20 {
            return None;
        }
        let clock = ExportClock {
            export_secs: unix_secs,
            sys_uptime_ms: Some(sys_uptime),
        };
        let ctx = &self.ctx;
        let mut at = 20;
        while let Some((id, body)) = v9_flowset(message, at) {
            at += 4 + body.len();
            if let Some(Some(plan)) = self.fast_v9.get(&id) {
                plan.decode(body, source_id, clock, ctx, |v| sink.view(v, ctx));
            }
        }
        Some(PacketSummary {
            version: 9,
            observation_domain: source_id,
            sequence,
            flow_records: produced,
            ..PacketSummary::default()
        })
    }

    /// Decode a message made only of data sets with known plain templates, handing its
    /// records to `sink`; `None` (and nothing handed on) when the message needs the parser.
    /// Every set is checked before the first record goes out, so a message is taken either
    /// whole by this path or whole by the parser.
    fn decode_fast(&mut self, message: &[u8], sink: &mut impl FlowSink) -> Option<PacketSummary> {
        let msg = Message::new_checked(message).ok()?;
        let (domain, export) = (msg.domain(), msg.export_time());
        let mut produced = 0u32;
        let mut sets = 0;
        for set in msg.sets() {
            let set = set.ok()?;
            if !set.is_data() || !self.parser.has_ipfix_template(set.id) {
                return None;
            }
            produced += self.fast.get(&set.id)?.as_ref()?.check(set.body)?;
            sets += 1;
        }
        if sets == 0 {
            return None;
        }
        for set in msg.sets().flatten() {
            let Some(Some(t)) = self.fast.get(&set.id) else {
                continue;
            };
            match &t.plan {
                Some(plan) => {
                    let ctx = &self.ctx;
                    let clock = ExportClock {
                        export_secs: export,
                        sys_uptime_ms: None,
                    };
                    plan.decode(set.body, domain, clock, ctx, |v| sink.view(v, ctx));
                }
                None => {
                    self.scratch.clear();
                    let _ = convert_ipfix_data_set(
                        &t.template,
                        set.body,
                        domain,
                        export,
                        &self.ctx,
                        &mut self.scratch,
                    );
                    for r in self.scratch.drain(..) {
                        sink.record(r);
                    }
                }
            }
        }
        Some(PacketSummary {
            version: 10,
            observation_domain: domain,
            sequence: msg.sequence(),
            flow_records: produced,
            ..PacketSummary::default()
        })
    }
}

/// Where decoded flow records go: borrowed views from the compiled-template path, owned
/// records from every other path. Both describe a record the same way
/// ([`FlowView::to_record`] is what the general path would have produced).
pub trait FlowSink {
    fn view(&mut self, view: &FlowView<'_>, ctx: &ExporterContext);
    fn record(&mut self, record: FlowRecord);
}

/// Collects every record as an owned [`FlowRecord`].
impl FlowSink for Vec<FlowRecord> {
    fn view(&mut self, view: &FlowView<'_>, ctx: &ExporterContext) {
        self.push(view.to_record(ctx));
    }
    fn record(&mut self, record: FlowRecord) {
        self.push(record);
    }
}

/// An IPFIX template the zero-copy path can use, compiled when its elements allow.
#[derive(Debug)]
struct FastTemplate {
    template: Template,
    plan: Option<FlowPlan>,
}

impl FastTemplate {
    fn new(template: Template) -> FastTemplate {
        let plan = FlowPlan::compile(&template);
        FastTemplate { template, plan }
    }

    /// Records in a data set body, or `None` where decoding would fail.
    fn check(&self, body: &[u8]) -> Option<u32> {
        match &self.plan {
            Some(p) => p.check(body).ok().map(|n| n as u32),
            None => {
                let mut n = 0u32;
                for r in self.template.records(body) {
                    r.ok()?;
                    n += 1;
                }
                Some(n)
            }
        }
    }
}

/// The flowset at `at` of a v9 message: its id and body; `None` when no whole flowset
/// starts there.
fn v9_flowset(message: &[u8], at: usize) -> Option<(u16, &[u8])> {
    let head = message.get(at..at + 4)?;
    let id = u16::from_be_bytes([head[0], head[1]]);
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let body = message.get(at + 4..at.checked_add(len)?)?;
    (len >= 4).then_some((id, body))
}

/// The plan of a v9 template record (id, field count, then type and length per field), when
/// the parser's decoding of every field is the plan's: no zero or variable lengths (v9 has
/// none; the parser refuses the latter), no type above 32767 (which an IPFIX template
/// would read as an enterprise element), records of at most 65535 octets.
fn v9_plan(record: &[u8]) -> Option<FlowPlan> {
    let mut fields = Vec::new();
    for pair in record.get(4..)?.chunks_exact(4) {
        let id = u16::from_be_bytes([pair[0], pair[1]]);
        let len = u16::from_be_bytes([pair[2], pair[3]]);
        if len == 0 || len == VARLEN || id >= 0x8000 {
            return None;
        }
        fields.push(FieldSpec::iana(id, len));
    }
    // netflow_parser refuses templates of more fields than its max_field_count, keeping the
    // id's former definition.
    if fields.len() > MAX_FIELD_COUNT
        || fields.iter().map(|f| usize::from(f.length)).sum::<usize>() > usize::from(u16::MAX)
    {
        return None;
    }
    let id = u16::from_be_bytes([*record.first()?, *record.get(1)?]);
    FlowPlan::compile(&Template::new(id, 0, fields).ok()?)
}

/// Bounds on what one exporter can make a [`SessionTable`] keep beyond its templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScopeLimits {
    /// Observation domains (scopes) per exporter address.
    pub max_domains_per_exporter: usize,
    /// Application names per scope.
    pub max_application_names: usize,
    /// Longest application name kept, in octets (longer ones are cut).
    pub max_name_bytes: usize,
    /// Longest template record accepted, in octets (a datagram with a longer one is
    /// refused, reason `limit`).
    pub max_template_bytes: usize,
}

impl Default for ScopeLimits {
    fn default() -> Self {
        ScopeLimits {
            max_domains_per_exporter: 16,
            max_application_names: 4096,
            max_name_bytes: 128,
            max_template_bytes: 2048,
        }
    }
}

/// What one datagram produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    pub scope: ScopeKey,
    pub summary: PacketSummary,
    /// The first problem met, if any (the records before it are still delivered).
    pub error: Option<DecodeError>,
}

/// All exporter scopes.
#[derive(Debug)]
pub struct SessionTable {
    /// Keyed by addresses anyone can spoof: the default (keyed, collision-resistant) hasher.
    sessions: LruCache<ScopeKey, Session>,
    /// Scopes per exporter address, for `max_domains_per_exporter`.
    domains: HashMap<IpAddr, usize>,
    max_templates: NonZeroUsize,
    limits: ScopeLimits,
    fast_path: bool,
    /// Scopes whose options records may have changed their context since the last
    /// [`SessionTable::take_changed_contexts`].
    changed: Vec<ScopeKey>,
    /// Scopes whose expected sequence numbers moved since the last
    /// [`SessionTable::take_changed_sequences`].
    sequences_changed: std::collections::HashSet<ScopeKey>,
    pub stats: SessionStats,
}

impl SessionTable {
    pub fn new(max_exporters: NonZeroUsize, max_templates: NonZeroUsize) -> SessionTable {
        SessionTable {
            sessions: LruCache::new(max_exporters),
            domains: HashMap::new(),
            max_templates,
            limits: ScopeLimits::default(),
            fast_path: true,
            changed: Vec::new(),
            sequences_changed: std::collections::HashSet::new(),
            stats: SessionStats::default(),
        }
    }

    /// Turn the zero-copy IPFIX and v9 paths on (the default) or off (every datagram through
    /// `netflow_parser`); the output is the same either way.
    pub fn set_fast_path(&mut self, on: bool) {
        self.fast_path = on;
    }

    pub fn scopes(&self) -> usize {
        self.sessions.len()
    }

    /// Bound what one exporter address can make the table keep (see [`ScopeLimits`]).
    pub fn set_limits(&mut self, limits: ScopeLimits) {
        self.limits = limits;
    }

    /// The scope's session, created if new; `None` when its address already has
    /// `max_domains_per_exporter` scopes.
    fn session_checked(&mut self, scope: ScopeKey) -> Option<&mut Session> {
        if !self.sessions.contains(&scope)
            && self.domains.get(&scope.exporter).copied().unwrap_or(0)
                >= self.limits.max_domains_per_exporter
        {
            return None;
        }
        Some(self.session(scope))
    }

    fn session(&mut self, scope: ScopeKey) -> &mut Session {
        if !self.sessions.contains(&scope) {
            *self.domains.entry(scope.exporter).or_default() += 1;
            let parser = NetflowParser::builder()
                .with_cache_size(self.max_templates.get())
                .build()
                .expect("template cache size is non-zero");
            let s = Session {
                parser,
                ctx: ExporterContext::default(),
                next_sequence: [None; 3],
                restored: [false; 3],
                fast: HashMap::default(),
                fast_v9: HashMap::default(),
                crowded: false,
                scratch: Vec::new(),
            };
            if let Some((gone, _)) = self.sessions.push(scope, s) {
                self.stats.evicted_scopes += 1;
                if let Some(n) = self.domains.get_mut(&gone.exporter) {
                    *n -= 1;
                    if *n == 0 {
                        self.domains.remove(&gone.exporter);
                    }
                }
            }
        }
        self.sessions.get_mut(&scope).expect("just inserted")
    }

    /// Replay persisted template records into the scope's decoder.
    pub fn restore(&mut self, scope: ScopeKey, records: &[TemplateRecord]) {
        let max = self.max_templates.get();
        let session = self.session(scope);
        for r in records {
            let msg = templates::replay_message(r, scope.domain);
            let failed = session.parser.parse_bytes(&msg).error.is_some();
            session.learn_templates(&msg, failed, max);
        }
    }

    /// Set a scope's options state (application names, sampling) as persisted.
    pub fn restore_context(&mut self, scope: ScopeKey, ctx: ExporterContext) {
        self.session(scope).ctx = ctx;
    }

    /// Set a scope's expected sequence number of one format as persisted: the first message
    /// after a restart then counts as lost what was received but not committed before the
    /// restart, plus what arrived while the collector was down.
    pub fn restore_sequence(&mut self, s: SequenceState) {
        let slot = usize::from(s.stream);
        if slot < 3 {
            let session = self.session(s.scope);
            session.next_sequence[slot] = Some(s.next);
            session.restored[slot] = true;
        }
    }

    /// The expected sequence numbers of every scope whose numbers moved since the last call,
    /// for persistence in the same transaction as the counts of the same datagrams.
    pub fn take_changed_sequences(&mut self) -> Vec<SequenceState> {
        let mut out = Vec::new();
        for scope in std::mem::take(&mut self.sequences_changed) {
            let Some(session) = self.sessions.peek(&scope) else {
                continue;
            };
            for (stream, next) in session.next_sequence.iter().enumerate() {
                if let Some(next) = next {
                    out.push(SequenceState {
                        scope,
                        stream: stream as u8,
                        next: *next,
                    });
                }
            }
        }
        out
    }

    /// The options state of every scope whose options records arrived since the last call,
    /// for persistence (scopes evicted meanwhile are left out).
    pub fn take_changed_contexts(&mut self) -> Vec<(ScopeKey, ExporterContext)> {
        let changed = std::mem::take(&mut self.changed);
        changed
            .into_iter()
            .filter_map(|scope| Some((scope, self.sessions.peek(&scope)?.ctx.clone())))
            .collect()
    }

    /// Decode one datagram from `exporter`, handing its flow records to `sink` and appending
    /// the template records it carried to `templates` (for persistence).
    pub fn ingest(
        &mut self,
        exporter: IpAddr,
        datagram: &[u8],
        sink: &mut impl FlowSink,
        templates: &mut Vec<TemplateRecord>,
    ) -> Result<Ingested, DecodeError> {
        self.stats.datagrams += 1;
        let r = self.ingest_inner(exporter, datagram, sink, templates);
        match &r {
            Err(e) => self.stats.errors[e.index()] += 1,
            Ok(i) => {
                if let Some(e) = i.error {
                    self.stats.errors[e.index()] += 1;
                }
            }
        }
        r
    }

    fn ingest_inner(
        &mut self,
        exporter: IpAddr,
        datagram: &[u8],
        sink: &mut impl FlowSink,
        templates: &mut Vec<TemplateRecord>,
    ) -> Result<Ingested, DecodeError> {
        let (message, domain) = frame(datagram)?;
        let scope = ScopeKey { exporter, domain };
        let (fast_path, max) = (self.fast_path, self.max_templates.get());
        let max_names = self.limits.max_application_names;
        let max_name_bytes = self.limits.max_name_bytes;
        let max_template = self.limits.max_template_bytes;
        let Some(session) = self.session_checked(scope) else {
            return Err(DecodeError::DomainLimit);
        };
        let fast = match (fast_path, &datagram[..2]) {
            (true, [0, 10]) => session.decode_fast(message, sink),
            (true, [0, 9]) => session.decode_fast_v9(message, sink),
            _ => None,
        };
        let fast_hit = fast.is_some();
        let mut options = false;
        let mut refused_names = 0;
        let (summary, mut error, produced) = match fast {
            Some(summary) => (summary, None, summary.flow_records),
            None => {
                // Template records first: one longer than the bound refuses the datagram
                // before the parser keeps anything of it.
                let mark = templates.len();
                if matches!(datagram[..2], [0, 9] | [0, 10]) {
                    templates::extract(message, templates);
                }
                if templates[mark..]
                    .iter()
                    .any(|t| t.bytes.len() > max_template)
                {
                    templates.truncate(mark);
                    return Err(DecodeError::Limit);
                }
                let result = session.parser.parse_bytes(message);
                let error = result.error.as_ref().map(classify);
                let mut summary = PacketSummary::default();
                session.scratch.clear();
                // Past the bound, the names already known stay and new ones are refused.
                let known = (session.ctx.applications.len() >= max_names).then(|| {
                    session
                        .ctx
                        .applications
                        .keys()
                        .copied()
                        .collect::<std::collections::HashSet<_>>()
                });
                for p in &result.packets {
                    summary = convert_packet(p, &mut session.ctx, &mut session.scratch);
                    options |= summary.options_records > 0;
                }
                if options {
                    let apps = &mut session.ctx.applications;
                    refused_names = bound_names(apps, known, max_names, max_name_bytes);
                }
                if matches!(summary.version, 9 | 10) || result.packets.is_empty() {
                    session.learn_templates(message, error.is_some(), max);
                }
                if result.packets.is_empty() {
                    templates.truncate(mark);
                    return Err(error.unwrap_or(DecodeError::Malformed));
                }
                let produced = session.scratch.len() as u32;
                for r in session.scratch.drain(..) {
                    sink.record(r);
                }
                (summary, error, produced)
            }
        };
        if summary.missing_template_sets > 0 && error.is_none() {
            error = Some(DecodeError::MissingTemplate);
        }
        // Sequence accounting (only for a fully decoded single message).
        let stream = match summary.version {
            9 => 1,
            10 => 2,
            _ => 0,
        };
        let (gap, reset, next) = sequence_step(session.next_sequence[stream], &summary, produced);
        let after_restart = std::mem::take(&mut session.restored[stream]);
        let moved = session.next_sequence[stream] != next;
        session.next_sequence[stream] = next;
        if after_restart {
            self.stats.lost_across_restart += u64::from(gap.unwrap_or(0));
        }
        if moved {
            self.sequences_changed.insert(scope);
        }
        self.stats.fast_datagrams += u64::from(fast_hit);
        self.stats.refused_application_names += refused_names;
        self.stats.flow_records += u64::from(produced);
        self.stats.options_records += u64::from(summary.options_records);
        self.stats.template_records += u64::from(summary.templates);
        if let Some(lost) = gap {
            self.stats.sequence_gaps += 1;
            self.stats.sequence_lost += u64::from(lost);
        }
        if reset {
            self.stats.sequence_resets += 1;
        }
        if options && !self.changed.contains(&scope) {
            self.changed.push(scope);
        }
        Ok(Ingested {
            scope,
            summary,
            error,
        })
    }
}

/// Keep at most `max` application names, those `known` before a message first (all of them
/// when it is `None`, then the lowest keys), and cut each to `max_bytes`; how many were
/// dropped.
fn bound_names(
    apps: &mut HashMap<ApplicationKey, String>,
    known: Option<std::collections::HashSet<ApplicationKey>>,
    max: usize,
    max_bytes: usize,
) -> u64 {
    for name in apps.values_mut() {
        truncate_at_char(name, max_bytes);
    }
    let before = apps.len();
    if before <= max {
        return 0;
    }
    match known {
        Some(k) => apps.retain(|a, _| k.contains(a)),
        None => {
            let mut keys: Vec<_> = apps.keys().copied().collect();
            keys.sort();
            for a in &keys[max..] {
                apps.remove(a);
            }
        }
    }
    (before - apps.len()) as u64
}

/// Cut `s` to at most `max` octets, at a character boundary.
fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// The message inside a datagram and its observation domain, after header sanity checks.
fn frame(d: &[u8]) -> Result<(&[u8], u32), DecodeError> {
    if d.len() < 4 {
        return Err(DecodeError::Truncated);
    }
    let be32 = |at: usize| u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]]);
    match u16::from_be_bytes([d[0], d[1]]) {
        10 => {
            if d.len() < 16 {
                return Err(DecodeError::Truncated);
            }
            // RFC 7011 section 3.1: Length is the total length of the message; one message
            // per UDP datagram (section 10.3.3).
            let len = usize::from(u16::from_be_bytes([d[2], d[3]]));
            if len != d.len() {
                return Err(DecodeError::Length);
            }
            Ok((d, be32(12)))
        }
        9 => {
            if d.len() < 20 {
                return Err(DecodeError::Truncated);
            }
            Ok((d, be32(16)))
        }
        5 => {
            if d.len() < 24 {
                return Err(DecodeError::Truncated);
            }
            let count = usize::from(u16::from_be_bytes([d[2], d[3]]));
            let len = 24 + 48 * count;
            if count == 0 || count > 30 || len > d.len() {
                return Err(DecodeError::Length);
            }
            Ok((&d[..len], u32::from(d[20]) << 8 | u32::from(d[21])))
        }
        7 => {
            if d.len() < 24 {
                return Err(DecodeError::Truncated);
            }
            let count = usize::from(u16::from_be_bytes([d[2], d[3]]));
            let len = 24 + 52 * count;
            if count == 0 || count > 28 || len > d.len() {
                return Err(DecodeError::Length);
            }
            Ok((&d[..len], 0))
        }
        _ => Err(DecodeError::Version),
    }
}

fn classify(e: &NetflowError) -> DecodeError {
    match e {
        NetflowError::Incomplete { .. } => DecodeError::Truncated,
        NetflowError::UnsupportedVersion { .. } | NetflowError::FilteredVersion { .. } => {
            DecodeError::Version
        }
        NetflowError::DecodedOutputLimitExceeded { .. } => DecodeError::Limit,
        _ => DecodeError::Malformed,
    }
}

/// One step of sequence tracking: (records lost in a gap, went backwards, next expected).
///
/// - NetFlow v5: `flow_sequence` counts flows; the next header carries `seq + count`.
/// - NetFlow v9 (RFC 3954 section 5.1): counts export packets; next is `seq + 1`.
/// - IPFIX (RFC 7011 section 3.1): counts data records (options data records included);
///   next is `seq + records`. Data sets without a template hide their record count, so the
///   next message is not checked.
pub fn sequence_step(
    expected: Option<u32>,
    s: &PacketSummary,
    produced: u32,
) -> (Option<u32>, bool, Option<u32>) {
    let (mut gap, mut reset) = (None, false);
    if let Some(exp) = expected {
        let delta = s.sequence.wrapping_sub(exp);
        if delta != 0 {
            if delta < 1 << 31 {
                gap = Some(delta);
            } else {
                reset = true;
            }
        }
    }
    let next = match s.version {
        5 | 7 => Some(s.sequence.wrapping_add(produced)),
        9 => Some(s.sequence.wrapping_add(1)),
        10 if s.missing_template_sets == 0 => Some(
            s.sequence
                .wrapping_add(produced)
                .wrapping_add(s.options_records),
        ),
        _ => None,
    };
    (gap, reset, next)
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
