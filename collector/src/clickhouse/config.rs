//! `[clickhouse]`: where the sink writes and how much it may hold back.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::client::{valid_identifier, Client};
use crate::config::{ConfigError, Source};

/// The section as written. Field docs give the defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClickHouse {
    /// HTTP interface, `http://HOST[:PORT]`. Required.
    pub url: Spanned<String>,
    /// Database, created if missing. Default `labelflow`.
    pub database: Option<Spanned<String>>,
    /// Default `default`.
    pub user: Option<String>,
    /// File holding the password (surrounding whitespace ignored). Default: empty password.
    pub password_file: Option<Spanned<PathBuf>>,
    /// Name every row carries, so many collectors can share one database. Default: the
    /// host name.
    pub collector_name: Option<Spanned<String>>,
    /// Batches kept apart in the outbox while ClickHouse is behind; past it the oldest are
    /// merged into one (rows carry absolute totals, so merging loses nothing). Default 1000.
    pub max_backlog: Option<Spanned<usize>>,
    /// Batches sent in one insert at most. Default 100.
    pub max_batches_per_insert: Option<Spanned<usize>>,
    /// Connect, send and answer timeout of each request. Default `30s`.
    pub timeout: Option<Spanned<String>>,
    /// A `remote_servers` cluster of the server: the collector also creates `Distributed`
    /// tables (`agg_<res>_all`) over it, which reports then read. Default: none.
    pub cluster: Option<Spanned<String>>,
    /// The HTTP API (`/api/report`, the dashboard) reads ClickHouse, every collector writing
    /// there, instead of this collector's database. Default false.
    #[serde(default)]
    pub serve_reports: bool,
    /// Also write every flow record the store commits to the `flows` table. Default false.
    #[serde(default)]
    pub raw: bool,
    /// Raw-record batches kept in the outbox while ClickHouse is behind; past it the oldest
    /// are dropped (records cannot be merged like totals), counted in
    /// `labelflow_collector_clickhouse_raw_dropped_*_total`. Totals are never dropped.
    /// Default 10000.
    pub max_raw_backlog: Option<Spanned<usize>>,
    /// Octets of raw-record batches kept in the outbox while ClickHouse is behind; past it
    /// the oldest are dropped, as for `max_raw_backlog` (whichever bound is reached first).
    /// At least 16777216 (one batch). Default 1073741824 (1 GiB).
    pub max_raw_backlog_bytes: Option<Spanned<usize>>,
}

/// Validated `[clickhouse]`.
#[derive(Debug, Clone)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
    pub collector_name: String,
    pub max_backlog: NonZeroUsize,
    pub max_batches_per_insert: NonZeroUsize,
    pub timeout: Duration,
    pub cluster: Option<String>,
    pub serve_reports: bool,
    pub raw: bool,
    pub max_raw_backlog: NonZeroUsize,
    pub max_raw_backlog_bytes: usize,
}

impl ClickHouseConfig {
    pub fn client(&self) -> Client {
        Client::new(&self.url, &self.user, &self.password, self.timeout)
            .expect("url validated with the configuration")
    }
}

/// This machine's host name (Linux).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

