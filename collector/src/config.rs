//! Configuration: TOML → [`RawConfig`] (serde, unknown keys rejected) → validated [`Config`].
//!
//! Every bound has a name and a documented default; durations are humantime strings.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::net::IpNet;

/// A configuration error, located in the file where possible.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A value that parsed as TOML but is not valid; `place` is `FILE:LINE:COL` of the
    /// value (or the file alone for a default).
    #[error("{place}: {key}: {message}")]
    Invalid {
        place: String,
        key: String,
        message: String,
    },
}

/// The file as written. Field docs give the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// UDP addresses to receive NetFlow/IPFIX on. Default `["0.0.0.0:4739"]`.
    pub listen: Option<Spanned<Vec<Spanned<String>>>>,
    /// SQLite database file. Default `labelflow.db`.
    pub db: Option<PathBuf>,
    /// HTTP address for the dashboard, JSON API and `/metrics`: `ADDR:PORT`, or a bare
    /// `PORT`, which binds loopback (`127.0.0.1:PORT`). Default: no HTTP.
    pub http: Option<Spanned<String>>,
    /// File holding a bearer token the JSON API and `/metrics` then require
    /// (`Authorization: Bearer TOKEN`; surrounding whitespace ignored). Default: none.
    pub http_token_file: Option<Spanned<PathBuf>>,
    /// Exporter addresses or networks datagrams are accepted from, e.g.
    /// `["192.0.2.0/24", "2001:db8::1"]`; others are counted per source and dropped before
    /// decoding. Default: every source.
    pub allowed_exporters: Option<Vec<Spanned<String>>>,
    /// Socket receive buffer in bytes. Default 33554432 (32 MiB; the kernel caps it at
    /// `net.core.rmem_max` unless running as root, where SO_RCVBUFFORCE is used).
    pub recv_buffer: Option<usize>,
    /// UDP receive offload (`UDP_GRO`, Linux 5.0+): the kernel may hand over several
    /// datagrams of one exporter in one read. Default true.
    pub udp_gro: Option<bool>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub aggregation: RawAggregation,
    /// Named label sets, e.g. `uplink = ["esp", "other"]`.
    #[serde(default)]
    pub views: BTreeMap<String, Spanned<Vec<String>>>,
    #[serde(default)]
    pub tunnels: Vec<RawTunnel>,
    #[serde(default)]
    pub hosts: RawHosts,
    /// Labels for exporters that do not send labelflow's IEs; first match wins.
    #[serde(default)]
    pub label_rules: Vec<RawLabelRule>,
    /// The ClickHouse sink; absent: none.
    pub clickhouse: Option<crate::clickhouse::RawClickHouse>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Exporter scopes (address + observation domain) tracked; LRU beyond. Default 1024.
    pub max_exporters: Option<Spanned<usize>>,
    /// Templates kept per exporter scope; LRU beyond. Default 512.
    pub max_templates_per_exporter: Option<Spanned<usize>>,
    /// Distinct keys per dimension and bucket before folding into `other`. Default 10000.
    pub max_keys_per_bucket: Option<Spanned<usize>>,
    /// Distinct keys per base bucket of the dimensions a flow's addresses, ports or SPI make
    /// (port, host, tunnel) before folding into `other`; coarser buckets name up to
    /// `max_keys_per_bucket` of them. Default 1000.
    pub max_flow_keys_per_bucket: Option<Spanned<usize>>,
    /// NAT pairs (inside host, public address) per bucket before folding into `other`.
    /// Default 4096.
    pub max_nat_keys_per_bucket: Option<Spanned<usize>>,
    /// Distinct labels exported as Prometheus series. Default 64.
    pub max_metric_labels: Option<Spanned<usize>>,
    /// Cells (base bucket × key) the journal's merge aggregates before it commits them:
    /// bounds the merge's memory and the rows of one merge commit. Default 8192.
    pub max_pending_cells: Option<Spanned<usize>>,
    /// Octets of received records journaled and not merged into the aggregates yet
    /// (SQLite file space); past it the store merges before it journals more, and the
    /// socket buffer holds or drops what arrives meanwhile (counted as sequence gaps).
    /// Default 1073741824 (1 GiB).
    pub max_journal_bytes: Option<Spanned<usize>>,
    /// Octets of received datagrams the spool file holds while decoding is behind; past
    /// it datagrams are dropped and counted. Default 1073741824 (1 GiB).
    pub max_spool_bytes: Option<Spanned<usize>>,
    /// Keys of the per-bucket key bound tracked over all buckets; past it the oldest
    /// buckets' bookkeeping is forgotten. Default 262144.
    pub max_tracked_keys: Option<Spanned<usize>>,
    /// Distinct label names; later ones are counted under `other`. Default 4096.
    pub max_labels: Option<Spanned<usize>>,
    /// Longest label name in octets; longer names are cut. Default 128.
    pub max_label_bytes: Option<Spanned<usize>>,
    /// Distinct tunnel names (IKE connections, as exporters name them); later ones are
    /// counted under the tunnel `other`. Default 1024.
    pub max_tunnel_names: Option<Spanned<usize>>,
    /// Observation domains tracked per exporter address; datagrams for further domains
    /// are refused (reason `domain_limit`). Default 16.
    pub max_domains_per_exporter: Option<Spanned<usize>>,
    /// Application names (options state) kept per exporter scope; later ones are
    /// ignored. Default 4096.
    pub max_application_names: Option<Spanned<usize>>,
    /// Longest template record accepted, in octets (4 per field, 8 with an enterprise
    /// number, plus 4); a datagram carrying a longer one is refused (reason `limit`).
    /// Default 2048.
    pub max_template_bytes: Option<Spanned<usize>>,
    /// Octets of template records awaiting persistence; past it the batch is committed
    /// early, as for `max_pending_cells`. Default 4194304 (4 MiB).
    pub max_pending_template_bytes: Option<Spanned<usize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// Longest time between journal commits. Default `1s`.
    pub commit_interval: Option<Spanned<String>>,
    /// Journal commit after this many datagrams at the latest (a batch also goes when its
    /// records fill a buffer). Default 200000.
    pub commit_datagrams: Option<Spanned<usize>>,
    /// How often expired buckets are deleted. Default `5m`.
    pub prune_interval: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAggregation {
    /// Base bucket width. Default `1m`.
    pub bucket: Option<Spanned<String>>,
    /// Coarser resolutions, each a multiple of the previous. Default `["1h", "1d"]`.
    pub rollups: Option<Vec<Spanned<String>>>,
    /// Retention per resolution, base first. Default `["7d", "90d", "1095d"]`.
    pub retention: Option<Vec<Spanned<String>>>,
    /// Longer flows have their start clamped to `end - max_flow_duration` (counts kept; reason
    /// `too_long`). Exporters end long flows at their active timeout (30 min at most by
    /// common defaults), so a longer record most likely carries a wrong time, and every base
    /// bucket a record spans costs a row per dimension. Default `1h`.
    pub max_flow_duration: Option<Spanned<String>>,
    /// Records ending later than this after the receive clock are refused (reason
    /// `future`): tolerance for exporter clock skew. Default `10m`.
    pub max_future: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTunnel {
    pub name: Spanned<String>,
    /// Inner subnets (either end of a flow inside one of them) that belong to this tunnel.
    #[serde(default)]
    pub subnets: Vec<Spanned<String>>,
    /// Outer addresses (or networks) of the tunnel's remote end: ESP/AH security associations
    /// with either end among them are reported under the tunnel's name.
    #[serde(default)]
    pub peers: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHosts {
    /// Networks whose hosts are accounted individually. Default none.
    #[serde(default)]
    pub networks: Vec<Spanned<String>>,
    /// Skip traffic with both ends inside `networks`. Default false.
    #[serde(default)]
    pub exclude_internal: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLabelRule {
    /// Exporter address or network.
    pub exporter: Spanned<String>,
    /// Matches the ingress or egress interface index when set.
    pub interface: Option<u32>,
    pub label: String,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub db: PathBuf,
    pub http: Option<SocketAddr>,
    pub http_token: Option<String>,
    /// `None`: every source.
    pub allowed_exporters: Option<Vec<IpNet>>,
    pub recv_buffer: usize,
    pub udp_gro: bool,
    pub max_exporters: NonZeroUsize,
    pub max_templates_per_exporter: NonZeroUsize,
    pub max_metric_labels: usize,
    pub max_pending_cells: NonZeroUsize,
    pub max_journal_bytes: NonZeroUsize,
    pub max_spool_bytes: NonZeroUsize,
    pub max_domains_per_exporter: NonZeroUsize,
    pub max_application_names: usize,
    pub max_pending_template_bytes: NonZeroUsize,
    pub max_template_bytes: NonZeroUsize,
    pub commit_interval: Duration,
    pub commit_datagrams: NonZeroUsize,
    pub prune_interval: Duration,
    pub agg: AggConfig,
    pub label_rules: Vec<LabelRule>,
    pub clickhouse: Option<crate::clickhouse::ClickHouseConfig>,
}

/// What aggregation needs; pure data.
/// Default of `limits.max_nat_keys_per_bucket`: a gateway's inside hosts times its public
/// addresses, generously.
pub const MAX_NAT_KEYS_PER_BUCKET: usize = 4096;

#[derive(Debug, Clone)]
pub struct AggConfig {
    /// Resolutions in seconds, base first, each a multiple of the previous.
    pub resolutions: Vec<u64>,
    /// Retention in seconds, one per resolution.
    pub retention: Vec<u64>,
    pub max_flow_duration_ms: u64,
    /// Tolerance for record ends after the receive clock (see the time rule).
    pub max_future_ms: u64,
    pub max_keys_per_bucket: usize,
    /// Keys per bucket of the port, host and tunnel dimensions.
    pub max_flow_keys_per_bucket: usize,
    /// NAT pairs per bucket ([`Dim::Nat`](crate::aggregate::Dim::Nat)) before `other`.
    pub max_nat_keys_per_bucket: usize,
    /// Keys the per-bucket key bound tracks over all buckets.
    pub max_tracked_keys: usize,
    pub max_labels: usize,
    pub max_label_bytes: usize,
    pub max_tunnel_names: usize,
    pub views: BTreeMap<String, Vec<String>>,
    pub tunnels: Vec<Tunnel>,
    pub networks: Vec<IpNet>,
    pub exclude_internal: bool,
}

impl Default for AggConfig {
    fn default() -> Self {
        AggConfig {
            resolutions: vec![60, 3600, 86400],
            retention: vec![7 * 86400, 90 * 86400, 1095 * 86400],
            max_flow_duration_ms: 3_600_000,
            max_future_ms: 600_000,
            max_keys_per_bucket: 10_000,
            max_flow_keys_per_bucket: 1000,
            max_nat_keys_per_bucket: MAX_NAT_KEYS_PER_BUCKET,
            max_tracked_keys: 262_144,
            max_labels: crate::aggregate::MAX_LABELS,
            max_label_bytes: 128,
            max_tunnel_names: crate::aggregate::MAX_TUNNEL_NAMES,
            views: BTreeMap::new(),
            tunnels: Vec::new(),
            networks: Vec::new(),
            exclude_internal: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    pub name: String,
    pub subnets: Vec<IpNet>,
    pub peers: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRule {
    pub exporter: IpNet,
    pub interface: Option<u32>,
    pub label: String,
}

impl Config {
    /// Read and validate a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parse and validate TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            ConfigError::Syntax {
                path: origin.to_string(),
                line,
                column,
                message: e.message().to_string(),
            }
        })?;
        Config::validate_text(raw, origin, text)
    }

    /// Defaults only (no file).
    pub fn defaults() -> Config {
        Config::validate(RawConfig::default(), "<defaults>").expect("defaults are valid")
    }

    pub fn validate(raw: RawConfig, origin: &str) -> Result<Config, ConfigError> {
        Config::validate_text(raw, origin, "")
    }

    /// Validate a parsed file whose text was `text`: each error names `FILE:LINE:COL` of
    /// the value at fault.
    fn validate_text(raw: RawConfig, origin: &str, text: &str) -> Result<Config, ConfigError> {
        let src = Source { origin, text };
        let listen = match &raw.listen {
            None => vec![SocketAddr::from(([0, 0, 0, 0], 4739))],
            Some(v) => {
                if v.get_ref().is_empty() {
                    return Err(src.bad(Some(v), "listen", "at least one address is needed"));
                }
                v.get_ref()
                    .iter()
                    .map(|s| src.parsed(s, "listen"))
                    .collect::<Result<_, _>>()?
            }
        };
        let http = raw
            .http
            .as_ref()
            .map(|s| match s.get_ref().parse::<u16>() {
                Ok(port) => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
                Err(_) => src.parsed(s, "http"),
            })
            .transpose()?;
        let http_token = match &raw.http_token_file {
            None => None,
            Some(f) => Some(src.token(f)?),
        };
        let allowed_exporters = raw
            .allowed_exporters
            .as_ref()
            .map(|v| {
                v.iter()
                    .map(|s| src.parsed(s, "allowed_exporters"))
                    .collect::<Result<Vec<IpNet>, _>>()
            })
            .transpose()?;
        let l = &raw.limits;
        let agg = src.aggregation(&raw)?;
        let label_rules = raw
            .label_rules
            .iter()
            .map(|r| {
                Ok(LabelRule {
                    exporter: src.parsed(&r.exporter, "label_rules.exporter")?,
                    interface: r.interface,
                    label: r.label.clone(),
                })
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Config {
            listen,
            db: raw.db.unwrap_or_else(|| PathBuf::from("labelflow.db")),
            http,
            http_token,
            allowed_exporters,
            recv_buffer: raw.recv_buffer.unwrap_or(32 << 20),
            udp_gro: raw.udp_gro.unwrap_or(true),
            max_exporters: src.nz(&l.max_exporters, "limits.max_exporters", 1024)?,
            max_templates_per_exporter: src.nz(
                &l.max_templates_per_exporter,
                "limits.max_templates_per_exporter",
                512,
            )?,
            max_metric_labels: l.max_metric_labels.as_ref().map_or(64, |v| *v.get_ref()),
            max_pending_cells: src.nz(&l.max_pending_cells, "limits.max_pending_cells", 8_192)?,
            max_journal_bytes: src.nz(&l.max_journal_bytes, "limits.max_journal_bytes", 1 << 30)?,
            max_spool_bytes: src.nz(&l.max_spool_bytes, "limits.max_spool_bytes", 1 << 30)?,
            max_domains_per_exporter: src.nz(
                &l.max_domains_per_exporter,
                "limits.max_domains_per_exporter",
                16,
            )?,
            max_application_names: l
                .max_application_names
                .as_ref()
                .map_or(4096, |v| *v.get_ref()),
            max_pending_template_bytes: src.nz(
                &l.max_pending_template_bytes,
                "limits.max_pending_template_bytes",
                4 << 20,
            )?,
            max_template_bytes: src.nz(&l.max_template_bytes, "limits.max_template_bytes", 2048)?,
            commit_interval: src.dur(&raw.store.commit_interval, "store.commit_interval", "1s")?,
            commit_datagrams: src.nz(
                &raw.store.commit_datagrams,
                "store.commit_datagrams",
                200_000,
            )?,
            prune_interval: src.dur(&raw.store.prune_interval, "store.prune_interval", "5m")?,
            agg,
            label_rules,
            clickhouse: raw
                .clickhouse
                .as_ref()
                .map(|c| crate::clickhouse::config::validate(&src, c))
                .transpose()?,
        })
    }
}

/// The text a configuration was parsed from, to place errors at `FILE:LINE:COL`.
pub(crate) struct Source<'a> {
    origin: &'a str,
    text: &'a str,
}

impl Source<'_> {
    /// An invalid value: at its place when it came from the file, else at the file.
    pub(crate) fn bad<T>(
        &self,
        at: Option<&Spanned<T>>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let place = match at {
            Some(v) if !self.text.is_empty() => {
                let (line, column) = line_col(self.text, v.span().start);
                format!("{}:{line}:{column}", self.origin)
            }
            _ => self.origin.to_string(),
        };
        ConfigError::Invalid {
            place,
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// A value parsed with `FromStr`.
    pub(crate) fn parsed<T: std::str::FromStr>(
        &self,
        v: &Spanned<String>,
        key: &str,
    ) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        let s = v.get_ref();
        s.parse()
            .map_err(|e| self.bad(Some(v), key, format!("{s:?}: {e}")))
    }

    /// A humantime duration, or `default` when absent.
    pub(crate) fn dur(
        &self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: &str,
    ) -> Result<Duration, ConfigError> {
        let s = v.as_ref().map_or(default, |v| v.get_ref().as_str());
        humantime::parse_duration(s).map_err(|e| self.bad(v.as_ref(), key, format!("{s:?}: {e}")))
    }

    /// A non-zero count, or `default` when absent.
    pub(crate) fn nz(
        &self,
        v: &Option<Spanned<usize>>,
        key: &str,
        default: usize,
    ) -> Result<NonZeroUsize, ConfigError> {
        let n = v.as_ref().map_or(default, |v| *v.get_ref());
        NonZeroUsize::new(n).ok_or_else(|| self.bad(v.as_ref(), key, "must be > 0"))
    }

    /// The bearer token held in `file`.
    fn token(&self, file: &Spanned<PathBuf>) -> Result<String, ConfigError> {
        let f = file.get_ref();
        let key = "http_token_file";
        let text = std::fs::read_to_string(f)
            .map_err(|e| self.bad(Some(file), key, format!("{}: {e}", f.display())))?;
        let token = text.trim();
        if token.is_empty() || token.contains(char::is_whitespace) {
            let message = format!("{}: must hold one token without spaces", f.display());
            return Err(self.bad(Some(file), key, message));
        }
        Ok(token.to_string())
    }

    /// Resolutions, retention, durations, views, tunnels and host networks.
    fn aggregation(&self, raw: &RawConfig) -> Result<AggConfig, ConfigError> {
        let a = &raw.aggregation;
        let base = self.dur(&a.bucket, "aggregation.bucket", "1m")?;
        if base.as_secs() == 0 || base.subsec_nanos() != 0 {
            let message = "must be a whole number of seconds";
            return Err(self.bad(a.bucket.as_ref(), "aggregation.bucket", message));
        }
        let mut resolutions = vec![base.as_secs()];
        for r in a.rollups.iter().flatten() {
            let d = self.dur(&Some(r.clone()), "aggregation.rollups", "")?;
            let prev = *resolutions.last().expect("non-empty");
            if d.subsec_nanos() != 0 || d.as_secs() <= prev || d.as_secs() % prev != 0 {
                let message = format!("{:?} must be a larger multiple of {prev}s", r.get_ref());
                return Err(self.bad(Some(r), "aggregation.rollups", message));
            }
            resolutions.push(d.as_secs());
        }
        if a.rollups.is_none() {
            resolutions.extend([3600, 86400]);
        }
        let defaults = ["7d", "90d", "1095d"];
        let mut retention = Vec::new();
        for (i, res) in resolutions.iter().enumerate() {
            let given = a.retention.as_ref().and_then(|v| v.get(i).or(v.last()));
            let d = match given {
                Some(v) => self.dur(&Some(v.clone()), "aggregation.retention", "")?,
                None => self.dur(&None, "aggregation.retention", defaults[i.min(2)])?,
            };
            if d.as_secs() < *res {
                let message =
                    format!("retention for the {res}s resolution is shorter than one bucket");
                return Err(self.bad(given, "aggregation.retention", message));
            }
            retention.push(d.as_secs());
        }
        let max_flow = self.dur(&a.max_flow_duration, "aggregation.max_flow_duration", "1h")?;
        let max_future = self.dur(&a.max_future, "aggregation.max_future", "10m")?;
        let mut tunnels = Vec::new();
        for t in &raw.tunnels {
            if t.name.get_ref().is_empty() {
                return Err(self.bad(Some(&t.name), "tunnels.name", "must not be empty"));
            }
            let nets = |v: &[Spanned<String>], key: &str| -> Result<Vec<IpNet>, ConfigError> {
                v.iter().map(|s| self.parsed(s, key)).collect()
            };
            tunnels.push(Tunnel {
                name: t.name.get_ref().clone(),
                subnets: nets(&t.subnets, "tunnels.subnets")?,
                peers: nets(&t.peers, "tunnels.peers")?,
            });
        }
        let networks = raw
            .hosts
            .networks
            .iter()
            .map(|s| self.parsed(s, "hosts.networks"))
            .collect::<Result<_, _>>()?;
        let mut views = BTreeMap::new();
        for (name, labels) in &raw.views {
            if labels.get_ref().is_empty() {
                let key = format!("views.{name}");
                return Err(self.bad(Some(labels), &key, "a view needs labels"));
            }
            views.insert(name.clone(), labels.get_ref().clone());
        }
        let l = &raw.limits;
        Ok(AggConfig {
            resolutions,
            retention,
            max_flow_duration_ms: max_flow.as_millis() as u64,
            max_future_ms: max_future.as_millis() as u64,
            max_keys_per_bucket: self
                .nz(&l.max_keys_per_bucket, "limits.max_keys_per_bucket", 10_000)?
                .get(),
            max_flow_keys_per_bucket: self
                .nz(
                    &l.max_flow_keys_per_bucket,
                    "limits.max_flow_keys_per_bucket",
                    1000,
                )?
                .get(),
            max_tracked_keys: self
                .nz(&l.max_tracked_keys, "limits.max_tracked_keys", 262_144)?
                .get(),
            max_nat_keys_per_bucket: self
                .nz(
                    &l.max_nat_keys_per_bucket,
                    "limits.max_nat_keys_per_bucket",
                    MAX_NAT_KEYS_PER_BUCKET,
                )?
                .get(),
            max_labels: self
                .nz(
                    &l.max_labels,
                    "limits.max_labels",
                    crate::aggregate::MAX_LABELS,
                )?
                .get()
                .max(2),
            max_label_bytes: self
                .nz(&l.max_label_bytes, "limits.max_label_bytes", 128)?
                .get(),
            max_tunnel_names: self
                .nz(
                    &l.max_tunnel_names,
                    "limits.max_tunnel_names",
                    crate::aggregate::MAX_TUNNEL_NAMES,
                )?
                .get()
                .max(2),
            views,
            tunnels,
            networks,
            exclude_internal: raw.hosts.exclude_internal,
        })
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |p| p + 1) + 1;
    (line, column)
}

/// Is `addr` one the exporter rules match? Helper for callers that hold an address.
pub fn rule_label(rules: &[LabelRule], exporter: IpAddr, ifs: [u32; 2]) -> Option<&str> {
    rule_index(rules, exporter, ifs).map(|i| rules[i].label.as_str())
}

/// The position of the first rule that matches, as [`rule_label`] picks it.
pub fn rule_index(rules: &[LabelRule], exporter: IpAddr, ifs: [u32; 2]) -> Option<usize> {
    rules.iter().position(|r| {
        r.exporter.contains(exporter) && r.interface.is_none_or(|i| i == ifs[0] || i == ifs[1])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values() {
        let c = Config::defaults();
        assert_eq!(
            c.listen,
            vec!["0.0.0.0:4739".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.agg.resolutions, vec![60, 3600, 86400]);
        assert_eq!(c.commit_interval, Duration::from_secs(1));
        assert_eq!(c.max_templates_per_exporter.get(), 512);
    }

    #[test]
    fn full_file_parses() {
        let c = Config::parse(
            r#"
listen = ["127.0.0.1:2055", "[::1]:4739"]
db = "/tmp/x.db"
http = "127.0.0.1:8080"
[aggregation]
bucket = "5m"
rollups = ["1h"]
retention = ["1d", "30d"]
[views]
uplink = ["esp", "other"]
[[tunnels]]
name = "branch"
subnets = ["10.2.0.0/16"]
peers = ["203.0.113.9"]
[hosts]
networks = ["192.168.0.0/24"]
exclude_internal = true
[[label_rules]]
exporter = "10.0.0.1"
interface = 3
label = "wan"
"#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.agg.resolutions, vec![300, 3600]);
        assert_eq!(c.agg.retention, vec![86400, 30 * 86400]);
        assert_eq!(c.agg.views["uplink"], vec!["esp", "other"]);
        assert!(c.agg.exclude_internal);
        assert_eq!(c.agg.tunnels[0].peers, vec!["203.0.113.9".parse().unwrap()]);
        assert_eq!(
            rule_label(&c.label_rules, "10.0.0.1".parse().unwrap(), [3, 0]),
            Some("wan")
        );
        assert_eq!(
            rule_label(&c.label_rules, "10.0.0.1".parse().unwrap(), [4, 5]),
            None
        );
    }

    #[test]
    fn unknown_key_names_line() {
        let e = Config::parse("db = \"x\"\n\n[aggregation]\nbuckett = \"1m\"\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:4:"), "{e}");
        assert!(e.contains("buckett"), "{e}");
    }

    #[test]
    fn exporters_allowlist_and_http_side() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let c = Config::parse(
            &format!(
                "http = \"8080\"\nhttp_token_file = \"{}\"\nallowed_exporters = [\"192.0.2.0/24\", \"2001:db8::1\"]\n",
                token.display()
            ),
            "c",
        )
        .unwrap();
        assert_eq!(c.http, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(c.http_token.as_deref(), Some("s3cret"));
        let allowed = c.allowed_exporters.unwrap();
        assert!(allowed[0].contains("192.0.2.77".parse().unwrap()));
        assert!(!allowed
            .iter()
            .any(|n| n.contains("198.51.100.1".parse().unwrap())));
        assert!(Config::defaults().allowed_exporters.is_none());
        std::fs::write(&token, "  \n").unwrap();
        let e = Config::parse(&format!("http_token_file = \"{}\"\n", token.display()), "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http_token_file"), "{e}");
    }

    #[test]
    fn bad_values_name_file_line_and_column() {
        let err = |text: &str| Config::parse(text, "c.toml").unwrap_err().to_string();
        assert_eq!(
            err("db = \"x\"\n[limits]\nmax_pending_cells = 0\n"),
            "c.toml:3:21: limits.max_pending_cells: must be > 0"
        );
        let e = err("listen = [\"127.0.0.1:1\", \"nowhere\"]\n");
        assert!(e.starts_with("c.toml:1:26: listen: \"nowhere\""), "{e}");
        let e = err("[aggregation]\nmax_future = \"soon\"\n");
        assert!(e.starts_with("c.toml:2:14: aggregation.max_future"), "{e}");
        let e = err("[[tunnels]]\nname = \"t\"\nsubnets = [\"10.0.0.0/33\"]\n");
        assert!(e.starts_with("c.toml:3:12: tunnels.subnets"), "{e}");
        let e = err("allowed_exporters = [\"192.0.2.0/24\", \"x\"]\n");
        assert!(e.starts_with("c.toml:1:38: allowed_exporters"), "{e}");
        assert_eq!(
            err("[limits]\nmax_tunnel_names = 0\n"),
            "c.toml:2:20: limits.max_tunnel_names: must be > 0"
        );
        let c = Config::parse("[limits]\nmax_tunnel_names = 16\n", "c").unwrap();
        assert_eq!(c.agg.max_tunnel_names, 16);
        assert_eq!(Config::defaults().agg.max_tunnel_names, 1024);
    }

    #[test]
    fn bad_rollup_is_rejected() {
        let e = Config::parse("[aggregation]\nbucket = \"7m\"\nrollups = [\"1h\"]\n", "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("aggregation.rollups"), "{e}");
    }
}
