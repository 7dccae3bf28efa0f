//! labelflow-collector on the conntrack scenario ([`crate::conntrack`]): two collectors in
//! the gateway take the probe's conntrack export, one as unidirectional records and one as
//! RFC 5103 biflows, and their reports are checked against the scenario's ground truth.
//!
//! ```text
//!  probe (gw) ──[[export]]──► collector "uni"  (uni.db)   report --by label | direction
//!                                                          | host | nat
//!             ──[[export]] biflow = true──► collector "bi" (bi.db)
//!  hosts.networks: the LAN host (original direction's source) and the uplink addresses
//!  (the masquerade: the reply direction's destination), so `--by host` splits directions.
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::conntrack::{CtLine, LABELS};
use crate::lab::{addr, Lab};
use crate::netns::io;
use crate::process::{self, Daemon};
use crate::rules::Counter;
use crate::LabError;

/// The two collectors and their directory (configuration and stores), removed on drop.
#[derive(Debug)]
pub struct RealCollectors {
    uni: (Daemon, SocketAddr),
    bi: (Daemon, SocketAddr),
    dir: PathBuf,
}

impl Drop for RealCollectors {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Per-direction truth: the sum over labels of `truth[(label, dir)]`.
fn direction_sum(truth: &BTreeMap<(String, String), Counter>, dir: &str) -> Counter {
    let mut sum = Counter::default();
    for ((_, d), c) in truth {
        if d == dir {
            sum += *c;
        }
    }
    sum
}

/// A report's per-key totals.
pub fn report_totals(j: &serde_json::Value, by: &str) -> BTreeMap<String, Counter> {
    j["totals"]
        .as_array()
        .map(|t| t.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let n = |k: &str| t[k].as_u64().unwrap_or(0);
            let key = t[by].as_str().unwrap_or("").to_owned();
            (
                key,
                Counter {
                    packets: n("packets"),
                    bytes: n("bytes"),
                },
            )
        })
        .collect()
}

