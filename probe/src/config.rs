//! Probe configuration: TOML file -> [`RawConfig`] (serde, unknown keys rejected) -> validated
//! [`Config`], with command-line overrides applied in between.
//!
//! Every error names the place: `FILE:LINE:COL` for the file, the flag for the command line.
//!
//! ```toml
//! observation_domain = 1
//! stats_interval = "10s"
//!
//! [nflog]
//! rcvbuf = 8388608          # bytes; SO_RCVBUFFORCE when root
//! copy_range = 128          # bytes of each packet copied from the kernel
//! queue_threshold = 64      # packets per netlink batch (the kernel takes the min with the rule's)
//! flush_timeout = "100ms"   # partial batches are delivered after this
//!
//! [[group]]
//! id = 1
//! label = "esp"
//! description = "ESP on the uplink"
//!
//! [cache]
//! max_flows = 1000000
//! active_timeout = "60s"
//! idle_timeout = "15s"
//!
//! [[export]]
//! target = "ipfix://192.0.2.10:4739"
//! mtu = 1400
//! application_id = "rfc6759"  # "varlen" for nfdump 1.7.1 (Debian 12); see AppIdEncoding
//! max_rate = 50000          # records/s to this target; 0 = unpaced
//! biflow = false            # conntrack: one RFC 5103 biflow per connection (IPFIX)
//!
//! [conntrack]               # see config/conntrack.rs
//! enable = true
//! labels = [{ mark = "0x10/0xf0", label = "web" }]
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::decode::IpsecPorts;
use crate::export::{AppIdEncoding, Format, Target};

/// Defaults, documented in the README's configuration reference.
pub mod defaults {
    use std::time::Duration;
    pub const OBSERVATION_DOMAIN: u32 = 1;
    pub const STATS_INTERVAL: Duration = Duration::from_secs(60);
    pub const RCVBUF: usize = crate::nflog::DEFAULT_RECV_BUFFER;
    pub const COPY_RANGE: u32 = crate::nflog::DEFAULT_COPY_RANGE;
    pub const QUEUE_THRESHOLD: u32 = crate::nflog::DEFAULT_QUEUE_THRESHOLD;
    pub const FLUSH_TIMEOUT: Duration = crate::nflog::DEFAULT_FLUSH_TIMEOUT;
    pub const MAX_FLOWS: u32 = crate::cache::DEFAULT_MAX_FLOWS;
    pub const ACTIVE_TIMEOUT: Duration = crate::cache::DEFAULT_ACTIVE_TIMEOUT;
    pub const IDLE_TIMEOUT: Duration = crate::cache::DEFAULT_IDLE_TIMEOUT;
    pub const MTU: usize = crate::export::DEFAULT_MTU;
    pub const SNDBUF: usize = 4 << 20;
    pub const TEMPLATE_REFRESH: Duration = crate::export::DEFAULT_TEMPLATE_INTERVAL;
    pub const TEMPLATE_REFRESH_MESSAGES: u32 = crate::export::DEFAULT_TEMPLATE_EVERY;
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
    pub const MAX_RATE: u32 = crate::export::DEFAULT_MAX_RATE;
}

/// A configuration error, with the place it was found.
#[derive(Debug)]
pub struct ConfigError {
    /// `FILE:LINE:COL`, `--flag`, or empty.
    pub place: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.place.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.place, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Where a configuration file's text came from, to turn byte spans into `FILE:LINE:COL`.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    pub fn place(&self, span: Range<usize>) -> String {
        let upto = &self.text[..span.start.min(self.text.len())];
        let line = upto.matches('\n').count() + 1;
        let col = upto.len() - upto.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("{}:{line}:{col}", self.path.display())
    }

    fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            place: self.place(span),
            message: message.into(),
        }
    }
}

