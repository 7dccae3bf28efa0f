//! Benchmark stream tool: `generate` writes an IPFIX stream file (each datagram prefixed by
//! its length as u16 big-endian), `record` writes what another exporter sends (softflowd,
//! nfreplay) into the same format, `replay` sends a stream file to a collector at a given
//! record rate, optionally several times over (`--repeat`) and from several exporters at once
//! (`--exporters`).
//!
//! Stream shapes (`generate --shape`, seeded with `--seed`):
//! - `live`: four labels, a few hundred hosts and ports, flows of at most 90 s ending in the
//!   last ten minutes: most records fall in the same few buckets.
//! - `random`: high-cardinality keys: random IPv4 addresses and ports, interface indexes from
//!   a million (tens of thousands of exporters' worth of interfaces), 64 observation points,
//!   16 labels; flows of at most 90 s ending in the last ten minutes.
//! - `backlog`: the same random keys, flow ends spread evenly over `--span` seconds of flow
//!   time in file order (default an hour per million records: sent at 1M records/s, an hour
//!   of flow time per second, as a replayed capture or an exporter flushing after an outage
//!   sends it), flows of up to 5 minutes.
//!
//! On loopback the sending core also carries each datagram up the receive path to the
//! receiving socket, so the sender tops out long before a fast receiver does (~280k
//! datagrams/s here, one `sendmmsg` per 64). `replay` therefore sends runs of equal-length
//! datagrams as one UDP GSO message (`UDP_SEGMENT`, Linux 4.18+): the kernel splits it back
//! into the same datagrams before the receiving socket, which sees no difference, and the
//! per-datagram routing and IP work is done once per run (~660k datagrams/s here).
//! `--no-gso` sends datagram by datagram.
//!
//! ```text
//! labelflow-ipfix-gen generate --records 1000000 --out stream.bin
//! labelflow-ipfix-gen generate --records 1000000 --shape backlog --seed 7 --out backlog.bin
//! labelflow-ipfix-gen replay --file stream.bin --to 127.0.0.1:4739 --rate 2000000
//! labelflow-ipfix-gen replay --file stream.bin --to 127.0.0.1:4739 --exporters 8 --no-gso
//! labelflow-ipfix-gen record --listen 127.0.0.1:9995 --out softflowd.bin --idle 2s
//! ```

#[path = "shared/stream.rs"]
mod stream;

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

/// Records per datagram: 22 as nfcapd was first measured; the random shapes' records are
/// longer (random label names of 6 octets), 20 of them fill a 1400-octet MTU the same way.
const PER_DATAGRAM: usize = 22;
const PER_DATAGRAM_RANDOM: usize = 20;
const TEMPLATE_ID: u16 = 400;
const LABELS: [&str; 4] = ["esp", "decrypted", "app", "other"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Shape {
    Live,
    Random,
    Backlog,
}

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
        #[arg(long, value_enum, default_value = "live")]
        shape: Shape,
        /// Seed of the random shapes (the same seed always gives the same records, apart
        /// from times, which are relative to when the file is generated).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Seconds of flow time the backlog shape spreads its records over (default: 3600
        /// per million records).
        #[arg(long)]
        span: Option<u64>,
    },
    /// Write the datagrams arriving on a UDP socket to a stream file, until none has come for
    /// `--idle` (after the first) or `--max` arrived: a stream from another exporter, to
    /// replay at controlled rates. The first datagram must hold the template(s).
    Record {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        idle: Duration,
        /// Bytes of receive buffer (SO_RCVBUFFORCE as root), so a fast exporter is not cut.
        #[arg(long, default_value_t = 64 << 20)]
        rcvbuf: usize,
        #[arg(long, default_value_t = u64::MAX)]
        max: u64,
    },
    /// Print the datagrams and flow records of a stream file (as `replay` counts them).
    Count {
        #[arg(long)]
        file: PathBuf,
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
        /// Send datagram by datagram instead of in UDP segmentation offload (GSO) runs.
        #[arg(long)]
        no_gso: bool,
        /// Send the stream from this many exporters at once, each from its own loopback
        /// source address (127.0.0.1, 127.0.0.2, ...; loopback targets only), each with the
        /// template first, their sends interleaved call by call.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=250))]
        exporters: u8,
    },
}

