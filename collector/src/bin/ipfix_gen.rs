//! Benchmark stream tool: `generate` writes an IPFIX stream file (each datagram prefixed by
//! its length as u16 big-endian), `replay` sends it to a collector at a given record rate,
//! optionally several times over (`--repeat`).
//!
//! ```text
//! labelflow-ipfix-gen generate --records 1000000 --out stream.bin
//! labelflow-ipfix-gen replay --file stream.bin --to 127.0.0.1:4739 --rate 2000000
//! ```

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
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
        /// Send the data datagrams this many times in a row (the template once), for a longer
        /// stream than the file holds. Sequence numbers restart with every pass: nfcapd does
        /// not mind, labelflow-collector counts one sequence reset per pass after the first.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
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

/// Datagrams per sendmmsg(2) call. With one send per datagram the syscall itself capped the
/// sender near 200k datagrams/s (~4.5M records/s) on a 2-core VM, and nfcapd kept up with
/// that. Past about 16 the gain flattens: what is left is the kernel's per-datagram path
/// (on loopback including the delivery to the receiving socket), not the syscall.
const BATCH: usize = 64;

/// Splits a stream file into its datagrams (each prefixed by its u16 big-endian length).
fn datagrams(data: &[u8]) -> anyhow::Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let head = data
            .get(at..at + 2)
            .context("truncated stream: partial length prefix")?;
        let n = usize::from(u16::from_be_bytes([head[0], head[1]]));
        let d = data
            .get(at + 2..at + 2 + n)
            .context("truncated stream: partial datagram")?;
        out.push(d);
        at += 2 + n;
    }
    Ok(out)
}

/// Field lengths of a template, `None` for a variable-length field (RFC 7011 §7).
type Layout = Vec<Option<u16>>;

/// Number of data records in one IPFIX message, learning templates from it on the way.
///
/// The offered rate is only meaningful if it counts what was really sent, and the last datagram
/// of a stream usually holds fewer records than the others, so the sets are walked rather than
/// a per-datagram count assumed.
fn data_records(msg: &[u8], templates: &mut HashMap<u16, Layout>) -> anyhow::Result<u64> {
    let be16 = |b: &[u8], at: usize| -> anyhow::Result<u16> {
        let s = b.get(at..at + 2).context("truncated IPFIX message")?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    };
    anyhow::ensure!(be16(msg, 0)? == 10, "not an IPFIX message");
    let end = usize::from(be16(msg, 2)?).min(msg.len());
    let mut records = 0u64;
    let mut at = 16;
    while at + 4 <= end {
        let (id, len) = (be16(msg, at)?, usize::from(be16(msg, at + 2)?));
        anyhow::ensure!(len >= 4 && at + len <= end, "bad set length");
        let set = &msg[at + 4..at + len];
        match id {
            // Template set (2) and options template set (3): only the field lengths matter.
            2 | 3 => {
                let mut p = 0;
                while p + 4 <= set.len() {
                    let tid = be16(set, p)?;
                    let count = usize::from(be16(set, p + 2)?);
                    p += if id == 3 { 6 } else { 4 };
                    let mut layout = Layout::with_capacity(count);
                    for _ in 0..count {
                        let ie = be16(set, p)?;
                        let flen = be16(set, p + 2)?;
                        // The enterprise bit adds a 4-byte enterprise number.
                        p += if ie & 0x8000 != 0 { 8 } else { 4 };
                        layout.push((flen != 0xffff).then_some(flen));
                    }
                    templates.insert(tid, layout);
                }
            }
            256.. => {
                let layout = templates
                    .get(&id)
                    .with_context(|| format!("data set for unknown template {id}"))?;
                // Padding at the end of a set is shorter than the shortest record.
                let min: usize = layout.iter().map(|f| usize::from(f.unwrap_or(1))).sum();
                anyhow::ensure!(min > 0, "template {id} has zero-length records");
                let mut p = 0;
                while p + min <= set.len() {
                    for f in layout {
                        p += match f {
                            Some(n) => usize::from(*n),
                            None => match *set.get(p).context("truncated record")? {
                                255 => 3 + usize::from(be16(set, p + 1)?),
                                n => 1 + usize::from(n),
                            },
                        };
                    }
                    anyhow::ensure!(p <= set.len(), "record overruns its set");
                    records += 1;
                }
            }
            _ => {}
        }
        at += len;
    }
    Ok(records)
}