/// The file as written, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub observation_domain: Option<Spanned<u32>>,
    pub stats_interval: Option<Spanned<String>>,
    pub shutdown_grace: Option<Spanned<String>>,
    #[serde(default)]
    pub nflog: RawNflog,
    #[serde(default, rename = "group")]
    pub groups: Vec<RawGroup>,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default, rename = "export")]
    pub exports: Vec<RawExport>,
    #[serde(default)]
    pub ipsec: RawIpsec,
    #[serde(default)]
    pub conntrack: conntrack::RawConntrack,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIpsec {
    pub natt_ports: Option<Spanned<Vec<u16>>>,
    pub ike_ports: Option<Spanned<Vec<u16>>>,
    pub vici: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNflog {
    pub rcvbuf: Option<Spanned<usize>>,
    pub copy_range: Option<Spanned<u32>>,
    pub queue_threshold: Option<Spanned<u32>>,
    pub flush_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    pub id: Spanned<u32>,
    pub label: Spanned<String>,
    pub description: Option<String>,
    pub queue_threshold: Option<Spanned<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub max_flows: Option<Spanned<u32>>,
    pub active_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExport {
    pub target: Spanned<String>,
    pub mtu: Option<Spanned<usize>>,
    pub sndbuf: Option<Spanned<usize>>,
    pub template_refresh: Option<Spanned<String>>,
    pub template_refresh_messages: Option<Spanned<u32>>,
    pub application_id: Option<Spanned<String>>,
    pub max_rate: Option<Spanned<u32>>,
    /// Conntrack connections as one RFC 5103 biflow record each (IPFIX targets).
    pub biflow: Option<Spanned<bool>>,
}

/// Command-line values that override (or, without a file, make up) the configuration.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--group ID=LABEL`, appended to (or replacing same-id) file groups.
    pub groups: Vec<String>,
    /// `--export URL`: when given, replaces the file's exports.
    pub exports: Vec<String>,
    pub active_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_flows: Option<u32>,
    pub rcvbuf: Option<usize>,
    pub queue_threshold: Option<u32>,
    pub stats_interval: Option<String>,
    pub observation_domain: Option<u32>,
    pub mtu: Option<usize>,
    /// `--application-id`: for every export target.
    pub application_id: Option<String>,
    /// `--vici URI`.
    pub vici: Option<String>,
    /// `--max-rate`: records/s for every target (0 = unpaced).
    pub max_rate: Option<u32>,
    /// `--conntrack`: enable the conntrack source.
    pub conntrack: bool,
    /// `--ct-label MARK[/MASK]=LABEL`, appended to `[conntrack] labels`.
    pub ct_labels: Vec<String>,
}

/// One NFLOG group and its label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: u16,
    pub label: String,
    pub description: String,
    pub queue_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nflog {
    pub rcvbuf: usize,
    pub copy_range: u32,
    pub flush_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    pub max_flows: NonZeroU32,
    pub active_timeout: Duration,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub target: Target,
    pub mtu: usize,
    pub sndbuf: usize,
    pub template_refresh: Duration,
    pub template_refresh_messages: u32,
    /// How IPFIX data records carry `applicationId` (`application_id`).
    pub app_id: AppIdEncoding,
    /// Records per second at most (token bucket, bursts of 10 ms); 0 = unpaced.
    pub max_rate: u32,
    /// Conntrack connections as one RFC 5103 biflow record each instead of two
    /// unidirectional records (IPFIX only).
    pub biflow: bool,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub observation_domain: u32,
    pub stats_interval: Duration,
    pub shutdown_grace: Duration,
    pub nflog: Nflog,
    /// Sorted by id, ids unique.
    pub groups: Vec<Group>,
    pub cache: Cache,
    pub exports: Vec<Export>,
    /// UDP ports decoded as NAT-T ESP and IKE.
    pub ipsec: IpsecPorts,
    /// strongSwan's vici socket, for tunnel names.
    pub vici: Option<PathBuf>,
    /// The conntrack source, when enabled.
    pub conntrack: Option<crate::conntrack::CtConfig>,
}

impl Config {
    /// The label of `group`, if configured.
    pub fn label(&self, group: u16) -> Option<&str> {
        self.groups
            .iter()
            .find(|g| g.id == group)
            .map(|g| g.label.as_str())
    }
}

/// Reads and parses `path` (no validation yet).
pub fn read_file(path: &Path) -> Result<(RawConfig, Source), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        place: path.display().to_string(),
        message: format!("cannot read configuration: {e}"),
    })?;
    let source = Source {
        path: path.to_path_buf(),
        text,
    };
    let raw = parse(&source)?;
    Ok((raw, source))
}