fn template(export: u32) -> Vec<u8> {
    // sourceIPv4Address, destinationIPv4Address, protocolIdentifier, sourceTransportPort,
    // destinationTransportPort, octetDeltaCount(8), packetDeltaCount(8),
    // flowStartMilliseconds, flowEndMilliseconds, observationPointId, ingressInterface,
    // egressInterface, applicationName(var)
    let fields: [(u16, u16); 13] = [
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
        (10, 4),
        (14, 4),
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

/// SplitMix64 (Steele, Lea, Flood 2014): small, fast, and the same numbers for a seed on
/// every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), near enough for a benchmark.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One flow record in the template's field order.
struct Rec<'a> {
    src: [u8; 4],
    dst: [u8; 4],
    protocol: u8,
    ports: (u16, u16),
    octets: u64,
    packets: u64,
    start_ms: u64,
    end_ms: u64,
    point: u32,
    interfaces: (u32, u32),
    label: &'a [u8],
}

impl Rec<'_> {
    fn put(&self, m: &mut Vec<u8>) {
        m.extend_from_slice(&self.src);
        m.extend_from_slice(&self.dst);
        m.push(self.protocol);
        m.extend_from_slice(&self.ports.0.to_be_bytes());
        m.extend_from_slice(&self.ports.1.to_be_bytes());
        m.extend_from_slice(&self.octets.to_be_bytes());
        m.extend_from_slice(&self.packets.to_be_bytes());
        m.extend_from_slice(&self.start_ms.to_be_bytes());
        m.extend_from_slice(&self.end_ms.to_be_bytes());
        m.extend_from_slice(&self.point.to_be_bytes());
        m.extend_from_slice(&self.interfaces.0.to_be_bytes());
        m.extend_from_slice(&self.interfaces.1.to_be_bytes());
        m.push(self.label.len() as u8);
        m.extend_from_slice(self.label);
    }
}

/// Labels of the random shapes: all of one length, so that every full datagram has the same
/// length and the replay can send runs of them with UDP segmentation offload.
const RANDOM_LABELS: [&[u8; 6]; 16] = [
    b"app-00", b"app-01", b"app-02", b"app-03", b"app-04", b"app-05", b"app-06", b"app-07",
    b"app-08", b"app-09", b"app-10", b"app-11", b"app-12", b"app-13", b"app-14", b"app-15",
];

/// Record `k` of the live shape; `i` is the index of the datagram's first record.
fn live_record(k: usize, i: usize, base_ms: u64) -> Rec<'static> {
    let start = base_ms + (k as u64 % 540_000);
    // By position in the datagram, so that every full datagram has the same length (label
    // names differ in length).
    let g = (k - i) % LABELS.len();
    Rec {
        src: [192, 168, (k / 250 % 4) as u8, (k % 250) as u8 + 1],
        dst: [198, 51, 100, (k % 17) as u8],
        protocol: if k.is_multiple_of(3) { 17 } else { 6 },
        ports: (30000 + (k % 20000) as u16, [443u16, 53, 80, 22][k % 4]),
        octets: 100 + (k as u64 % 1400),
        packets: 1 + (k as u64 % 10),
        start_ms: start,
        end_ms: start + (k as u64 % 90_000),
        point: g as u32 + 1,
        interfaces: (1, 2),
        label: LABELS[g].as_bytes(),
    }
}