impl RealCollectors {
    /// Starts both collectors in the gateway; each listens before this returns.
    pub fn start(lab: &Lab) -> Result<RealCollectors, LabError> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lf-ctc-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| io("collector directory", e))?;
        let cfg = dir.join("collector.toml");
        let nets = format!(
            "[hosts]\nnetworks = [\"{}/32\", \"{}/128\", \"{}/32\", \"{}/128\"]\n",
            addr::LAN_V4,
            addr::LAN_V6,
            addr::GW_WAN_V4,
            addr::GW_WAN_V6
        );
        std::fs::write(&cfg, nets).map_err(|e| io("collector config", e))?;
        let uni = process::start_collector_with(lab, &dir.join("uni.db"), Some(&cfg))?;
        let bi = process::start_collector_with(lab, &dir.join("bi.db"), Some(&cfg))?;
        Ok(RealCollectors { uni, bi, dir })
    }

    /// The probe's extra export targets: (address, biflow).
    pub fn targets(&self) -> [(SocketAddr, bool); 2] {
        [(self.uni.1, false), (self.bi.1, true)]
    }

    /// After the probe stopped: each collector's `report --by label` equals `want` (waiting,
    /// bounded, for its commits), then the collectors stop.
    pub fn check_labels(&mut self, want: &BTreeMap<String, Counter>) {
        let dir = self.dir.clone();
        for (name, (daemon, _)) in [("uni.db", &mut self.uni), ("bi.db", &mut self.bi)] {
            settle(daemon, &dir.join(name), name, want);
            eprintln!("{name}: per label {want:?}");
        }
    }

    /// After the probe stopped: each collector's `report --by label` equals nftables per
    /// label (both directions), `--by direction` per label and direction, `--by host` per
    /// direction (all labels: LAN host out is the
    /// original direction, the uplink addresses in the reply), and `--by nat` holds exactly
    /// the masquerade's pairs conntrack listed (`INSIDE > PUBLIC`), with every labelled
    /// packet and byte. Panics naming the collector and the report that differs.
    pub fn check(&mut self, truth: &BTreeMap<(String, String), Counter>, listed: &[CtLine]) {
        let (orig, reply) = (direction_sum(truth, "orig"), direction_sum(truth, "reply"));
        let mut both = orig;
        both += reply;
        let want: BTreeMap<String, Counter> = LABELS
            .iter()
            .map(|(_, l, _)| {
                let mut c = Counter::default();
                for dir in ["orig", "reply"] {
                    c += truth
                        .get(&(l.to_string(), dir.to_owned()))
                        .copied()
                        .unwrap_or_default();
                }
                (l.to_string(), c)
            })
            .collect();
        let dir = self.dir.clone();
        for (name, (daemon, _)) in [("uni.db", &mut self.uni), ("bi.db", &mut self.bi)] {
            let db = dir.join(name);
            settle(daemon, &db, name, &want);
            let by_dir = report_totals(
                &process::collector_report(&db, "direction").expect("direction report"),
                "direction",
            );
            let want_dir: BTreeMap<String, Counter> = truth
                .iter()
                .filter(|(_, c)| **c != Counter::default())
                .map(|((l, d), c)| (format!("{l} {d}"), *c))
                .collect();
            assert_eq!(
                by_dir, want_dir,
                "{name}: report --by direction vs nftables"
            );
            let hosts = process::collector_report(&db, "host").expect("host report");
            let side = |addrs: [IpAddr; 2], field: &str| {
                let mut c = Counter::default();
                for t in hosts["totals"].as_array().expect("host totals") {
                    if addrs
                        .iter()
                        .any(|a| t["host"].as_str() == Some(&a.to_string()))
                    {
                        c += Counter {
                            packets: t["packets"].as_u64().unwrap_or(0),
                            bytes: t[field].as_u64().unwrap_or(0),
                        };
                    }
                }
                c
            };
            let lan = [addr::LAN_V4.into(), addr::LAN_V6.into()];
            let wan = [addr::GW_WAN_V4.into(), addr::GW_WAN_V6.into()];
            assert_eq!(side(lan, "bytes_out"), orig, "{name}: original direction");
            assert_eq!(side(wan, "bytes_in"), reply, "{name}: reply direction");
            assert_eq!(side(lan, "bytes_in").bytes, 0, "{name}: LAN host in");
            assert_eq!(side(wan, "bytes_out").bytes, 0, "{name}: uplink out");

            let nat = report_totals(
                &process::collector_report(&db, "nat").expect("nat report"),
                "nat",
            );
            let pairs: BTreeSet<String> = listed
                .iter()
                .map(|c| format!("{} > {}", c.orig.0, c.reply.1))
                .collect();
            let keys: BTreeSet<String> = nat.keys().cloned().collect();
            assert_eq!(keys, pairs, "{name}: NAT pairs vs /proc/net/nf_conntrack");
            let mut all = Counter::default();
            for c in nat.values() {
                all += *c;
            }
            assert_eq!(all, both, "{name}: NAT pairs' packets and bytes");
            eprintln!("{name}: per label {want:?}; per direction {by_dir:?}; nat {nat:?}");
        }
    }
}

/// Waits (bounded) until the collector's `report --by label` equals `want` (it commits
/// every second; the probe has stopped), stops it, and checks the report again.
fn settle(daemon: &mut Daemon, db: &Path, name: &str, want: &BTreeMap<String, Counter>) {
    let by_label = || {
        let j = process::collector_report(db, "label").expect("label report");
        report_totals(&j, "label")
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = by_label();
        if &got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: report --by label {got:?}, nftables {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let stopped = daemon
        .stop(libc::SIGTERM, Duration::from_secs(20))
        .expect("collector stop");
    assert!(stopped.status.success(), "collector: {}", stopped.stderr);
    assert_eq!(&by_label(), want, "{name}: after the stop");
}
