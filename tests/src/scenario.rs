//! The end-to-end run shared by the probe tests, the demo and the benchmarks: probe inside
//! the gateway, ruleset loaded once the probe listens, traffic, ruleset detached, counters
//! read, probe stopped with SIGTERM, export decoded.
//!
//! Loading the rules only after the probe has bound its groups, and detaching them before
//! the counters are read, makes "counted by the kernel" and "logged to the probe" the same
//! set of packets: nothing is logged to an unbound group, and no late stray packet (neighbour
//! discovery, TCP teardown) is counted after the reading.

use std::time::Duration;

use crate::ipfix::ExportLog;
use crate::lab::Lab;
use crate::process::{self, Daemon, Stopped};
use crate::rules::{self, Counters, Firewall};
use crate::LabError;

/// Everything a probe run produced.
#[derive(Debug)]
pub struct ProbeRun {
    /// The kernel's per-label counters (ground truth).
    pub counters: Counters,
    /// The IPFIX the probe sent to the collector socket, decoded.
    pub export: ExportLog,
    /// The probe's exit status and output.
    pub probe: Stopped,
}

/// How long the probe may take to flush and exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs the probe in `lab` with `fw` rules around `traffic`.
///
/// `extra` is appended to the probe's arguments after `--group` and
/// `--export ipfix://127.0.0.1:PORT`; `exports` are additional `--export` targets.
/// `during` runs after the traffic, while the probe still runs (e.g. to check it is alive).
pub fn run_probe<T, D>(
    lab: &Lab,
    fw: Firewall,
    extra: &[String],
    traffic: T,
    during: D,
) -> Result<ProbeRun, LabError>
where
    T: FnOnce(&Lab) -> Result<(), LabError>,
    D: FnOnce(&mut Daemon) -> Result<(), LabError>,
{
    let (sock, addr) = process::collector_socket(lab)?;
    let mut args = vec!["--export".to_owned(), format!("ipfix://{addr}")];
    args.extend_from_slice(extra);
    let mut probe = process::start_probe(lab, &args)?;
    rules::load(lab, fw)?;
    traffic(lab)?;
    rules::detach(lab, fw)?;
    let counters = rules::counters(lab, fw)?;
    during(&mut probe)?;
    let stopped = probe.stop(libc::SIGTERM, STOP_TIMEOUT)?;
    let mut export = ExportLog::new();
    for d in process::drain_datagrams(&sock)? {
        export.feed(&d);
    }
    Ok(ProbeRun {
        counters,
        export,
        probe: stopped,
    })
}
