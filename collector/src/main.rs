//! labelflow-collector: receive, aggregate, store; report and graph from the store.
//!
//! Lifecycle of `run`: tracing, configuration (validated before anything is bound; bad
//! configuration exits 64), bind, run, wait for SIGINT/SIGTERM, drain (commit open buckets).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use labelflow_collector::config::Config;
use labelflow_collector::store::Reader;
use labelflow_collector::{daemon, graph, http, report};

/// sysexits.h EX_USAGE / EX_CONFIG-style exit for a bad configuration.
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "labelflow-collector",
    version,
    about = "NetFlow/IPFIX collector: per-label, view, tunnel and host reports"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// UDP listen address (repeatable); overrides `listen`.
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// SQLite database; overrides `db`.
    #[arg(long)]
    db: Option<PathBuf>,
    /// HTTP address for dashboard, API and /metrics; overrides `http`.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Validate the configuration and exit (0 valid, 64 invalid).
    #[arg(long)]
    check_config: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a report from the database.
    Report {
        #[command(flatten)]
        q: QueryArgs,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Draw a stacked bit/s graph into an SVG or PNG file.
    Graph {
        #[command(flatten)]
        q: QueryArgs,
        /// Output file; the extension picks the format (.svg or .png).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1000)]
        width: u32,
        #[arg(long, default_value_t = 400)]
        height: u32,
        #[arg(long)]
        title: Option<String>,
    },
    /// Queue every cell of the database for ClickHouse (`[clickhouse]` of the
    /// configuration), as absolute totals: the running collector (or the next one started)
    /// sends them. Safe to repeat. The first start with `[clickhouse]` does this by itself.
    ClickhouseBackfill {
        /// TOML configuration file (its `db` and `[clickhouse]`).
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// SQLite database; overrides `db`.
        #[arg(long)]
        db: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct QueryArgs {
    #[arg(long, default_value = "labelflow.db")]
    db: PathBuf,
    /// Read ClickHouse (`http://HOST[:PORT]`) instead of the database: every collector
    /// writing there, through the Distributed tables when they exist.
    #[arg(long, value_name = "URL")]
    clickhouse: Option<String>,
    /// ClickHouse database.
    #[arg(long, default_value = "labelflow", requires = "clickhouse")]
    clickhouse_database: String,
    /// ClickHouse user.
    #[arg(long, default_value = "default", requires = "clickhouse")]
    clickhouse_user: String,
    /// File holding the ClickHouse password.
    #[arg(long, requires = "clickhouse")]
    clickhouse_password_file: Option<PathBuf>,
    /// label | view | tunnel | host | protocol | port | nat | direction, and with
    /// --clickhouse: collector, or flow (the raw records' flows with the most bytes, label
    /// and 5-tuple, `--top` of them, default 10; `--key` keeps those labels)
    #[arg(long, default_value = "label")]
    by: String,
    /// Output bucket width (humantime, e.g. 5m); default: the finest stored resolution.
    #[arg(long)]
    bucket: Option<String>,
    /// Range ending now (humantime, e.g. 1h). Default 1h.
    #[arg(long, conflicts_with = "from")]
    last: Option<String>,
    /// Range start (RFC 3339 or UNIX seconds).
    #[arg(long)]
    from: Option<String>,
    /// Range end, exclusive (RFC 3339 or UNIX seconds). Default now.
    #[arg(long, requires = "from")]
    to: Option<String>,
    /// Keep the N keys with most bytes; the rest is reported as `other`.
    #[arg(long)]
    top: Option<usize>,
    /// Only this key (exact name: a label, view, tunnel, host, protocol, port or NAT pair as the
    /// report shows it); repeat for several.
    #[arg(long = "key", value_name = "KEY")]
    keys: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let r = match cli.command {
        Some(Command::Report { q, format }) => report_cmd(&q, format),
        Some(Command::Graph {
            q,
            out,
            width,
            height,
            title,
        }) => graph_cmd(&q, &out, (width, height), title),
        Some(Command::ClickhouseBackfill { config, db }) => backfill_cmd(&config, db),
        None => return run_cmd(cli.run),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("labelflow-collector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_cmd(args: RunArgs) -> ExitCode {
    // Configuration: file, then flags on top. Nothing is bound before it is valid.
    let mut cfg = match &args.config {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("labelflow-collector: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => Config::defaults(),
    };
    if !args.listen.is_empty() {
        cfg.listen = args.listen.clone();
    }
    if let Some(db) = args.db {
        cfg.db = db;
    }
    if args.http.is_some() {
        cfg.http = args.http;
    }
    if args.check_config {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    // Bind.
    let bound = match daemon::bind(&cfg) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("labelflow-collector: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(listen = ?cfg.listen, db = %cfg.db.display(), http = ?cfg.http, "collector running");
    // Run until SIGINT/SIGTERM, then drain: open buckets are committed before exit.
    match daemon::run(cfg, bound, shutdown_signal()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("labelflow-collector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn backfill_cmd(config: &std::path::Path, db: Option<PathBuf>) -> anyhow::Result<()> {
    let mut cfg = Config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(db) = db {
        cfg.db = db;
    }
    if cfg.clickhouse.is_none() {
        anyhow::bail!("{}: no [clickhouse] section", config.display());
    }
    // Open an existing database only: a wrong path must not leave an empty one behind.
    if !cfg.db.is_file() {
        anyhow::bail!(
            "{}: no such database (the collector's `db`; pass --db to name another)",
            cfg.db.display()
        );
    }
    let mut store =
        labelflow_collector::store::Store::open(&cfg.db, cfg.max_templates_per_exporter.get())
            .with_context(|| format!("opening {}", cfg.db.display()))?;
    let (cells, batches) = store
        .clickhouse_backfill(&cfg.agg.resolutions)
        .with_context(|| format!("queuing the cells of {}", cfg.db.display()))?;
    println!(
        "queued {cells} cells in {batches} batches of {} for ClickHouse",
        cfg.db.display()
    );
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The report query the command line asks for, by dimension `by`.
fn parse_query(q: &QueryArgs, by: &str) -> anyhow::Result<report::Query> {
    http::parse_query(
        by,
        q.bucket.as_deref(),
        q.last.as_deref(),
        q.from.as_deref(),
        q.to.as_deref(),
        q.top,
        now_secs(),
    )
    .map_err(anyhow::Error::msg)
}

fn load_report(q: &QueryArgs) -> anyhow::Result<report::Report> {
    let by_collector = q.by == "collector";
    if by_collector && q.clickhouse.is_none() {
        anyhow::bail!("--by collector needs --clickhouse (one database holds one collector)");
    }
    let query = parse_query(q, if by_collector { "label" } else { &q.by })?;
    let query = report::Query {
        keys: q.keys.clone(),
        ..query
    };
    if let Some(url) = &q.clickhouse {
        return clickhouse_report(q, url, &query, by_collector);
    }
    if !q.db.exists() {
        anyhow::bail!("{}: no such database", q.db.display());
    }
    let reader = Reader::open(&q.db).with_context(|| format!("opening {}", q.db.display()))?;
    if let Some(n) = reader.unmerged_records().filter(|n| *n > 0) {
        eprintln!(
            "{}: {n} received records are journaled but not merged into the aggregates yet, \
             so not in this report (the collector merges them while it runs)",
            q.db.display()
        );
    }
    Ok(report::build(&reader, &query)?)
}

fn clickhouse_report(
    q: &QueryArgs,
    url: &str,
    query: &report::Query,
    by_collector: bool,
) -> anyhow::Result<report::Report> {
    use labelflow_collector::clickhouse::read;
    let client = clickhouse_client(q, url)?;
    Ok(read::build(
        client,
        &q.clickhouse_database,
        query,
        by_collector,
    )?)
}

/// `report --clickhouse URL --by flow`: the top flows of the raw records.
fn flows_cmd(q: &QueryArgs, format: Format) -> anyhow::Result<()> {
    use labelflow_collector::clickhouse::flows;
    let Some(url) = &q.clickhouse else {
        anyhow::bail!("--by flow needs --clickhouse (raw records live in its flows table)");
    };
    let query = parse_query(q, "label")?;
    let client = clickhouse_client(q, url)?;
    let range = (query.from, query.to);
    let rows = flows::top_flows(
        &client,
        &q.clickhouse_database,
        range,
        q.top.unwrap_or(10),
        &q.keys,
    )?;
    match format {
        Format::Table => print!("{}", flows::to_table(&rows)),
        Format::Csv => print!("{}", flows::to_csv(&rows)),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&flows::to_json(&rows, range))?
        ),
    }
    Ok(())
}

fn clickhouse_client(
    q: &QueryArgs,
    url: &str,
) -> anyhow::Result<labelflow_collector::clickhouse::Client> {
    let password = match &q.clickhouse_password_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .trim()
            .to_string(),
        None => String::new(),
    };
    let timeout = std::time::Duration::from_secs(300);
    Ok(labelflow_collector::clickhouse::Client::new(
        url,
        &q.clickhouse_user,
        &password,
        timeout,
    )?)
}

fn report_cmd(q: &QueryArgs, format: Format) -> anyhow::Result<()> {
    if q.by == "flow" {
        return flows_cmd(q, format);
    }
    let r = load_report(q)?;
    // `--by collector` reports label counts keyed by collector name: name the key so.
    let rename = |s: String| {
        if q.by == "collector" {
            labelflow_collector::clickhouse::read::collector_header(&s)
        } else {
            s
        }
    };
    match format {
        Format::Table => print!("{}", rename(report::to_table(&r))),
        Format::Csv => print!("{}", rename(report::to_csv(&r))),
        Format::Json => {
            let mut j = report::to_json(&r);
            if q.by == "collector" {
                labelflow_collector::clickhouse::read::collector_json(&mut j);
            }
            println!("{}", serde_json::to_string_pretty(&j)?)
        }
    }
    Ok(())
}

fn graph_cmd(
    q: &QueryArgs,
    out: &std::path::Path,
    size: (u32, u32),
    title: Option<String>,
) -> anyhow::Result<()> {
    let r = load_report(q)?;
    let title = title.unwrap_or_else(|| format!("bit/s by {}", q.by));
    graph::render(&r, &title, out, size)?;
    Ok(())
}
