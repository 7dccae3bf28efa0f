//! Benchmark stream tool: `generate` writes an IPFIX stream file (each datagram prefixed by
//! its length as u16 big-endian), `replay` sends it to a collector at a given record rate.
//!
//! ```text
//! labelflow-ipfix-gen generate --records 1000000 --out stream.bin
//! labelflow-ipfix-gen replay --file stream.bin --to 127.0.0.1:4739 --rate 2000000
//! ```

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Records per datagram (as the nfcapd measurement in LAB.md).
const PER_DATAGRAM: usize = 22;
const TEMPLATE_ID: u16 = 400;
const LABELS: [&str; 4] = ["esp", "decrypted", "app", "other"];

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    Generate {
        #[arg(long, default_value_t = 1_000_000)]
        records: usize,
        #[arg(long)]
        out: PathBuf,
    },
    Replay {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        to: SocketAddr,
        /// Records per second; 0 sends as fast as possible.
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
}

fn template(export: u32) -> Vec<u8> {
    // sourceIPv4Address, destinationIPv4Address, protocolIdentifier, sourceTransportPort,
    // destinationTransportPort, octetDeltaCount(8), packetDeltaCount(8),
    // flowStartMilliseconds, flowEndMilliseconds, observationPointId, applicationName(var)
    let fields: [(u16, u16); 11] = [
        (8, 4),
        (12, 4),
        (4, 1),
        (7, 2),
        (11, 2),
        (1, 8),
        (2, 8),
        (152, 8),
        (153, 8),
        (138, 4),
        (96, 0xffff),
    ];
    let mut m = header(export, 0);
    m.extend_from_slice(&2u16.to_be_bytes());
    m.extend_from_slice(&((8 + 4 * fields.len()) as u16).to_be_bytes());
    m.extend_from_slice(&TEMPLATE_ID.to_be_bytes());
    m.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    for (ie, len) in fields {
        m.extend_from_slice(&ie.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
    }
    finish(m)
}

fn header(export: u32, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(1400);
    m.extend_from_slice(&10u16.to_be_bytes());
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&export.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&1u32.to_be_bytes());
    m
}

fn finish(mut m: Vec<u8>) -> Vec<u8> {
    let n = m.len() as u16;
    m[2..4].copy_from_slice(&n.to_be_bytes());
    m
}

fn generate(records: usize, out: &PathBuf) -> anyhow::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as u32;
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(out).with_context(|| out.display().to_string())?,
    );
    let mut put = |d: &[u8]| -> std::io::Result<()> {
        f.write_all(&(d.len() as u16).to_be_bytes())?;
        f.write_all(d)
    };
    let t = template(now);
    put(&t)?;
    let base_ms = u64::from(now - 600) * 1000;
    let mut i = 0usize;
    let mut seq = 0u32;
    while i < records {
        let n = PER_DATAGRAM.min(records - i);
        let mut m = header(now, seq);
        let set = m.len();
        m.extend_from_slice(&TEMPLATE_ID.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        for k in i..i + n {
            let host = (k % 250) as u8 + 1;
            m.extend_from_slice(&[192, 168, (k / 250 % 4) as u8, host]);
            m.extend_from_slice(&[198, 51, 100, (k % 17) as u8]);
            m.push(if k % 3 == 0 { 17 } else { 6 });
            m.extend_from_slice(&(30000 + (k % 20000) as u16).to_be_bytes());
            m.extend_from_slice(&[443u16, 53, 80, 22][k % 4].to_be_bytes());
            m.extend_from_slice(&(100 + (k as u64 % 1400)).to_be_bytes());
            m.extend_from_slice(&(1 + (k as u64 % 10)).to_be_bytes());
            let start = base_ms + (k as u64 % 540_000);
            m.extend_from_slice(&start.to_be_bytes());
            m.extend_from_slice(&(start + (k as u64 % 90_000)).to_be_bytes());
            let g = k % LABELS.len();
            m.extend_from_slice(&(g as u32 + 1).to_be_bytes());
            m.push(LABELS[g].len() as u8);
            m.extend_from_slice(LABELS[g].as_bytes());
        }
        let len = (m.len() - set) as u16;
        m[set + 2..set + 4].copy_from_slice(&len.to_be_bytes());
        put(&finish(m))?;
        seq = seq.wrapping_add(n as u32);
        i += n;
    }
    f.flush()?;
    Ok(())
}

fn replay(file: &PathBuf, to: SocketAddr, rate: u64) -> anyhow::Result<()> {
    let data = std::fs::read(file)?;
    let mut dgrams = Vec::new();
    let mut at = 0;
    while at + 2 <= data.len() {
        let n = usize::from(u16::from_be_bytes([data[at], data[at + 1]]));
        dgrams.push(&data[at + 2..at + 2 + n]);
        at += 2 + n;
    }
    let sock = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    // The template first, and time for it to be taken in.
    sock.send_to(dgrams[0], to)?;
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    let mut sent_records = 0u64;
    for d in &dgrams[1..] {
        loop {
            match sock.send_to(d, to) {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => std::thread::yield_now(),
                Err(e) => return Err(e.into()),
            }
        }
        sent_records += PER_DATAGRAM as u64;
        if rate > 0 {
            let due = Duration::from_secs_f64(sent_records as f64 / rate as f64);
            while start.elapsed() < due {
                std::hint::spin_loop();
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "datagrams={} records={} seconds={:.3} offered_rate={:.0}",
        dgrams.len() - 1,
        sent_records,
        secs,
        sent_records as f64 / secs
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Generate { records, out } => generate(records, &out),
        Cmd::Replay { file, to, rate } => replay(&file, to, rate),
    }
}
