//! `labelflow-gen-capture`: writes a deterministic Ethernet pcap for replay benchmarks.
//!
//! Mixed TCP/UDP/ICMP/ESP over IPv4 and IPv6, `--flows` distinct flows, `--packets` packets
//! spread round-robin over the flows (so every flow stays live for the whole capture), with
//! per-flow packet sizes. The same arguments always give the same bytes.
//!
//! ```text
//! labelflow-gen-capture --packets 2000000 --flows 5000 --out /tmp/mix.pcap
//! ```

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "labelflow-gen-capture",
    about = "Generate a mixed pcap for replay benchmarks"
)]
struct Cli {
    /// Packets to write.
    #[arg(long, default_value_t = 2_000_000)]
    packets: u64,
    /// Distinct flows.
    #[arg(long, default_value_t = 5000)]
    flows: u64,
    /// Capture duration in seconds (timestamps spread evenly).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
}

/// One synthetic flow.
#[derive(Debug, Clone, Copy)]
struct FlowSpec {
    v6: bool,
    proto: u8,
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
    /// IP total length of every packet of the flow.
    ip_len: u16,
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const ESP: u8 = 50;

/// SplitMix64: a fixed, seedable mixer, so the capture never changes between runs.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn flow_spec(i: u64) -> FlowSpec {
    let r = mix64(i);
    let v6 = r.is_multiple_of(4);
    let proto = match (r >> 8) % 20 {
        0..=9 => TCP,
        10..=14 => UDP,
        15..=16 => {
            if v6 {
                ICMPV6
            } else {
                ICMP
            }
        }
        _ => ESP,
    };
    let header = if v6 { 40 } else { 20 };
    let min = header + 28;
    let ip_len = (min + (r >> 20) % (1400 - min)) as u16;
    FlowSpec {
        v6,
        proto,
        // Distinct per flow index: the index itself is in the address pair.
        src: 0x0a00_0000 | (i as u32 & 0x00ff_ffff),
        dst: 0xc633_6400 | ((r >> 40) as u32 & 0xff),
        sport: 1024 + ((i >> 24) as u16 & 0x3fff) + ((r >> 48) as u16 & 0x3ff),
        dport: [80, 443, 53, 123, 8080, 5001][(r >> 12) as usize % 6],
        ip_len,
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(
        cli.flows > 0 && cli.packets > 0,
        "--flows and --packets must be positive"
    );
    let file = File::create(&cli.out).with_context(|| format!("create {}", cli.out.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    // pcap global header: magic, version 2.4, thiszone, sigfigs, snaplen, LINKTYPE_ETHERNET.
    w.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
    w.write_all(&2u16.to_le_bytes())?;
    w.write_all(&4u16.to_le_bytes())?;
    w.write_all(&0i32.to_le_bytes())?;
    w.write_all(&0u32.to_le_bytes())?;
    w.write_all(&65_535u32.to_le_bytes())?;
    w.write_all(&1u32.to_le_bytes())?;

    let start_us: u64 = 1_700_000_000 * 1_000_000;
    let span_us = cli.seconds * 1_000_000;
    let specs: Vec<FlowSpec> = (0..cli.flows).map(flow_spec).collect();
    let mut seen = vec![0u32; specs.len()];
    let mut frame = Vec::with_capacity(1600);
    let mut bytes = 0u64;
    for n in 0..cli.packets {
        let fi = (n % cli.flows) as usize;
        let spec = specs[fi];
        let seq = seen[fi];
        seen[fi] += 1;
        frame.clear();
        build_frame(&mut frame, &spec, seq);
        let ts = start_us + n * span_us / cli.packets;
        w.write_all(&((ts / 1_000_000) as u32).to_le_bytes())?;
        w.write_all(&((ts % 1_000_000) as u32).to_le_bytes())?;
        w.write_all(&(frame.len() as u32).to_le_bytes())?;
        w.write_all(&(frame.len() as u32).to_le_bytes())?;
        w.write_all(&frame)?;
        bytes += u64::from(spec.ip_len);
    }
    w.flush()?;
    eprintln!(
        "wrote {} packets, {} flows, {} IP bytes to {}",
        cli.packets,
        cli.flows,
        bytes,
        cli.out.display()
    );
    Ok(())
}

fn build_frame(f: &mut Vec<u8>, s: &FlowSpec, seq: u32) {
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(if s.v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
    let ip_start = f.len();
    let header = if s.v6 { 40 } else { 20 };
    let l4_len = usize::from(s.ip_len) - header;
    if s.v6 {
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(l4_len as u16).to_be_bytes());
        f.push(s.proto);
        f.push(64);
        f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0x10, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&s.src.to_be_bytes());
        f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0x20, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&s.dst.to_be_bytes());
    } else {
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&s.ip_len.to_be_bytes());
        f.extend_from_slice(&(seq as u16).to_be_bytes());
        f.extend_from_slice(&[0x40, 0, 64, s.proto, 0, 0]);
        f.extend_from_slice(&s.src.to_be_bytes());
        f.extend_from_slice(&s.dst.to_be_bytes());
        let sum = labelflow_tests::traffic::inet_checksum(&f[ip_start..ip_start + 20]);
        f[ip_start + 10..ip_start + 12].copy_from_slice(&sum.to_be_bytes());
    }
    let l4_start = f.len();
    match s.proto {
        TCP => {
            f.extend_from_slice(&s.sport.to_be_bytes());
            f.extend_from_slice(&s.dport.to_be_bytes());
            f.extend_from_slice(&seq.wrapping_mul(1000).to_be_bytes());
            f.extend_from_slice(&0u32.to_be_bytes());
            // Data offset 5 words; SYN on the first packet, then ACK|PSH.
            let flags: u8 = if seq == 0 { 0x02 } else { 0x18 };
            f.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        }
        UDP => {
            f.extend_from_slice(&s.sport.to_be_bytes());
            f.extend_from_slice(&s.dport.to_be_bytes());
            f.extend_from_slice(&(l4_len as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
        }
        ESP => {
            f.extend_from_slice(&(0x1000_0000 | s.src).to_be_bytes());
            f.extend_from_slice(&(seq + 1).to_be_bytes());
        }
        _ => {
            // Echo request (ICMP type 8 / ICMPv6 type 128), identifier from the flow.
            f.extend_from_slice(&[if s.v6 { 128 } else { 8 }, 0, 0, 0]);
            f.extend_from_slice(&s.sport.to_be_bytes());
            f.extend_from_slice(&(seq as u16).to_be_bytes());
        }
    }
    let fill = l4_len - (f.len() - l4_start);
    f.extend(std::iter::repeat_n(0xabu8, fill));
}