/// A record of random keys ending at `end_ms` and lasting up to `max_ms`.
fn random_record(rng: &mut Rng, end_ms: u64, max_ms: u64) -> Rec<'static> {
    let a = rng.next();
    let b = rng.next();
    let packets = 1 + rng.below(1000);
    let duration = rng.below(max_ms + 1);
    Rec {
        src: (a as u32).to_be_bytes(),
        dst: ((a >> 32) as u32).to_be_bytes(),
        protocol: [6, 17, 6, 17, 6, 1, 50, 17][(b & 7) as usize],
        ports: ((b >> 8) as u16, (b >> 24) as u16),
        octets: packets * (40 + rng.below(1461)),
        packets,
        start_ms: end_ms.saturating_sub(duration),
        end_ms,
        point: 1 + ((b >> 40) & 63) as u32,
        interfaces: (
            1 + rng.below(1_000_000) as u32,
            1 + rng.below(1_000_000) as u32,
        ),
        label: RANDOM_LABELS[((b >> 48) & 15) as usize],
    }
}

fn generate(
    records: usize,
    out: &PathBuf,
    shape: Shape,
    seed: u64,
    span: Option<u64>,
) -> anyhow::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as u32;
    let now_ms = u64::from(now) * 1000;
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
    let span_ms = span.unwrap_or((records as u64).div_ceil(1_000_000).max(1) * 3600) * 1000;
    // Backlog records end from `span` before the last ten minutes up to them.
    let backlog_base = now_ms.saturating_sub(600_000 + span_ms);
    let per = if shape == Shape::Live {
        PER_DATAGRAM
    } else {
        PER_DATAGRAM_RANDOM
    };
    let mut rng = Rng(seed);
    let mut i = 0usize;
    let mut seq = 0u32;
    while i < records {
        let n = per.min(records - i);
        let mut m = header(now, seq);
        let set = m.len();
        m.extend_from_slice(&TEMPLATE_ID.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        for k in i..i + n {
            let r = match shape {
                Shape::Live => live_record(k, i, base_ms),
                Shape::Random => {
                    let end = now_ms - rng.below(600_000);
                    random_record(&mut rng, end, 90_000)
                }
                Shape::Backlog => {
                    let end = backlog_base + k as u64 * span_ms / records as u64;
                    random_record(&mut rng, end, 300_000)
                }
            };
            r.put(&mut m);
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

/// Writes the datagrams arriving on `listen` to `out` in the stream format.
fn record(
    listen: SocketAddr,
    out: &PathBuf,
    idle: Duration,
    rcvbuf: usize,
    max: u64,
) -> anyhow::Result<()> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(listen), Type::DGRAM, None)?;
    s.set_recv_buffer_size(rcvbuf)?;
    let v = libc::c_int::try_from(rcvbuf).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid socket and a pointer to a c_int that outlives the call. Failure (not
    // root) leaves the buffer set above, capped by net.core.rmem_max.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    s.bind(&listen.into())
        .with_context(|| format!("binding {listen}"))?;
    let sock: UdpSocket = s.into();
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(out).with_context(|| out.display().to_string())?,
    );
    let mut buf = vec![0u8; 65536];
    let (mut n, mut bytes) = (0u64, 0u64);
    // No timeout until the first datagram: the exporter may take a while to start.
    while n < max {
        sock.set_read_timeout((n > 0).then_some(idle))?;
        let len = match sock.recv(&mut buf) {
            Ok(len) => len,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(e.into()),
        };
        f.write_all(&(len as u16).to_be_bytes())?;
        f.write_all(&buf[..len])?;
        n += 1;
        bytes += len as u64;
    }
    f.flush()?;
    println!("datagrams={n} bytes={bytes}");
    Ok(())
}

/// Datagrams per sendmmsg(2) call. With one send per datagram the syscall itself capped the
/// sender near 200k datagrams/s (~4.5M records/s) on a 2-core VM, and nfcapd kept up with
/// that. Past about 16 the gain flattens: what is left is the kernel's per-datagram path
/// (on loopback including the delivery to the receiving socket), not the syscall.
const BATCH: usize = 64;

/// `UDP_SEGMENT` (linux/udp.h): the segment size of a UDP GSO send, as a socket option or as
/// a control message of one send (Linux 4.18+).
const UDP_SEGMENT: libc::c_int = 103;
/// At most this many segments per GSO send: `UDP_MAX_SEGMENTS` was 64 until Linux 6.9.
const GSO_SEGMENTS: usize = 64;
/// ... and at most this many payload bytes (an IPv4 datagram's 65,535 less IP and UDP headers).
const GSO_BYTES: usize = 65_507;
/// Field lengths of a template, `None` for a variable-length field (RFC 7011 §7), and whether
/// it is an options template.
type Layout = (Vec<Option<u16>>, bool);

/// Number of flow data records in one IPFIX or NetFlow v9 message, learning templates from it
/// on the way.
///
/// The offered rate is only meaningful if it counts what was really sent, and the last datagram
/// of a stream usually holds fewer records than the others, so the sets are walked rather than
/// a per-datagram count assumed. Records of options templates (a recorded exporter's own
/// statistics) are walked but not counted: receivers count flow records apart from them.
fn data_records(msg: &[u8], templates: &mut HashMap<u16, Layout>) -> anyhow::Result<u64> {
    let be16 = |b: &[u8], at: usize| -> anyhow::Result<u16> {
        let s = b.get(at..at + 2).context("truncated IPFIX message")?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    };
    // v9 (RFC 3954 section 5): a 20-octet header without a length, flowset 0 for templates
    // and 1 for options templates (scope and option lengths in octets, no enterprise bit).
    let v9 = match be16(msg, 0)? {
        10 => false,
        9 => true,
        _ => anyhow::bail!("not an IPFIX or NetFlow v9 message"),
    };
    let (end, mut at) = if v9 {
        (msg.len(), 20)
    } else {
        (usize::from(be16(msg, 2)?).min(msg.len()), 16)
    };
    let (template_set, options_set) = if v9 { (0, 1) } else { (2, 3) };
    let mut records = 0u64;
    while at + 4 <= end {
        let (id, len) = (be16(msg, at)?, usize::from(be16(msg, at + 2)?));
        anyhow::ensure!(len >= 4 && at + len <= end, "bad set length");
        let set = &msg[at + 4..at + len];
        match id {
            // Template and options template sets: only the field lengths matter.
            _ if id == template_set || id == options_set => {
                let options = id == options_set;
                let mut p = 0;
                while p + 4 <= set.len() {
                    let tid = be16(set, p)?;
                    let count = if v9 && options {
                        // Scope length + option length, octets, 4 per field specifier.
                        (usize::from(be16(set, p + 2)?) + usize::from(be16(set, p + 4)?)) / 4
                    } else {
                        usize::from(be16(set, p + 2)?)
                    };
                    p += if options { 6 } else { 4 };
                    let mut layout = Vec::with_capacity(count);
                    for _ in 0..count {
                        let ie = be16(set, p)?;
                        let flen = be16(set, p + 2)?;
                        // The enterprise bit adds a 4-byte enterprise number (IPFIX only).
                        p += if !v9 && ie & 0x8000 != 0 { 8 } else { 4 };
                        layout.push((v9 || flen != 0xffff).then_some(flen));
                    }
                    templates.insert(tid, (layout, options));
                }
            }
            256.. => {
                let (layout, options) = templates
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
                    records += u64::from(!options);
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

/// A run of consecutive datagrams sent with one message: several equal-length ones as one UDP
/// GSO send, or a single one.
struct Run {
    first: usize,
    count: usize,
    records: u64,
}

/// Groups `body` into runs: with `gso`, consecutive datagrams of equal length, within the
/// kernel's segment and size limits; without, one datagram per run.
fn runs(body: &[&[u8]], counts: &[u64], gso: bool) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for (i, d) in body.iter().enumerate() {
        if let Some(r) = out.last_mut() {
            let len = body[r.first].len();
            // Only the last segment of a GSO send may be shorter; equal lengths keep every
            // segment a whole datagram of the stream.
            if gso && d.len() == len && r.count < GSO_SEGMENTS && (r.count + 1) * len <= GSO_BYTES {
                r.count += 1;
                r.records += counts[i];
                continue;
            }
        }
        out.push(Run {
            first: i,
            count: 1,
            records: counts[i],
        });
    }
    out
}

/// Room for one control message carrying `UDP_SEGMENT`'s u16, as u64 words for alignment.
const CMSG_WORDS: usize = 4;

/// One mmsghdr per run, pointing at the run's iovecs (one per datagram) and, for a run of
/// several, at a control message that asks the kernel to split the payload into datagrams of
/// the first one's length. `iov` and `cmsgs` must outlive the headers and not move.
fn headers(
    run_list: &[Run],
    body: &[&[u8]],
    iov: &mut [libc::iovec],
    cmsgs: &mut [[u64; CMSG_WORDS]],
) -> Vec<libc::mmsghdr> {
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
    assert!(space <= CMSG_WORDS * 8, "cmsg buffer too small");
    run_list
        .iter()
        .zip(cmsgs.iter_mut())
        .map(|(r, c)| {
            // SAFETY: mmsghdr is plain data (pointers and integers); all zeroes is valid.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = iov[r.first..].as_mut_ptr();
            h.msg_hdr.msg_iovlen = r.count;
            if r.count > 1 {
                h.msg_hdr.msg_control = c.as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = space;
                // SAFETY: msg_control points at `space` zeroed, aligned bytes, room for one
                // header and its u16; CMSG_FIRSTHDR is therefore non-null.
                unsafe {
                    let cm = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                    (*cm).cmsg_level = libc::SOL_UDP;
                    (*cm).cmsg_type = UDP_SEGMENT;
                    (*cm).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
                    let seg = body[r.first].len() as u16;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cm).cast::<u16>(), seg);
                }
            }
            h
        })
        .collect()
}

/// The sockets of `exporters` exporters, connected to `to`: one from any address, or one per
/// loopback source address 127.0.0.1, 127.0.0.2, ...
fn exporter_sockets(to: SocketAddr, exporters: u8) -> anyhow::Result<Vec<UdpSocket>> {
    if exporters == 1 {
        let sock = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
        sock.connect(to)?;
        return Ok(vec![sock]);
    }
    anyhow::ensure!(
        to.ip().is_loopback() && to.is_ipv4(),
        "--exporters above 1 sends from 127.0.0.N: the target {to} must be an IPv4 loopback address"
    );
    (1..=exporters)
        .map(|k| {
            let from = SocketAddr::from(([127, 0, 0, k], 0));
            let sock = UdpSocket::bind(from).with_context(|| format!("binding {from}"))?;
            sock.connect(to)?;
            Ok(sock)
        })
        .collect()
}

/// Where one exporter is in the stream: the pass and the next run to send.
#[derive(Clone, Copy)]
struct Cursor {
    pass: u32,
    at: usize,
}

/// The runs `[at, end)` of about [`BATCH`] datagrams starting at `at`.
fn batch_end(run_list: &[Run], at: usize) -> usize {
    let (mut end, mut n) = (at, 0);
    while end < run_list.len() && n < BATCH {
        n += run_list[end].count;
        end += 1;
    }
    end
}

fn replay(
    file: &PathBuf,
    to: SocketAddr,
    rate: u64,
    repeat: u32,
    gso: bool,
    exporters: u8,
) -> anyhow::Result<()> {
    let data = std::fs::read(file).with_context(|| file.display().to_string())?;
    let dgrams = stream::datagrams(&data)?;
    let mut templates = HashMap::new();
    let counts = dgrams
        .iter()
        .map(|d| data_records(d, &mut templates))
        .collect::<anyhow::Result<Vec<u64>>>()?;
    let (template, body) = dgrams.split_first().context("empty stream")?;
    let counts = &counts[1..];

    // Connected, so the messages need no per-message address and the kernel skips the route
    // lookup per datagram.
    let socks = exporter_sockets(to, exporters)?;
    // The template first, and time for it to be taken in. Records in the first datagram
    // (a recorded stream's may carry some) are sent once per exporter and counted.
    let (mut sent_datagrams, mut sent_records) = (0u64, 0u64);
    for sock in &socks {
        sock.send(template)?;
        sent_datagrams += 1;
        sent_records += data_records(template, &mut HashMap::new())?;
    }
    std::thread::sleep(Duration::from_millis(200));

    // One iovec per datagram and one mmsghdr per run, built once: a pass over the stream is
    // then a walk over slices of `hdrs`. `iov` and `cmsgs` are never resized, so the pointers
    // into them stay valid. Every exporter sends the same headers, one call at a time.
    let mut iov: Vec<libc::iovec> = body
        .iter()
        .map(|d| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        })
        .collect();
    let mut gso = gso;
    let mut run_list = runs(body, counts, gso);
    let mut cmsgs = vec![[0u64; CMSG_WORDS]; run_list.len()];
    let mut hdrs = headers(&run_list, body, &mut iov, &mut cmsgs);

    let start = Instant::now();
    let mut cursors = vec![Cursor { pass: 0, at: 0 }; socks.len()];
    let mut first = true;
    while cursors.iter().any(|c| c.pass < repeat) {
        // One call per exporter in turn, about BATCH datagrams each, whatever the runs.
        for (sock, c) in socks.iter().zip(cursors.iter_mut()) {
            if c.pass >= repeat || hdrs.is_empty() {
                c.pass = repeat;
                continue;
            }
            let end = batch_end(&run_list, c.at);
            let n = match send_some(sock, &mut hdrs[c.at..end]) {
                Ok(n) => n,
                // No segmentation offload on this path (EIO: the device cannot checksum it;
                // EINVAL/ENOPROTOOPT: a kernel before 4.18): send datagram by datagram.
                Err(e)
                    if gso
                        && first
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT)
                        ) =>
                {
                    eprintln!("UDP segmentation offload refused ({e}): one send per datagram");
                    gso = false;
                    run_list = runs(body, counts, false);
                    cmsgs = vec![[0u64; CMSG_WORDS]; run_list.len()];
                    hdrs = headers(&run_list, body, &mut iov, &mut cmsgs);
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            first = false;
            for r in &run_list[c.at..c.at + n] {
                sent_datagrams += r.count as u64;
                sent_records += r.records;
            }
            c.at += n;
            if c.at == hdrs.len() {
                *c = Cursor {
                    pass: c.pass + 1,
                    at: 0,
                };
            }
            // Paced per call: the batch went out at once, the next one waits until the
            // records sent so far are due at the target rate. A batch is ~1400 records, under
            // 100 µs at 16M records/s, so the stream stays smooth on the receiver's time scale.
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
        "datagrams={} records={} seconds={:.3} offered_rate={:.0} gso={} exporters={}",
        sent_datagrams,
        sent_records,
        secs,
        sent_records as f64 / secs,
        if gso { "on" } else { "off" },
        socks.len()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Generate {
            records,
            out,
            shape,
            seed,
            span,
        } => generate(records, &out, shape, seed, span),
        Cmd::Record {
            listen,
            out,
            idle,
            rcvbuf,
            max,
        } => record(listen, &out, idle, rcvbuf, max),
        Cmd::Count { file } => {
            let data = std::fs::read(&file).with_context(|| file.display().to_string())?;
            let mut templates = HashMap::new();
            let dgrams = stream::datagrams(&data)?;
            let mut records = 0;
            for d in &dgrams {
                records += data_records(d, &mut templates)?;
            }
            println!("datagrams={} records={records}", dgrams.len());
            Ok(())
        }
        Cmd::Replay {
            file,
            to,
            rate,
            repeat,
            no_gso,
            exporters,
        } => replay(&file, to, rate, repeat, !no_gso, exporters),
    }
}