/// Sends a prefix of `msgs` with one sendmmsg(2) call and returns how many were sent (at least
/// one); retries while the kernel has no room.
fn send_some(sock: &UdpSocket, msgs: &mut [libc::mmsghdr]) -> io::Result<usize> {
    debug_assert!(
        !msgs.is_empty(),
        "sendmmsg(2) of nothing returns 0, not progress"
    );
    let len = libc::c_uint::try_from(msgs.len()).unwrap_or(libc::c_uint::MAX);
    loop {
        // SAFETY: every header points at one live iovec, which points into the stream buffer;
        // both outlive the call, and the kernel writes only `msg_len` of the headers passed.
        let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), len, 0) };
        if n > 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // sendmmsg(2) fails only when its first message does, and a failed message is not
            // sent, so retrying resends nothing. ENOBUFS/EAGAIN: device or socket queue full.
            // ECONNREFUSED: an ICMP port unreachable for an earlier datagram, reported on this
            // connected socket; a receiver that is not listening shows up as loss at the
            // receiver, as it would for a real exporter, not as a failed replay.
            Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR | libc::ECONNREFUSED) => {
                std::thread::yield_now()
            }
            _ => return Err(e),
        }
    }
}

fn replay(file: &PathBuf, to: SocketAddr, rate: u64, repeat: u32) -> anyhow::Result<()> {
    let data = std::fs::read(file).with_context(|| file.display().to_string())?;
    let dgrams = datagrams(&data)?;
    let mut templates = HashMap::new();
    let counts = dgrams
        .iter()
        .map(|d| data_records(d, &mut templates))
        .collect::<anyhow::Result<Vec<u64>>>()?;
    let (template, body) = dgrams.split_first().context("empty stream")?;
    let counts = &counts[1..];

    // Connected, so the messages need no per-message address and the kernel skips the route
    // lookup per datagram.
    let sock = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    sock.connect(to)?;
    // The template first, and time for it to be taken in.
    sock.send(template)?;
    std::thread::sleep(Duration::from_millis(200));

    // One iovec and one mmsghdr per datagram, built once: a pass over the stream is then a
    // walk over slices of `hdrs`. `iov` is never resized, so the pointers into it stay valid.
    let mut iov: Vec<libc::iovec> = body
        .iter()
        .map(|d| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: mmsghdr is plain data (pointers and integers); all zeroes is valid.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();

    let start = Instant::now();
    let (mut sent_datagrams, mut sent_records) = (0u64, 0u64);
    for _ in 0..repeat {
        let mut at = 0;
        while at < hdrs.len() {
            let end = (at + BATCH).min(hdrs.len());
            let n = send_some(&sock, &mut hdrs[at..end])?;
            sent_datagrams += n as u64;
            sent_records += counts[at..at + n].iter().sum::<u64>();
            at += n;
            // Paced per call: the batch went out at once, the next one waits until the records
            // sent so far are due at the target rate. A batch is ~1400 records, under 100 µs
            // at 16M records/s, so the stream stays smooth on the receiver's time scale.
            if rate > 0 {
                let due = Duration::from_secs_f64(sent_records as f64 / rate as f64);
                while start.elapsed() < due {
                    // Yield rather than spin bare, so a receiver thread sharing this core runs.
                    std::thread::yield_now();
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "datagrams={} records={} seconds={:.3} offered_rate={:.0}",
        sent_datagrams,
        sent_records,
        secs,
        sent_records as f64 / secs
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Generate { records, out } => generate(records, &out),
        Cmd::Replay {
            file,
            to,
            rate,
            repeat,
        } => replay(&file, to, rate, repeat),
    }
}
