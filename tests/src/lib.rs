//! The shared kernel lab of labelflow, and helpers for its end-to-end tests.
//!
//! ```text
//!   Lab::up()  ── namespaces PREFIX-{inet,gw,lan} + veth, v4/v6, forwarding, offloads off
//!   rules::load(&lab, Firewall::Iptables | Nftables)  ── NFLOG groups 1 esp, 2 vpn, 3 other
//!   process::start_probe(&lab, ..)  ── labelflow-probe inside PREFIX-gw
//!   traffic::run_mix(&lab, &Mix::standard())  ── ESP (SPIs), tunnel and other traffic
//!   rules::detach(..); rules::counters(..)  ── the kernel's own per-group counters
//!   ruleset::load_files(..); ruleset::all_counters(..)  ── an example's own rules, every counter
//!   tunnel::run_ipsec_mix(..)  ── tunnel traffic paired with its ESP packets
//!   ipfix::ExportLog  ── what the probe exported, decoded by netflow_parser
//!   conntrack::load(&lab)  ── masquerade + ct mark labels, counters per mark and direction
//!   ct_collector::RealCollectors  ── labelflow-collector on the conntrack export
//! ```
//!
//! The same code drives the tests in `tests/`, and the `labelflow-lab` binary used by the
//! example, demo and benchmark scripts. Everything needs root.
//!
//! ```no_run
//! use labelflow_tests::{lab::Lab, rules::{self, Firewall}, traffic};
//! # fn main() -> Result<(), labelflow_tests::LabError> {
//! let lab = Lab::up()?; // deleted again when `lab` drops
//! rules::load(&lab, Firewall::Nftables)?;
//! let sent = traffic::run_mix(&lab, &traffic::Mix::exact())?;
//! rules::detach(&lab, Firewall::Nftables)?;
//! assert_eq!(rules::counters(&lab, Firewall::Nftables)?["esp"], sent.esp);
//! # Ok(()) }
//! ```

pub mod conntrack;
pub mod ct_collector;
pub mod ipfix;
pub mod ipsec_lab;
pub mod lab;
pub mod netns;
pub mod process;
pub mod rules;
pub mod ruleset;
pub mod scenario;
pub mod strongswan;
pub mod traffic;
pub mod tunnel;

use std::time::Duration;

/// Everything that can go wrong while driving the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {what}: {detail}")]
    Parse { what: &'static str, detail: String },
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    #[error("{name}: {detail}")]
    Daemon { name: String, detail: String },
    #[error("binary {name} not found in {searched}: run `cargo build --workspace --bins` first")]
    MissingBinary { name: String, searched: String },
}
