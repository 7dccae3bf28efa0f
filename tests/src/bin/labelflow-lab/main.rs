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
//!
//! An example's own ruleset and traffic:
//!
//! ```text
//! labelflow-lab up --lab ex --addr lan=198.51.100.3/24
//! labelflow-lab rules --lab ex --firewall nft --file rules.nft --file lab-overlay.nft load
//! labelflow-lab send --lab ex udp --from lan --src 198.51.100.2:4000 --to inet --dst 192.0.2.1:53 --count 5
//! labelflow-lab counters --lab ex --firewall nft --all --zero
//! labelflow-lab rules --lab ex --firewall nft --file rules.nft detach
//! ```

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use labelflow_tests::lab::{addr, delete_prefix, delete_stale, Lab, Role};
use labelflow_tests::rules::{self, Firewall};
use labelflow_tests::traffic::{Sender, TcpExchange};
use labelflow_tests::{process, ruleset, traffic, tunnel};

mod side;
use side::{conntrack_cmd, sink};

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
    /// Load the labelflow ruleset, or the --file rulesets in order (counters start at zero).
    Load,
    /// Empty the base chains (of the --file rulesets: those they declare or hook into):
    /// counting and logging stop, counters stay readable.
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
    /// An IPsec gateway: the standard mix's tunnel traffic with each packet also sent as its
    /// ESP packet (tunnel mode, AES-GCM sizes) in the same direction, no other ESP; and the
    /// standard mix's other traffic.
    Ipsec,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum IpsecAction {
    Up,
    Traffic,
    Sas,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SendKind {
    /// --count datagrams of --size bytes, one at a time, each awaited at the receiver (a
    /// --size above the MTU leaves the sender fragmented).
    Udp,
    /// One connection: --size bytes up, --reply bytes down, then both close.
    Tcp,
    /// --count echo requests with --size payload bytes, each reply awaited.
    Ping,
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
        /// An extra address on a role's veth, ROLE=IP/LEN (repeatable); on the gateway, the
        /// interface whose subnet holds the address.
        #[arg(long, value_name = "ROLE=IP/LEN")]
        addr: Vec<String>,
    },
    /// Load, detach, unload or show the labelflow ruleset in the gateway.
    Rules {
        #[arg(long)]
        lab: Option<String>,
        #[arg(long, value_enum, default_value = "iptables")]
        firewall: Fw,
        /// A ruleset file instead of the lab's own (repeatable, loaded in order: iptables, the
        /// first with `iptables-restore`, the next with `--noflush`; files named *ip6tables*
        /// go to ip6tables-restore; nft, `nft -f` each).
        #[arg(long)]
        file: Vec<std::path::PathBuf>,
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
        /// Every commented counter of any ruleset, `KEY PACKETS BYTES`, summed per key:
        /// iptables and ip6tables rules of every table (key: the comment); nft named counters
        /// (the comment, else the name), rules with a comment and an anonymous counter, and
        /// set elements with counters (`SET:ELEMENT`). Whitespace in a key becomes `_`.
        #[arg(long)]
        all: bool,
        /// Zero the counters once read (with --all): nft named and rule counters are read
        /// from their own reset (nothing lost); iptables is read then zeroed per table, and
        /// counted nft sets are flushed after reading (a few milliseconds' window each).
        #[arg(long, requires = "all")]
        zero: bool,
    },
    /// One bounded exchange between two roles; prints what was sent and received, and fails
    /// if anything did not arrive.
    Send {
        #[arg(long)]
        lab: String,
        #[arg(value_enum)]
        kind: SendKind,
        /// Role that sends (inet, gw, lan).
        #[arg(long)]
        from: String,
        /// Source IP[:PORT] (an address of the `from` role; port 0 or none: any).
        #[arg(long)]
        src: String,
        /// Role that receives (udp and tcp).
        #[arg(long)]
        to: Option<String>,
        /// Destination IP[:PORT] (udp and tcp need the port; IPv6 with a port: [IP]:PORT).
        #[arg(long)]
        dst: String,
        #[arg(long, default_value_t = 1)]
        count: u16,
        /// UDP/ICMP payload bytes per packet; TCP bytes the client sends.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// TCP bytes the server answers.
        #[arg(long, default_value_t = 0)]
        reply: usize,
        /// Create the sender's sockets with this effective group id (what `-m owner
        /// --gid-owner` and nft `meta skgid` match).
        #[arg(long)]
        gid: Option<u32>,
    },
    /// The conntrack scenario in the gateway: `load` masquerade + ct mark labels (tcp, udp,
    /// icmp) with counters per mark and direction; `counters` prints `LABEL DIR PACKETS
    /// BYTES`; `ready` waits until a process listens to every conntrack event group; `flood`
    /// opens --count UDP connections LAN -> Internet peer (ports 20000 up, dropped there).
    Conntrack {
        #[arg(long)]
        lab: String,
        #[arg(value_parser = ["load", "counters", "ready", "flood"])]
        action: String,
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        #[arg(long, default_value_t = 10_000)]
        count: u16,
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
    /// Real IPsec (strongSwan charon, userspace ESP in UDP 4500): `up` negotiates the site
    /// tunnel `hq` and a road warrior `rw` behind a NAT, and leaves them running (prints
    /// VICI=, the gateway's vici socket; `down` removes them with the lab); `traffic` sends
    /// rounds through both tunnels; `sas` prints the gateway's CHILD_SAs, one per line:
    /// `CONNECTION UNIQUEID STATE SPI_IN SPI_OUT BYTES_IN PACKETS_IN BYTES_OUT PACKETS_OUT`.
    Ipsec {
        #[arg(long)]
        lab: String,
        #[arg(value_enum)]
        action: IpsecAction,
        /// CHILD_SA rekey interval in seconds (up).
        #[arg(long, default_value_t = 20)]
        rekey: u64,
        /// Rounds of traffic (traffic).
        #[arg(long, default_value_t = 1)]
        repeat: u32,
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
        Cmd::Up {
            lab,
            rules: fw,
            addr: extra,
        } => up_cmd(lab, fw, &extra)?,
        Cmd::Rules {
            lab,
            firewall,
            file,
            action,
        } => rules_cmd(lab, firewall, file, action)?,
        Cmd::Ready {
            lab,
            groups,
            timeout,
        } => ready_cmd(&lab, &groups, timeout)?,
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
        } => traffic_cmd(lab, mix, repeat, esp_flood, spi, payload)?,
        Cmd::Counters {
            lab,
            firewall,
            json,
            all,
            zero,
        } => counters_cmd(lab, firewall, json, all, zero)?,
        Cmd::Send {
            lab,
            kind,
            from,
            src,
            to,
            dst,
            count,
            size,
            reply,
            gid,
        } => send_cmd(lab, kind, from, src, to, dst, count, size, reply, gid)?,
        Cmd::Sink { ns, bind, out } => sink(ns.as_deref(), bind, out.as_deref())?,
        Cmd::Conntrack {
            lab,
            action,
            timeout,
            count,
        } => conntrack_cmd(&lab, &action, timeout, count)?,
        Cmd::TrafgenConf { lab } => {
            let lab = Lab::attach(&lab)?;
            print!("{}", trafgen_conf(&lab)?);
        }
        Cmd::Ipsec {
            lab,
            action,
            rekey,
            repeat,
        } => ipsec_cmd(&Lab::attach(&lab)?, action, rekey, repeat)?,
        Cmd::Ns { lab, role } => {
            let r = parse_role(&role)?;
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

fn up_cmd(lab: Option<String>, fw: Option<Fw>, extra: &[String]) -> Result<()> {
    let lab = match lab {
        Some(p) => Lab::up_named(&p)?,
        // Not the automatic `lf<pid>n<k>` form: `down --stale` would take it for an
        // orphan once this command exits.
        None => Lab::up_named(&format!("lab{}", std::process::id()))?,
    };
    for a in extra {
        let (role, cidr) = a
            .split_once('=')
            .with_context(|| format!("--addr {a:?}: expected ROLE=IP/LEN"))?;
        lab.add_addr(parse_role(role)?, cidr)
            .with_context(|| format!("--addr {a}"))?;
    }
    if let Some(fw) = fw {
        rules::load(&lab, fw.into())?;
    }
    println!("LAB={}", lab.prefix());
    println!("INET_NS={}", lab.inet());
    println!("GW_NS={}", lab.gw());
    println!("LAN_NS={}", lab.lan());
    lab.keep();
    Ok(())
}

fn ready_cmd(lab: &str, groups: &[u16], timeout: u64) -> Result<()> {
    let lab = Lab::attach(lab)?;
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
    Ok(())
}

fn ipsec_cmd(lab: &Lab, action: IpsecAction, rekey: u64, repeat: u32) -> Result<()> {
    use labelflow_tests::ipsec_lab;
    match action {
        IpsecAction::Up => {
            let vici = ipsec_lab::up_kept(lab, Duration::from_secs(rekey))?;
            println!("VICI={}", vici.display());
        }
        IpsecAction::Traffic => print!("{}", ipsec_lab::rounds(lab, repeat)?),
        IpsecAction::Sas => print!("{}", ipsec_lab::sas_text(lab)?),
    }
    Ok(())
}

fn parse_role(s: &str) -> Result<Role> {
    Role::parse(s).with_context(|| format!("role must be inet, gw or lan, not {s:?}"))
}

/// `IP`, `IP:PORT` or `[IPv6]:PORT` (port 0 when absent).
fn parse_endpoint(s: &str) -> Result<std::net::SocketAddr> {
    if let Ok(sa) = s.parse() {
        return Ok(sa);
    }
    let ip: IpAddr = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .with_context(|| format!("{s:?}: expected IP, IP:PORT or [IPv6]:PORT"))?;
    Ok(std::net::SocketAddr::new(ip, 0))
}

fn parse_spi(s: &str) -> Result<u32> {
    let v = match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    v.with_context(|| format!("bad SPI {s:?}"))
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

/// `rules`: the lab's own ruleset, or an example's files, loaded, detached, unloaded or shown.
fn rules_cmd(
    lab: Option<String>,
    firewall: Fw,
    file: Vec<std::path::PathBuf>,
    action: RulesAction,
) -> Result<()> {
    let fw: Firewall = firewall.into();
    if !file.is_empty() {
        let Some(prefix) = lab else {
            bail!("--lab is required for {action:?}")
        };
        let lab = Lab::attach(&prefix)?;
        match action {
            RulesAction::Load => ruleset::load_files(&lab, fw, &file)?,
            RulesAction::Detach => ruleset::detach_files(&lab, fw, &file)?,
            RulesAction::Unload | RulesAction::Show => {
                bail!("{action:?} is for the lab's own ruleset: leave out --file")
            }
        }
        return Ok(());
    }
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
    Ok(())
}

/// `traffic`: an ESP flood, or rounds of a traffic mix, with what was sent and received.
fn traffic_cmd(
    lab: String,
    mix: MixName,
    repeat: u32,
    esp_flood: Option<u32>,
    spi: Vec<String>,
    payload: usize,
) -> Result<()> {
    let lab = Lab::attach(&lab)?;
    if let Some(n) = esp_flood {
        let spis = spi
            .iter()
            .map(|s| parse_spi(s))
            .collect::<Result<Vec<_>>>()?;
        let per_spi = n / u32::try_from(spis.len().max(1)).unwrap_or(1);
        let sent = traffic::esp(&lab, IpAddr::V4(addr::GW_WAN_V4), &spis, per_spi, payload)?;
        println!("esp sent {} {}", sent.packets, sent.bytes);
        return Ok(());
    }
    let mix = match mix {
        MixName::Standard => traffic::Mix::standard(),
        MixName::Exact => traffic::Mix::exact(),
        MixName::Ipsec => {
            let sas = tunnel::TunnelSas::default();
            let mut total = tunnel::IpsecMixReport::default();
            for _ in 0..repeat {
                let r = tunnel::run_ipsec_mix(&lab, &traffic::Mix::standard(), &sas)?;
                total.tunnel.inner_in += r.tunnel.inner_in;
                total.tunnel.inner_out += r.tunnel.inner_out;
                total.tunnel.esp_in += r.tunnel.esp_in;
                total.tunnel.esp_out += r.tunnel.esp_out;
                total.vpn_udp += r.vpn_udp;
                total.other_udp += r.other_udp;
            }
            let t = &total.tunnel;
            for (what, c) in [
                ("tunnel inner in", t.inner_in),
                ("tunnel inner out", t.inner_out),
                ("tunnel esp in", t.esp_in),
                ("tunnel esp out", t.esp_out),
                ("vpn-udp received", total.vpn_udp),
                ("other-udp received", total.other_udp),
            ] {
                println!("{what} {} {}", c.packets, c.bytes);
            }
            return Ok(());
        }
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
    Ok(())
}

/// `counters`: the kernel's per-label (or every commented) counter, as text or JSON.
fn counters_cmd(lab: String, firewall: Fw, json: bool, all: bool, zero: bool) -> Result<()> {
    let lab = Lab::attach(&lab)?;
    let counters = if all {
        ruleset::all_counters(&lab, firewall.into(), zero)?
    } else {
        rules::counters(&lab, firewall.into())?
    };
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
    Ok(())
}

/// `send`: UDP datagrams, one TCP exchange or pings between two roles, checked on arrival.
#[allow(clippy::too_many_arguments)]
fn send_cmd(
    lab: String,
    kind: SendKind,
    from: String,
    src: String,
    to: Option<String>,
    dst: String,
    count: u16,
    size: usize,
    reply: usize,
    gid: Option<u32>,
) -> Result<()> {
    let lab = Lab::attach(&lab)?;
    let from = parse_role(&from)?;
    let sender = match gid {
        Some(g) => Sender::with_egid(from, g),
        None => Sender::from(from),
    };
    let src = parse_endpoint(&src)?;
    let dst = parse_endpoint(&dst)?;
    let to = to.as_deref().map(parse_role).transpose()?;
    let need_to = || to.with_context(|| format!("{kind:?} needs --to ROLE (the receiving side)"));
    match kind {
        SendKind::Udp => {
            let got = traffic::udp(&lab, sender, src, need_to()?, dst, count.into(), size)?;
            println!("udp sent {count} received {}", got.packets);
            if got.packets < u64::from(count) {
                bail!("udp: {} of {count} datagrams arrived", got.packets);
            }
        }
        SendKind::Tcp => {
            if dst.port() == 0 {
                bail!("tcp needs a destination port (--dst IP:PORT)");
            }
            let (up, down) = traffic::tcp_exchange(
                &lab,
                &TcpExchange {
                    from: sender,
                    client: src.ip(),
                    to: need_to()?,
                    server: dst,
                    up: size,
                    down: reply,
                    mss: None,
                },
            )?;
            println!("tcp up {up} down {down}");
            if up != size || down != reply {
                bail!("tcp: sent {size} up and {reply} down, received {up} and {down}");
            }
        }
        SendKind::Ping => {
            let (sent, replies) = traffic::ping(&lab, sender, src.ip(), dst.ip(), count, size)?;
            println!("ping sent {sent} replies {replies}");
            if replies < sent {
                bail!("ping: {replies} of {sent} echo requests answered");
            }
        }
    }
    Ok(())
}
