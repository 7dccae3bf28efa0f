//! `labelflow-lab`: the kernel lab from the shell (examples, demo, benchmarks).
//!
//! ```text
//! eval "$(labelflow-lab up --lab demo --rules nft)"   # LAB=demo INET_NS=demo-inet GW_NS=demo-gw LAN_NS=demo-lan
//! ip netns exec "$GW_NS" labelflow-probe --group 1=esp ... &
//! labelflow-lab ready --lab demo --groups 1,2,3
//! labelflow-lab traffic --lab demo --mix standard
//! labelflow-lab rules --lab demo --firewall nft detach
//! labelflow-lab counters --lab demo --firewall nft
//! labelflow-lab down --lab demo
//! ```

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use labelflow_tests::lab::{addr, delete_prefix, delete_stale, Lab, Role};
use labelflow_tests::rules::{self, Firewall};
use labelflow_tests::{process, traffic};

#[derive(Parser, Debug)]
#[command(
    name = "labelflow-lab",
    about = "Network-namespace lab for labelflow (needs root)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Fw {
    Iptables,
    Nft,
}

impl From<Fw> for Firewall {
    fn from(f: Fw) -> Firewall {
        match f {
            Fw::Iptables => Firewall::Iptables,
            Fw::Nft => Firewall::Nftables,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RulesAction {
    /// Load the labelflow ruleset (counters start at zero).
    Load,
    /// Empty the base chains: counting and logging stop, counters stay readable.
    Detach,
    /// Remove the ruleset.
    Unload,
    /// Print the ruleset text without loading it.
    Show,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum MixName {
    /// ESP (several SPIs, v4+v6), tunnel and other traffic: UDP, TCP both ways, ICMP, IPv6.
    Standard,
    /// Only ESP and UDP (counters equal what was sent).
    Exact,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build a lab; prints shell assignments LAB=, INET_NS=, GW_NS=, LAN_NS=.
    Up {
        /// Prefix of the namespaces ([A-Za-z0-9_]); default lab<pid>.
        #[arg(long)]
        lab: Option<String>,
        /// Also load the ruleset.
        #[arg(long, value_enum)]
        rules: Option<Fw>,
    },
    /// Load, detach, unload or show the labelflow ruleset in the gateway.
    Rules {
        #[arg(long)]
        lab: Option<String>,
        #[arg(long, value_enum, default_value = "iptables")]
        firewall: Fw,
        #[arg(value_enum)]
        action: RulesAction,
    },
    /// Wait until NFLOG groups are bound by a listener inside the gateway.
    Ready {
        #[arg(long)]
        lab: String,
        /// Comma-separated groups.
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        groups: Vec<u16>,
        /// Seconds to wait at most.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Wait until NFLOG groups' kernel batches and their listener's socket queue are empty.
    Drained {
        #[arg(long)]
        lab: String,
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        groups: Vec<u16>,
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Send traffic through the lab.
    Traffic {
        #[arg(long)]
        lab: String,
        #[arg(long, value_enum, default_value = "standard")]
        mix: MixName,
        /// Repeat the mix this many times.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        /// Instead of a mix: send this many ESP packets (IPv4, to the gateway) as fast as possible.
        #[arg(long)]
        esp_flood: Option<u32>,
        /// SPIs for --esp-flood (comma-separated, hex with 0x or decimal).
        #[arg(long, value_delimiter = ',', default_value = "0x100")]
        spi: Vec<String>,
        /// ESP payload bytes for --esp-flood.
        #[arg(long, default_value_t = 64)]
        payload: usize,
    },
    /// Print the ruleset's counters per label: `LABEL PACKETS BYTES` (or JSON).
    Counters {
        #[arg(long)]
        lab: String,
        #[arg(long, value_enum, default_value = "iptables")]
        firewall: Fw,
        #[arg(long)]
        json: bool,
    },
    /// Receive flow export (IPFIX / NetFlow v9) on a UDP port until SIGTERM/SIGINT, then
    /// print a JSON summary (datagrams, flows, packets, bytes, per group, ignored packets).
    Sink {
        /// Namespace to listen in (default: the current one).
        #[arg(long)]
        ns: Option<String>,
        #[arg(long, default_value = "127.0.0.1:4739")]
        bind: std::net::SocketAddr,
        /// Write the summary here instead of stdout.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Print a trafgen(8) configuration: static 64-byte frames from the Internet peer through
    /// the gateway to the LAN host, one per group (ESP, tunnel UDP, other UDP).
    TrafgenConf {
        #[arg(long)]
        lab: String,
    },
    /// Print the namespace name of a role (inet, gw, lan).
    Ns { lab: String, role: String },
    /// Delete a lab (its namespaces and processes left inside), or all stale automatic labs.
    Down {
        #[arg(long, required_unless_present = "stale")]
        lab: Option<String>,
        /// Delete automatically named labs whose creating process is gone.
        #[arg(long)]
        stale: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("labelflow-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Up { lab, rules: fw } => {
            let lab = match lab {
                Some(p) => Lab::up_named(&p)?,
                // Not the automatic `lf<pid>n<k>` form: `down --stale` would take it for an
                // orphan once this command exits.
                None => Lab::up_named(&format!("lab{}", std::process::id()))?,
            };
            if let Some(fw) = fw {
                rules::load(&lab, fw.into())?;
            }
            println!("LAB={}", lab.prefix());
            println!("INET_NS={}", lab.inet());
            println!("GW_NS={}", lab.gw());
            println!("LAN_NS={}", lab.lan());
            lab.keep();
        }
        Cmd::Rules {
            lab,
            firewall,
            action,
        } => {
            let fw: Firewall = firewall.into();
            if let RulesAction::Show = action {
                match fw {
                    Firewall::Iptables => {
                        println!("# iptables-restore\n{}", rules::iptables_ruleset(false));
                        println!("# ip6tables-restore\n{}", rules::iptables_ruleset(true));
                    }
                    Firewall::Nftables => println!("{}", rules::nft_ruleset()),
                }
                return Ok(());
            }
            let Some(prefix) = lab else {
                bail!("--lab is required for {action:?}")
            };
            let lab = Lab::attach(&prefix)?;
            match action {
                RulesAction::Load => rules::load(&lab, fw)?,
                RulesAction::Detach => rules::detach(&lab, fw)?,
                RulesAction::Unload => rules::unload(&lab, fw)?,
                RulesAction::Show => {}
            }
        }
        Cmd::Ready {
            lab,
            groups,
            timeout,
        } => {
            let lab = Lab::attach(&lab)?;
            let deadline = Instant::now() + Duration::from_secs(timeout);
            loop {
                let bound = process::bound_nflog_groups(&lab)?;
                if groups.iter().all(|g| bound.contains(g)) {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!("groups {groups:?} not bound within {timeout}s (bound: {bound:?})");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Cmd::Drained {
            lab,
            groups,
            timeout,
        } => {
            let lab = Lab::attach(&lab)?;
            for g in groups {
                process::wait_nflog_drained(&lab, g, Duration::from_secs(timeout))?;
            }
        }
        Cmd::Traffic {
            lab,
            mix,
            repeat,
            esp_flood,
            spi,
            payload,
        } => {
            let lab = Lab::attach(&lab)?;
            if let Some(n) = esp_flood {
                let spis = spi
                    .iter()
                    .map(|s| parse_spi(s))
                    .collect::<Result<Vec<_>>>()?;
                let per_spi = n / u32::try_from(spis.len().max(1)).unwrap_or(1);
                let sent =
                    traffic::esp(&lab, IpAddr::V4(addr::GW_WAN_V4), &spis, per_spi, payload)?;
                println!("esp sent {} {}", sent.packets, sent.bytes);
                return Ok(());
            }
            let mix = match mix {
                MixName::Standard => traffic::Mix::standard(),
                MixName::Exact => traffic::Mix::exact(),
            };
            let mut total = traffic::MixReport::default();
            for _ in 0..repeat {
                let r = traffic::run_mix(&lab, &mix)?;
                total.esp += r.esp;
                total.vpn_udp += r.vpn_udp;
                total.other_udp += r.other_udp;
            }
            println!("esp sent {} {}", total.esp.packets, total.esp.bytes);
            println!(
                "vpn-udp received {} {}",
                total.vpn_udp.packets, total.vpn_udp.bytes
            );
            println!(
                "other-udp received {} {}",
                total.other_udp.packets, total.other_udp.bytes
            );
        }
        Cmd::Counters {
            lab,
            firewall,
            json,
        } => {
            let lab = Lab::attach(&lab)?;
            let counters = rules::counters(&lab, firewall.into())?;
            if json {
                let obj: serde_json::Map<String, serde_json::Value> = counters
                    .iter()
                    .map(|(l, c)| {
                        (
                            l.clone(),
                            serde_json::json!({"packets": c.packets, "bytes": c.bytes}),
                        )
                    })
                    .collect();
                println!("{}", serde_json::Value::Object(obj));
            } else {
                for (label, c) in counters {
                    println!("{label} {} {}", c.packets, c.bytes);
                }
            }
        }
        Cmd::Sink { ns, bind, out } => sink(ns.as_deref(), bind, out.as_deref())?,
        Cmd::TrafgenConf { lab } => {
            let lab = Lab::attach(&lab)?;
            print!("{}", trafgen_conf(&lab)?);
        }
        Cmd::Ns { lab, role } => {
            let Some(r) = Role::parse(&role) else {
                bail!("role must be inet, gw or lan, not {role:?}")
            };
            println!("{}", Lab::attach(&lab)?.ns(r));
        }
        Cmd::Down { lab, stale } => {
            if let Some(prefix) = lab {
                delete_prefix(&prefix).with_context(|| format!("deleting lab {prefix}"))?;
            }
            if stale {
                for p in delete_stale()? {
                    println!("deleted stale lab {p}");
                }
            }
        }
    }
    Ok(())
}

fn parse_spi(s: &str) -> Result<u32> {
    let v = match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    v.with_context(|| format!("bad SPI {s:?}"))
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn sink(ns: Option<&str>, bind: std::net::SocketAddr, out: Option<&std::path::Path>) -> Result<()> {
    use labelflow_tests::{ipfix::ExportLog, netns};
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
    let sock = match ns {
        Some(ns) => netns::udp_socket(ns, bind, Some(32 << 20))?,
        None => {
            let s = std::net::UdpSocket::bind(bind).with_context(|| format!("bind {bind}"))?;
            netns::force_rcvbuf(&socket2::SockRef::from(&s), 32 << 20)?;
            s
        }
    };
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut log = ExportLog::new();
    let mut buf = vec![0u8; 65_536];
    // After a stop signal, drain what is already queued, then finish.
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => log.feed(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                if STOP.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
            }
            Err(e) => return Err(e).context("recv"),
        }
    }
    let total = log
        .totals_by_group()
        .values()
        .fold(rules::Counter::default(), |mut a, c| {
            a += *c;
            a
        });
    let by_group: serde_json::Map<String, serde_json::Value> = log
        .totals_by_group()
        .iter()
        .map(|(g, c)| {
            (
                g.map_or("none".to_owned(), |g| g.to_string()),
                serde_json::json!({"packets": c.packets, "bytes": c.bytes}),
            )
        })
        .collect();
    let summary = serde_json::json!({
        "datagrams": log.datagrams,
        "decode_errors": log.errors.len(),
        "flows": log.flows.len(),
        "packets": total.packets,
        "bytes": total.bytes,
        "by_group": by_group,
        "ignored": log.ignored.iter().map(|(g, n)| (g.to_string(), serde_json::json!(n))).collect::<serde_json::Map<_, _>>(),
    });
    match out {
        Some(p) => std::fs::write(p, format!("{summary}\n"))
            .with_context(|| format!("write {}", p.display()))?,
        None => println!("{summary}"),
    }
    Ok(())
}

fn trafgen_conf(lab: &Lab) -> Result<String> {
    let mac = |role: Role, dev: &str| -> Result<[u8; 6]> {
        let out = lab.exec(role, "cat", &[&format!("/sys/class/net/{dev}/address")])?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let bytes: Vec<u8> = text
            .split(':')
            .map(|h| u8::from_str_radix(h, 16))
            .collect::<Result<_, _>>()?;
        bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("bad MAC {text}"))
    };
    let dst = mac(Role::Gw, labelflow_tests::lab::GW_WAN_IF)?;
    let src = mac(Role::Inet, labelflow_tests::lab::PEER_IF)?;
    let mut conf =
        String::from("/* labelflow lab: inet -> gw (forward) -> lan, one frame per group */\n");
    let frames: [(&str, std::net::Ipv4Addr, u8, [u8; 8]); 3] = [
        (
            "esp (group 1)",
            addr::INET_V4,
            50,
            [0, 0, 0x10, 0x01, 0, 0, 0, 1],
        ),
        (
            "tunnel udp (group 2)",
            addr::REMOTE_V4,
            17,
            [0x9c, 0x40, 0x13, 0x88, 0, 0, 0, 0],
        ),
        (
            "other udp (group 3)",
            addr::INET_V4,
            17,
            [0xa0, 0x28, 0x14, 0xe9, 0, 0, 0, 0],
        ),
    ];
    for (what, saddr, proto, l4) in frames {
        // 14 Ethernet + 20 IPv4 + 8 (UDP header or ESP SPI/seq) + 18 payload = 60 bytes.
        let total_len: u16 = 20 + 8 + 18;
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&total_len.to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
        ip.extend_from_slice(&saddr.octets());
        ip.extend_from_slice(&addr::LAN_V4.octets());
        let sum = traffic::inet_checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut l4 = l4.to_vec();
        if proto == 17 {
            l4[4..6].copy_from_slice(&(8u16 + 18).to_be_bytes());
        }
        let mut frame = Vec::new();
        frame.extend_from_slice(&dst);
        frame.extend_from_slice(&src);
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame.extend(std::iter::repeat_n(0u8, 18));
        let hex: Vec<String> = frame.iter().map(|b| format!("0x{b:02x}")).collect();
        conf.push_str(&format!("/* {what} */\n{{ {} }}\n", hex.join(", ")));
    }
    Ok(conf)
}
