//! Configuration: TOML → [`RawConfig`] (serde, unknown keys rejected) → validated [`Config`].
//!
//! Every bound has a name and a documented default; durations are humantime strings.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: String,
        key: String,
        message: String,
    },
}

/// The file as written. Field docs give the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// UDP addresses to receive NetFlow/IPFIX on. Default `["0.0.0.0:4739"]`.
    pub listen: Option<Vec<String>>,
    /// SQLite database file. Default `labelflow.db`.
    pub db: Option<PathBuf>,
    /// HTTP address for the dashboard, JSON API and `/metrics`: `ADDR:PORT`, or a bare
    /// `PORT`, which binds loopback (`127.0.0.1:PORT`). Default: no HTTP.
    pub http: Option<String>,
    /// File holding a bearer token the JSON API and `/metrics` then require
    /// (`Authorization: Bearer TOKEN`; surrounding whitespace ignored). Default: none.
    pub http_token_file: Option<PathBuf>,
    /// Exporter addresses or networks datagrams are accepted from, e.g.
    /// `["192.0.2.0/24", "2001:db8::1"]`; others are counted per source and dropped before
    /// decoding. Default: every source.
    pub allowed_exporters: Option<Vec<String>>,
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
    pub views: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub tunnels: Vec<RawTunnel>,
    #[serde(default)]
    pub hosts: RawHosts,
    /// Labels for exporters that do not send labelflow's IEs; first match wins.
    #[serde(default)]
    pub label_rules: Vec<RawLabelRule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Exporter scopes (address + observation domain) tracked; LRU beyond. Default 1024.
    pub max_exporters: Option<usize>,
    /// Templates kept per exporter scope; LRU beyond. Default 512.
    pub max_templates_per_exporter: Option<usize>,
    /// Distinct keys per dimension and bucket before folding into `other`. Default 10000.
    pub max_keys_per_bucket: Option<usize>,
    /// Distinct labels exported as Prometheus series. Default 64.
    pub max_metric_labels: Option<usize>,
    /// Cells (base bucket × key) pending between commits. Past it the ingest hands the
    /// batch to the store at once and, if the store is still busy with the previous one,
    /// waits for it (backpressure: the socket buffer holds what arrives meanwhile) rather
    /// than grow. Default 32768.
    pub max_pending_cells: Option<usize>,
    /// Keys of the per-bucket key bound tracked over all buckets; past it the oldest
    /// buckets' bookkeeping is forgotten. Default 262144.
    pub max_tracked_keys: Option<usize>,
    /// Distinct label names; later ones are counted under `other`. Default 4096.
    pub max_labels: Option<usize>,
    /// Longest label name in octets; longer names are cut. Default 128.
    pub max_label_bytes: Option<usize>,
    /// Observation domains tracked per exporter address; datagrams for further domains
    /// are refused (reason `domain_limit`). Default 16.
    pub max_domains_per_exporter: Option<usize>,
    /// Application names (options state) kept per exporter scope; later ones are
    /// ignored. Default 4096.
    pub max_application_names: Option<usize>,
    /// Octets of template records awaiting persistence; past it the batch is committed
    /// early, as for `max_pending_cells`. Default 4194304 (4 MiB).
    pub max_pending_template_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// Longest time between commits. Default `1s`.
    pub commit_interval: Option<String>,
    /// Commit after this many datagrams at the latest. Default 20000.
    pub commit_datagrams: Option<usize>,
    /// How often expired buckets are deleted. Default `5m`.
    pub prune_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAggregation {
    /// Base bucket width. Default `1m`.
    pub bucket: Option<String>,
    /// Coarser resolutions, each a multiple of the previous. Default `["1h", "1d"]`.
    pub rollups: Option<Vec<String>>,
    /// Retention per resolution, base first. Default `["7d", "90d", "1095d"]`.
    pub retention: Option<Vec<String>>,
    /// Longer flows have their start clamped to `end - max_flow_duration` (counts kept; reason
    /// `too_long`). Exporters end long flows at their active timeout (30 min at most by
    /// common defaults), so a longer record most likely carries a wrong time, and every base
    /// bucket a record spans costs a row per dimension. Default `1h`.
    pub max_flow_duration: Option<String>,
    /// Records ending later than this after the receive clock are refused (reason
    /// `future`): tolerance for exporter clock skew. Default `10m`.
    pub max_future: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTunnel {
    pub name: String,
    /// Inner subnets (either end of a flow inside one of them) that belong to this tunnel.
    #[serde(default)]
    pub subnets: Vec<String>,
    /// Outer addresses (or networks) of the tunnel's remote end: ESP/AH security associations
    /// with either end among them are reported under the tunnel's name.
    #[serde(default)]
    pub peers: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHosts {
    /// Networks whose hosts are accounted individually. Default none.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Skip traffic with both ends inside `networks`. Default false.
    #[serde(default)]
    pub exclude_internal: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLabelRule {
    /// Exporter address or network.
    pub exporter: String,
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
    pub max_domains_per_exporter: NonZeroUsize,
    pub max_application_names: usize,
    pub max_pending_template_bytes: NonZeroUsize,
    pub commit_interval: Duration,
    pub commit_datagrams: NonZeroUsize,
    pub prune_interval: Duration,
    pub agg: AggConfig,
    pub label_rules: Vec<LabelRule>,
}

/// What aggregation needs; pure data.
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
    /// Keys the per-bucket key bound tracks over all buckets.
    pub max_tracked_keys: usize,
    pub max_labels: usize,
    pub max_label_bytes: usize,
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
            max_tracked_keys: 262_144,
            max_labels: crate::aggregate::MAX_LABELS,
            max_label_bytes: 128,
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
        Config::validate(raw, origin)
    }

    /// Defaults only (no file).
    pub fn defaults() -> Config {
        Config::validate(RawConfig::default(), "<defaults>").expect("defaults are valid")
    }

    pub fn validate(raw: RawConfig, origin: &str) -> Result<Config, ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            path: origin.to_string(),
            key: key.to_string(),
            message,
        };
        let dur = |key: &str, v: Option<&String>, default: &str| -> Result<Duration, ConfigError> {
            let s = v.map(String::as_str).unwrap_or(default);
            humantime::parse_duration(s).map_err(|e| bad(key, format!("{s:?}: {e}")))
        };
        let listen = raw
            .listen
            .unwrap_or_else(|| vec!["0.0.0.0:4739".to_string()])
            .iter()
            .map(|s| s.parse().map_err(|e| bad("listen", format!("{s:?}: {e}"))))
            .collect::<Result<Vec<SocketAddr>, _>>()?;
        if listen.is_empty() {
            return Err(bad("listen", "at least one address is needed".into()));
        }
        let http = raw
            .http
            .map(|s| match s.parse::<u16>() {
                Ok(port) => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
                Err(_) => s.parse().map_err(|e| bad("http", format!("{s:?}: {e}"))),
            })
            .transpose()?;
        let http_token = match &raw.http_token_file {
            None => None,
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| bad("http_token_file", format!("{}: {e}", f.display())))?;
                let token = text.trim();
                if token.is_empty() || token.contains(char::is_whitespace) {
                    return Err(bad(
                        "http_token_file",
                        format!("{}: must hold one token without spaces", f.display()),
                    ));
                }
                Some(token.to_string())
            }
        };
        let nz = |key: &str, v: Option<usize>, default: usize| {
            NonZeroUsize::new(v.unwrap_or(default)).ok_or_else(|| bad(key, "must be > 0".into()))
        };
        let base = dur("aggregation.bucket", raw.aggregation.bucket.as_ref(), "1m")?;
        if base.as_secs() == 0 || base.subsec_nanos() != 0 {
            return Err(bad(
                "aggregation.bucket",
                "must be a whole number of seconds".into(),
            ));
        }
        let mut resolutions = vec![base.as_secs()];
        let rollups = raw
            .aggregation
            .rollups
            .unwrap_or_else(|| vec!["1h".into(), "1d".into()]);
        for r in &rollups {
            let d = dur("aggregation.rollups", Some(r), "")?;
            let prev = *resolutions.last().expect("non-empty");
            if d.subsec_nanos() != 0 || d.as_secs() <= prev || d.as_secs() % prev != 0 {
                return Err(bad(
                    "aggregation.rollups",
                    format!("{r:?} must be a larger multiple of {prev}s"),
                ));
            }
            resolutions.push(d.as_secs());
        }
        let retention_raw = raw
            .aggregation
            .retention
            .unwrap_or_else(|| vec!["7d".into(), "90d".into(), "1095d".into()]);
        let mut retention = Vec::new();
        for (i, res) in resolutions.iter().enumerate() {
            let s = retention_raw.get(i).or(retention_raw.last());
            let d = dur("aggregation.retention", s, "7d")?;
            if d.as_secs() < *res {
                return Err(bad(
                    "aggregation.retention",
                    format!("retention for the {res}s resolution is shorter than one bucket"),
                ));
            }
            retention.push(d.as_secs());
        }
        let max_flow = dur(
            "aggregation.max_flow_duration",
            raw.aggregation.max_flow_duration.as_ref(),
            "1h",
        )?;
        let net = |key: &str, s: &str| -> Result<IpNet, ConfigError> {
            s.parse::<IpNet>()
                .map_err(|e| bad(key, format!("{s:?}: {e}")))
        };
        let mut tunnels = Vec::new();
        for t in raw.tunnels {
            if t.name.is_empty() {
                return Err(bad("tunnels.name", "must not be empty".into()));
            }
            let subnets = t
                .subnets
                .iter()
                .map(|s| net("tunnels.subnets", s))
                .collect::<Result<_, _>>()?;
            let peers = t
                .peers
                .iter()
                .map(|s| net("tunnels.peers", s))
                .collect::<Result<_, _>>()?;
            tunnels.push(Tunnel {
                name: t.name,
                subnets,
                peers,
            });
        }
        let networks = raw
            .hosts
            .networks
            .iter()
            .map(|s| net("hosts.networks", s))
            .collect::<Result<_, _>>()?;
        for (name, labels) in &raw.views {
            if labels.is_empty() {
                return Err(bad(&format!("views.{name}"), "a view needs labels".into()));
            }
        }
        let allowed_exporters = raw
            .allowed_exporters
            .as_ref()
            .map(|v| {
                v.iter()
                    .map(|s| net("allowed_exporters", s))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let label_rules = raw
            .label_rules
            .into_iter()
            .map(|r| {
                Ok(LabelRule {
                    exporter: net("label_rules.exporter", &r.exporter)?,
                    interface: r.interface,
                    label: r.label,
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
            max_exporters: nz("limits.max_exporters", raw.limits.max_exporters, 1024)?,
            max_templates_per_exporter: nz(
                "limits.max_templates_per_exporter",
                raw.limits.max_templates_per_exporter,
                512,
            )?,
            max_metric_labels: raw.limits.max_metric_labels.unwrap_or(64),
            max_pending_cells: nz(
                "limits.max_pending_cells",
                raw.limits.max_pending_cells,
                32_768,
            )?,
            max_domains_per_exporter: nz(
                "limits.max_domains_per_exporter",
                raw.limits.max_domains_per_exporter,
                16,
            )?,
            max_application_names: raw.limits.max_application_names.unwrap_or(4096),
            max_pending_template_bytes: nz(
                "limits.max_pending_template_bytes",
                raw.limits.max_pending_template_bytes,
                4 << 20,
            )?,
            commit_interval: dur(
                "store.commit_interval",
                raw.store.commit_interval.as_ref(),
                "1s",
            )?,
            commit_datagrams: nz("store.commit_datagrams", raw.store.commit_datagrams, 20_000)?,
            prune_interval: dur(
                "store.prune_interval",
                raw.store.prune_interval.as_ref(),
                "5m",
            )?,
            agg: AggConfig {
                resolutions,
                retention,
                max_flow_duration_ms: max_flow.as_millis() as u64,
                max_future_ms: dur(
                    "aggregation.max_future",
                    raw.aggregation.max_future.as_ref(),
                    "10m",
                )?
                .as_millis() as u64,
                max_tracked_keys: nz(
                    "limits.max_tracked_keys",
                    raw.limits.max_tracked_keys,
                    262_144,
                )?
                .get(),
                max_labels: nz(
                    "limits.max_labels",
                    raw.limits.max_labels,
                    crate::aggregate::MAX_LABELS,
                )?
                .get()
                .max(2),
                max_label_bytes: nz("limits.max_label_bytes", raw.limits.max_label_bytes, 128)?
                    .get(),
                max_keys_per_bucket: nz(
                    "limits.max_keys_per_bucket",
                    raw.limits.max_keys_per_bucket,
                    10_000,
                )?
                .get(),
                views: raw.views,
                tunnels,
                networks,
                exclude_internal: raw.hosts.exclude_internal,
            },
            label_rules,
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
    rules
        .iter()
        .find(|r| {
            r.exporter.contains(exporter) && r.interface.is_none_or(|i| i == ifs[0] || i == ifs[1])
        })
        .map(|r| r.label.as_str())
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
    fn bad_rollup_is_rejected() {
        let e = Config::parse("[aggregation]\nbucket = \"7m\"\nrollups = [\"1h\"]\n", "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("aggregation.rollups"), "{e}");
    }
}