pub(crate) fn validate(
    src: &Source<'_>,
    raw: &RawClickHouse,
) -> Result<ClickHouseConfig, ConfigError> {
    let url = raw.url.get_ref().clone();
    Client::new(&url, "", "", Duration::from_secs(1))
        .map_err(|e| src.bad(Some(&raw.url), "clickhouse.url", e.to_string()))?;
    let ident = |v: &Option<Spanned<String>>, key: &str, default: &str| match v {
        None => Ok(default.to_string()),
        Some(s) if valid_identifier(s.get_ref()) => Ok(s.get_ref().clone()),
        Some(s) => Err(src.bad(
            Some(s),
            key,
            "letters, digits and _ only, not starting with a digit",
        )),
    };
    let database = ident(&raw.database, "clickhouse.database", "labelflow")?;
    let cluster = match &raw.cluster {
        None => None,
        Some(_) => Some(ident(&raw.cluster, "clickhouse.cluster", "")?),
    };
    let password = match &raw.password_file {
        None => String::new(),
        Some(f) => {
            let p = f.get_ref();
            let text = std::fs::read_to_string(p).map_err(|e| {
                src.bad(
                    Some(f),
                    "clickhouse.password_file",
                    format!("{}: {e}", p.display()),
                )
            })?;
            let pw = text.trim();
            if pw.contains(['\r', '\n']) {
                let m = format!("{}: must hold the password on one line", p.display());
                return Err(src.bad(Some(f), "clickhouse.password_file", m));
            }
            pw.to_string()
        }
    };
    let collector_name = match &raw.collector_name {
        None => hostname(),
        Some(n) if n.get_ref().trim().is_empty() || n.get_ref().contains(['\t', '\n']) => {
            let m = "must not be empty or hold tabs or newlines";
            return Err(src.bad(Some(n), "clickhouse.collector_name", m));
        }
        Some(n) => n.get_ref().clone(),
    };
    let user = raw.user.clone().unwrap_or_else(|| "default".to_string());
    if user.contains(['\r', '\n']) {
        return Err(src.bad(Some(&raw.url), "clickhouse.user", "must be one line"));
    }
    let max_raw_backlog_bytes = raw
        .max_raw_backlog_bytes
        .as_ref()
        .map_or(1 << 30, |v| *v.get_ref());
    if max_raw_backlog_bytes < super::raw::MAX_BATCH_BYTES {
        let at = raw.max_raw_backlog_bytes.as_ref();
        let why = format!(
            "must be at least {} (one raw batch)",
            super::raw::MAX_BATCH_BYTES
        );
        return Err(src.bad(at, "clickhouse.max_raw_backlog_bytes", why));
    }
    Ok(ClickHouseConfig {
        url,
        database,
        user,
        password,
        collector_name,
        max_backlog: src.nz(&raw.max_backlog, "clickhouse.max_backlog", 1000)?,
        max_batches_per_insert: src.nz(
            &raw.max_batches_per_insert,
            "clickhouse.max_batches_per_insert",
            100,
        )?,
        timeout: src.dur(&raw.timeout, "clickhouse.timeout", "30s")?,
        cluster,
        serve_reports: raw.serve_reports,
        raw: raw.raw,
        max_raw_backlog: src.nz(&raw.max_raw_backlog, "clickhouse.max_raw_backlog", 10000)?,
        max_raw_backlog_bytes,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn defaults_and_errors_name_the_place() {
        let c = Config::parse("[clickhouse]\nurl = \"http://127.0.0.1:8123\"\n", "c.toml")
            .unwrap()
            .clickhouse
            .unwrap();
        assert_eq!(
            (c.database.as_str(), c.user.as_str()),
            ("labelflow", "default")
        );
        assert_eq!(c.collector_name, super::hostname());
        assert_eq!(c.max_backlog.get(), 1000);
        assert!(c.cluster.is_none() && !c.serve_reports && !c.raw);
        assert_eq!(c.max_raw_backlog.get(), 10000);
        assert_eq!(c.max_raw_backlog_bytes, 1 << 30);
        assert!(Config::parse("", "c.toml").unwrap().clickhouse.is_none());
        let err = |text: &str| Config::parse(text, "c.toml").unwrap_err().to_string();
        let e = err("[clickhouse]\nurl = \"https://x\"\n");
        assert!(e.starts_with("c.toml:2:7: clickhouse.url:"), "{e}");
        let e = err("[clickhouse]\nurl = \"http://x\"\ndatabase = \"a-b\"\n");
        assert!(e.starts_with("c.toml:3:12: clickhouse.database:"), "{e}");
        let e = err("[clickhouse]\nurl = \"http://x\"\nmax_backlog = 0\n");
        assert!(e.contains("clickhouse.max_backlog: must be > 0"), "{e}");
        let e = err("[clickhouse]\nurl = \"http://x\"\npassword_file = \"/nonexistent/pw\"\n");
        assert!(
            e.contains("clickhouse.password_file: /nonexistent/pw"),
            "{e}"
        );
        let e = err("[clickhouse]\nurl = \"http://x\"\nmax_raw_backlog = 0\n");
        assert!(e.contains("clickhouse.max_raw_backlog: must be > 0"), "{e}");
        let e = err("[clickhouse]\nurl = \"http://x\"\nmax_raw_backlog_bytes = 1000\n");
        assert!(
            e.starts_with("c.toml:3:25: clickhouse.max_raw_backlog_bytes: must be at least"),
            "{e}"
        );
        let e = err("[clickhouse]\nurl = \"http://x\"\nrows = true\n");
        assert!(e.contains("unknown field"), "{e}");
    }
}
