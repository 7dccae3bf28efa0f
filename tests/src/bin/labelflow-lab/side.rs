//! The lab's side commands: the IPFIX sink (`sink`) and the conntrack scenario
//! (`conntrack load|counters|flood|ready`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use labelflow_tests::lab::{addr, Lab};
use labelflow_tests::rules;

pub(crate) fn sink(
    ns: Option<&str>,
    bind: std::net::SocketAddr,
    out: Option<&std::path::Path>,
) -> Result<()> {
    use labelflow_tests::{ipfix::ExportLog, netns};
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, std::sync::Arc::clone(&stop))
            .with_context(|| format!("signal handler for {sig}"))?;
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
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
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

pub(crate) fn conntrack_cmd(lab: &str, action: &str, timeout: u64, count: u16) -> Result<()> {
    use labelflow_tests::conntrack;
    let lab = Lab::attach(lab)?;
    match action {
        "load" => conntrack::load(&lab)?,
        "counters" => {
            for ((label, dir), c) in conntrack::counters(&lab)? {
                println!("{label} {dir} {} {}", c.packets, c.bytes);
            }
        }
        "flood" => {
            let ports = 20_000..20_000u16.saturating_add(count);
            conntrack::sink_udp(&lab, ports.clone())?;
            let (src, dst) = (addr::LAN_V4.into(), addr::INET_V4.into());
            println!("{}", conntrack::udp_flood(&lab, src, dst, ports, 64)?);
        }
        _ => {
            let deadline = Instant::now() + Duration::from_secs(timeout);
            while !conntrack::events_subscribed(&lab)? {
                if Instant::now() >= deadline {
                    bail!("no conntrack event listener within {timeout}s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    Ok(())
}