/// Parses the text of `source`.
pub fn parse(source: &Source) -> Result<RawConfig, ConfigError> {
    toml::from_str(&source.text).map_err(|e| ConfigError {
        place: e
            .span()
            .map(|s| source.place(s))
            .unwrap_or_else(|| source.path.display().to_string()),
        message: e.message().trim().to_string(),
    })
}

fn duration(src: Option<&Source>, v: &Spanned<String>) -> Result<Duration, ConfigError> {
    humantime::parse_duration(v.get_ref()).map_err(|e| {
        let message = format!("invalid duration {:?}: {e}", v.get_ref());
        match src {
            Some(s) => s.error(v.span(), message),
            None => ConfigError {
                place: String::new(),
                message,
            },
        }
    })
}

fn flag_duration(flag: &str, v: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(v).map_err(|e| ConfigError {
        place: flag.to_string(),
        message: format!("invalid duration {v:?}: {e}"),
    })
}

fn flag_err(flag: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        place: flag.to_string(),
        message: message.into(),
    }
}

/// Checks a label: it is exported as `applicationName` and used as a report key, so keep it a
/// short printable token.
fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("label is empty".into());
    }
    if label.len() > 64 {
        return Err(format!("label {label:?} is longer than 64 bytes"));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "label {label:?} contains {c:?}; use letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

fn check_group_id(id: u32) -> Result<u16, String> {
    u16::try_from(id).map_err(|_| format!("NFLOG group {id} is out of range (0-65535)"))
}

/// Validates `raw` (from `source`, when it came from a file) with `over` applied.
pub fn validate(
    raw: RawConfig,
    source: Option<&Source>,
    over: &Overrides,
) -> Result<Config, ConfigError> {
    let observation_domain = over
        .observation_domain
        .or(raw.observation_domain.map(|v| v.into_inner()))
        .unwrap_or(defaults::OBSERVATION_DOMAIN);
    let stats_interval = match (&over.stats_interval, &raw.stats_interval) {
        (Some(v), _) => flag_duration("--stats-interval", v)?,
        (None, Some(v)) => duration(source, v)?,
        (None, None) => defaults::STATS_INTERVAL,
    };
    let shutdown_grace = match &raw.shutdown_grace {
        Some(v) => duration(source, v)?,
        None => defaults::SHUTDOWN_GRACE,
    };
    let (nflog, nflog_threshold) = validate_nflog(&raw.nflog, source, over)?;
    let groups = validate_groups(&raw.groups, source, over, nflog_threshold)?;
    Ok(Config {
        observation_domain,
        stats_interval,
        shutdown_grace,
        nflog,
        groups: groups.into_values().collect(),
        cache: validate_cache(&raw.cache, source, over)?,
        exports: validate_exports(&raw.exports, source, over)?,
        ipsec: ipsec_ports(&raw.ipsec, source)?,
        vici: vici_path(&raw.ipsec, source, over)?,
        conntrack: conntrack::validate_conntrack(&raw.conntrack, source, over)?,
    })
}

/// An error at `span` of the file, or without a place when the value came from no file.
fn span_err(source: Option<&Source>, span: Range<usize>, msg: String) -> ConfigError {
    match source {
        Some(s) => s.error(span, msg),
        None => ConfigError {
            place: String::new(),
            message: msg,
        },
    }
}

/// `[nflog]`, and the queue threshold groups inherit.
fn validate_nflog(
    raw: &RawNflog,
    source: Option<&Source>,
    over: &Overrides,
) -> Result<(Nflog, u32), ConfigError> {
    let err = |span: Range<usize>, msg: String| span_err(source, span, msg);
    let nflog_threshold = over
        .queue_threshold
        .or(raw.queue_threshold.as_ref().map(|v| *v.get_ref()))
        .unwrap_or(defaults::QUEUE_THRESHOLD);
    if nflog_threshold == 0 {
        let span = raw.queue_threshold.as_ref().map_or(0..0, |v| v.span());
        return Err(err(span, "queue_threshold must be at least 1".into()));
    }
    let copy_range = raw
        .copy_range
        .as_ref()
        .map_or(defaults::COPY_RANGE, |v| *v.get_ref());
    if copy_range < 40 {
        let span = raw.copy_range.as_ref().map_or(0..0, |v| v.span());
        return Err(err(
            span,
            format!("copy_range {copy_range} is too small to hold an IP and a transport header (at least 40; 128 recommended)"),
        ));
    }
    let nflog = Nflog {
        rcvbuf: over
            .rcvbuf
            .or(raw.rcvbuf.as_ref().map(|v| *v.get_ref()))
            .unwrap_or(defaults::RCVBUF),
        copy_range,
        flush_timeout: match &raw.flush_timeout {
            Some(v) => duration(source, v)?,
            None => defaults::FLUSH_TIMEOUT,
        },
    };

    Ok((nflog, nflog_threshold))
}

/// `[[group]]` and `--group`, by id; labels unique.
fn validate_groups(
    raw: &[RawGroup],
    source: Option<&Source>,
    over: &Overrides,
    nflog_threshold: u32,
) -> Result<BTreeMap<u16, Group>, ConfigError> {
    let err = |span: Range<usize>, msg: String| span_err(source, span, msg);
    let mut groups: BTreeMap<u16, Group> = BTreeMap::new();
    for g in raw {
        let id = check_group_id(*g.id.get_ref()).map_err(|m| err(g.id.span(), m))?;
        check_label(g.label.get_ref()).map_err(|m| err(g.label.span(), m))?;
        let queue_threshold = g
            .queue_threshold
            .as_ref()
            .map_or(nflog_threshold, |v| *v.get_ref());
        if queue_threshold == 0 {
            let span = g.queue_threshold.as_ref().map_or(0..0, |v| v.span());
            return Err(err(span, "queue_threshold must be at least 1".into()));
        }
        let group = Group {
            id,
            label: g.label.get_ref().clone(),
            description: g.description.clone().unwrap_or_default(),
            queue_threshold,
        };
        if groups.insert(id, group).is_some() {
            return Err(err(
                g.id.span(),
                format!("NFLOG group {id} is configured twice"),
            ));
        }
    }
    for spec in &over.groups {
        let (id, label) = spec.split_once('=').ok_or_else(|| {
            flag_err(
                "--group",
                format!("{spec:?}: expected ID=LABEL, e.g. 1=esp"),
            )
        })?;
        let id: u32 = id
            .trim()
            .parse()
            .map_err(|_| flag_err("--group", format!("{spec:?}: {id:?} is not a group number")))?;
        let id = check_group_id(id).map_err(|m| flag_err("--group", m))?;
        let label = label.trim();
        check_label(label).map_err(|m| flag_err("--group", m))?;
        let entry = groups.entry(id).or_insert_with(|| Group {
            id,
            label: String::new(),
            description: String::new(),
            queue_threshold: nflog_threshold,
        });
        entry.label = label.to_string();
    }
    let mut labels: BTreeMap<&str, u16> = BTreeMap::new();
    for g in groups.values() {
        if let Some(other) = labels.insert(&g.label, g.id) {
            return Err(ConfigError {
                place: source
                    .map(|s| s.path.display().to_string())
                    .unwrap_or_default(),
                message: format!(
                    "label {:?} is used by groups {other} and {}; each group needs its own label",
                    g.label, g.id
                ),
            });
        }
    }

    Ok(groups)
}

/// `[cache]` with the flag overrides.
fn validate_cache(
    raw: &RawCache,
    source: Option<&Source>,
    over: &Overrides,
) -> Result<Cache, ConfigError> {
    let err = |span: Range<usize>, msg: String| span_err(source, span, msg);
    let max_flows = over
        .max_flows
        .or(raw.max_flows.as_ref().map(|v| *v.get_ref()))
        .unwrap_or(defaults::MAX_FLOWS);
    let max_flows = NonZeroU32::new(max_flows).ok_or_else(|| match &raw.max_flows {
        Some(v) if over.max_flows.is_none() => err(v.span(), "max_flows must be at least 1".into()),
        _ => flag_err("--max-flows", "must be at least 1"),
    })?;
    let active_timeout = match (&over.active_timeout, &raw.active_timeout) {
        (Some(v), _) => flag_duration("--active-timeout", v)?,
        (None, Some(v)) => duration(source, v)?,
        (None, None) => defaults::ACTIVE_TIMEOUT,
    };
    let idle_timeout = match (&over.idle_timeout, &raw.idle_timeout) {
        (Some(v), _) => flag_duration("--inactive-timeout", v)?,
        (None, Some(v)) => duration(source, v)?,
        (None, None) => defaults::IDLE_TIMEOUT,
    };
    if active_timeout.is_zero() || idle_timeout.is_zero() {
        return Err(flag_err(
            "cache",
            "active_timeout and idle_timeout must be greater than zero",
        ));
    }
    Ok(Cache {
        max_flows,
        active_timeout,
        idle_timeout,
    })
}

/// `[[export]]`, or the `--export` targets, which replace them.
fn validate_exports(
    raw: &[RawExport],
    source: Option<&Source>,
    over: &Overrides,
) -> Result<Vec<Export>, ConfigError> {
    let err = |span: Range<usize>, msg: String| span_err(source, span, msg);
    let mut exports = Vec::new();
    if over.exports.is_empty() {
        for e in raw {
            let target: Target = e
                .target
                .get_ref()
                .parse()
                .map_err(|m| err(e.target.span(), format!("{m}")))?;
            let template_refresh = match &e.template_refresh {
                Some(v) => duration(source, v)?,
                None => defaults::TEMPLATE_REFRESH,
            };
            exports.push(Export {
                target,
                mtu: check_mtu(
                    over.mtu
                        .or(e.mtu.as_ref().map(|v| *v.get_ref()))
                        .unwrap_or(defaults::MTU),
                )
                .map_err(|m| match &e.mtu {
                    Some(v) if over.mtu.is_none() => err(v.span(), m),
                    _ => flag_err("--mtu", m),
                })?,
                sndbuf: e.sndbuf.as_ref().map_or(defaults::SNDBUF, |v| *v.get_ref()),
                template_refresh,
                template_refresh_messages: e
                    .template_refresh_messages
                    .as_ref()
                    .map_or(defaults::TEMPLATE_REFRESH_MESSAGES, |v| *v.get_ref()),
                app_id: match &over.application_id {
                    Some(v) => flag_app_id(v, target)?,
                    None => app_id(source, &e.application_id, target)?,
                },
                max_rate: over
                    .max_rate
                    .or(e.max_rate.as_ref().map(|v| *v.get_ref()))
                    .unwrap_or(defaults::MAX_RATE),
                biflow: match &e.biflow {
                    Some(b) if *b.get_ref() && target.format != Format::Ipfix => {
                        return Err(err(
                            b.span(),
                            format!("biflow needs an ipfix:// target, not {target}"),
                        ));
                    }
                    Some(b) => *b.get_ref(),
                    None => false,
                },
            });
        }
    } else {
        for url in &over.exports {
            let target: Target = url
                .parse()
                .map_err(|m| flag_err("--export", format!("{m}")))?;
            exports.push(Export {
                target,
                mtu: check_mtu(over.mtu.unwrap_or(defaults::MTU))
                    .map_err(|m| flag_err("--mtu", m))?,
                sndbuf: defaults::SNDBUF,
                template_refresh: defaults::TEMPLATE_REFRESH,
                template_refresh_messages: defaults::TEMPLATE_REFRESH_MESSAGES,
                app_id: match &over.application_id {
                    Some(v) => flag_app_id(v, target)?,
                    None => AppIdEncoding::default(),
                },
                max_rate: over.max_rate.unwrap_or(defaults::MAX_RATE),
                biflow: false,
            });
        }
    }

    Ok(exports)
}

/// `application_id`: `"rfc6759"` (default) or `"varlen"`, the latter for IPFIX targets only
/// (NetFlow v9 has no variable-length fields; v5 carries no `applicationId`).
fn parse_app_id(v: &str, target: Target) -> Result<AppIdEncoding, String> {
    let enc = AppIdEncoding::from_name(v)
        .ok_or_else(|| format!("application_id {v:?} is neither \"rfc6759\" nor \"varlen\""))?;
    if enc != AppIdEncoding::Rfc6759 && target.format != Format::Ipfix {
        return Err(format!(
            "application_id {v:?} needs an ipfix:// target, not {target}"
        ));
    }
    Ok(enc)
}

fn app_id(
    src: Option<&Source>,
    v: &Option<Spanned<String>>,
    target: Target,
) -> Result<AppIdEncoding, ConfigError> {
    let Some(v) = v else {
        return Ok(AppIdEncoding::default());
    };
    parse_app_id(v.get_ref(), target).map_err(|m| match src {
        Some(s) => s.error(v.span(), m),
        None => flag_err("application_id", m),
    })
}

fn flag_app_id(v: &str, target: Target) -> Result<AppIdEncoding, ConfigError> {
    parse_app_id(v, target).map_err(|m| flag_err("--application-id", m))
}

/// `[ipsec] vici` / `--vici`: `unix://PATH` (the form strongSwan's `swanctl --uri` takes) or
/// a plain absolute path.
fn vici_path(
    raw: &RawIpsec,
    source: Option<&Source>,
    over: &Overrides,
) -> Result<Option<PathBuf>, ConfigError> {
    let parse = |v: &str| -> Result<PathBuf, String> {
        let path = v.strip_prefix("unix://").unwrap_or(v);
        if path.starts_with('/') {
            Ok(PathBuf::from(path))
        } else {
            Err(format!(
                "vici socket {v:?}: give unix:///PATH or an absolute path (TCP vici is not supported)"
            ))
        }
    };
    match (&over.vici, &raw.vici) {
        (Some(v), _) => parse(v).map(Some).map_err(|m| flag_err("--vici", m)),
        (None, Some(v)) => parse(v.get_ref()).map(Some).map_err(|m| match source {
            Some(s) => s.error(v.span(), m),
            None => flag_err("ipsec", m),
        }),
        (None, None) => Ok(None),
    }
}

/// `[ipsec] natt_ports` and `ike_ports`: up to [`IpsecPorts::MAX`] non-zero ports each.
fn ipsec_ports(raw: &RawIpsec, source: Option<&Source>) -> Result<IpsecPorts, ConfigError> {
    let def = IpsecPorts::DEFAULT;
    let list = |v: &Option<Spanned<Vec<u16>>>, name: &str, d: &[u16]| match v {
        None => Ok(d.iter().copied().filter(|p| *p != 0).collect::<Vec<u16>>()),
        Some(v) if v.get_ref().len() > IpsecPorts::MAX || v.get_ref().contains(&0) => {
            let msg = format!(
                "{name} takes at most {} ports, none of them 0",
                IpsecPorts::MAX
            );
            Err(match source {
                Some(s) => s.error(v.span(), msg),
                None => flag_err("ipsec", msg),
            })
        }
        Some(v) => Ok(v.get_ref().clone()),
    };
    let natt = list(&raw.natt_ports, "natt_ports", &def.natt)?;
    let ike = list(&raw.ike_ports, "ike_ports", &def.ike)?;
    Ok(IpsecPorts::new(&natt, &ike).expect("lists checked above"))
}

fn check_mtu(mtu: usize) -> Result<usize, String> {
    // An IPFIX message length is a 16-bit field (RFC 7011 section 3.1), and a message must at
    // least hold its header, a set header and the largest template labelflow sends.
    if !(512..=65_507).contains(&mtu) {
        return Err(format!("mtu {mtu} is outside 512..=65507 bytes"));
    }
    Ok(mtu)
}

/// Loads the configuration: file (if any), then flags.
pub fn load(path: Option<&Path>, over: &Overrides) -> Result<Config, ConfigError> {
    match path {
        Some(p) => {
            let (raw, source) = read_file(p)?;
            validate(raw, Some(&source), over)
        }
        None => validate(RawConfig::default(), None, over),
    }
}

mod conntrack;
pub use conntrack::parse_mark;

#[cfg(test)]
mod tests;
