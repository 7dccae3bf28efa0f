//! Benchmark stream tool: `generate` writes an IPFIX stream file (each datagram prefixed by
//! its length as u16 big-endian), `replay` sends it to a collector at a given record rate,
//! optionally several times over (`--repeat`).
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
        /// Send datagram by datagram instead of in UDP segmentation offload (GSO) runs.
        #[arg(long)]
        no_gso: bool,
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
            // By position in the datagram, so that every full datagram has the same length
            // (label names differ in length) and the replay can send runs of them with UDP
            // segmentation offload.
            let g = (k - i) % LABELS.len();
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

/// `UDP_SEGMENT` (linux/udp.h): the segment size of a UDP GSO send, as a socket option or as
/// a control message of one send (Linux 4.18+).
const UDP_SEGMENT: libc::c_int = 103;
/// At most this many segments per GSO send: `UDP_MAX_SEGMENTS` was 64 until Linux 6.9.
const GSO_SEGMENTS: usize = 64;
/// ... and at most this many payload bytes (an IPv4 datagram's 65,535 less IP and UDP headers).
const GSO_BYTES: usize = 65_507;
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

fn replay(file: &PathBuf, to: SocketAddr, rate: u64, repeat: u32, gso: bool) -> anyhow::Result<()> {
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

    // One iovec per datagram and one mmsghdr per run, built once: a pass over the stream is
    // then a walk over slices of `hdrs`. `iov` and `cmsgs` are never resized, so the pointers
    // into them stay valid.
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
    let (mut sent_datagrams, mut sent_records) = (0u64, 0u64);
    for _ in 0..repeat {
        let mut at = 0;
        while at < hdrs.len() {
            // About BATCH datagrams per call, whatever the runs.
            let mut end = at;
            let mut n_dgrams = 0;
            while end < hdrs.len() && n_dgrams < BATCH {
                n_dgrams += run_list[end].count;
                end += 1;
            }
            let n = match send_some(&sock, &mut hdrs[at..end]) {
                Ok(n) => n,
                // No segmentation offload on this path (EIO: the device cannot checksum it;
                // EINVAL/ENOPROTOOPT: a kernel before 4.18): send datagram by datagram.
                Err(e)
                    if gso
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT)
                        )
                        && at == 0
                        && sent_datagrams == 0 =>
                {
                    eprintln!("UDP segmentation offload refused ({e}): one send per datagram");
                    gso = false;
                    run_list = runs(body, counts, false);
                    cmsgs = vec![[0u64; CMSG_WORDS]; run_list.len()];
                    hdrs = headers(&run_list, body, &mut iov, &mut cmsgs);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            for r in &run_list[at..at + n] {
                sent_datagrams += r.count as u64;
                sent_records += r.records;
            }
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
        "datagrams={} records={} seconds={:.3} offered_rate={:.0} gso={}",
        sent_datagrams,
        sent_records,
        secs,
        sent_records as f64 / secs,
        if gso { "on" } else { "off" }
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
            no_gso,
        } => replay(&file, to, rate, repeat, !no_gso),
    }
}
