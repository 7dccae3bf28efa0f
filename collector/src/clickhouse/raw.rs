//! Raw flow records for ClickHouse (`[clickhouse] raw = true`): what the aggregator counted,
//! record by record, carried through the SQLite outbox to the `flows` table.
//!
//! ```text
//!  ingest: Labels::add ──► RawLog (one compact buffer per batch; label/tunnel as ids)
//!  take_raw_batch ──► RawRecords (blob: names of the ids used, then per datagram
//!                     [exporter, domain, count] and its records)
//!  Store::commit ──► clickhouse_raw_outbox(batch, created_ms, records, blob), same
//!                    transaction as the counts
//!  sink ──► flows(collector_name, batch, idx, ...) ReplacingMergeTree, ORDER BY
//!           (collector_name, batch, idx); reads use FINAL
//! ```
//!
//! Exactly once as far as reads can tell: a record's identity is (collector, outbox batch
//! id, index in the batch), fixed when the batch is committed. A retried insert writes the
//! same rows with the same identities; merges keep one of them and `FINAL` collapses the
//! ones not merged yet. Batch ids come from an AUTOINCREMENT sequence seeded with the
//! outbox's creation time in microseconds, so a recreated database does not reuse them.
//!
//! Nothing here runs when `raw` is off: the ingest holds no [`RawLog`] and pays one branch
//! per record.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::aggregate::Flow;

/// A batch's records as taken from the ingest: the blob's two parts, not yet joined.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parts {
    /// The names of the label and tunnel ids the records use.
    pub names: Vec<u8>,
    pub records: Vec<u8>,
    pub count: u64,
}

impl Parts {
    /// The records as one blob.
    pub fn joined(&self) -> RawRecords {
        let mut blob = Vec::with_capacity(self.names.len() + self.records.len());
        blob.extend_from_slice(&self.names);
        blob.extend_from_slice(&self.records);
        RawRecords {
            blob,
            records: self.count,
        }
    }
}

/// A batch's raw records, encoded (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawRecords {
    pub blob: Vec<u8>,
    pub records: u64,
}

/// Octets of records after which the ingest hands its batch to the store early (about
/// 37,000 records at 56 octets for an IPv4 record without NAT): one journal row, and one
/// raw outbox BLOB, holds at most this plus one datagram's records.
pub const MAX_BATCH_BYTES: usize = 2 << 20;

/// Collects the records of the current batch in the ingest.
#[derive(Debug, Default)]
pub struct RawLog {
    buf: Vec<u8>,
    /// Offset of the current datagram's header, and its record count so far.
    group: Option<(usize, u32)>,
    records: u64,
    labels: IdSet,
    tunnels: IdSet,
}

/// The label or tunnel ids a batch used: their list (for the names) and a bitset indexed
/// by id, so a record costs one bit test whatever the number of ids. Ids are the
/// collector's own, dense from 0 and below the configured maximum (labels, tunnels), so
/// the set is a few hundred octets; it is cleared from the list, not scanned.
#[derive(Debug, Default)]
struct IdSet {
    ids: Vec<u32>,
    bits: Vec<u64>,
}

impl IdSet {
    fn insert(&mut self, id: u32) {
        let (w, b) = ((id / 64) as usize, 1u64 << (id % 64));
        if w >= self.bits.len() {
            self.bits.resize(w + 1, 0);
        }
        if self.bits[w] & b == 0 {
            self.bits[w] |= b;
            self.ids.push(id);
        }
    }

    /// Write the count, then each id and its name; the set is empty after.
    fn drain_into<'a>(&mut self, o: &mut Vec<u8>, name: impl Fn(u32) -> &'a str) {
        o.extend_from_slice(&(self.ids.len() as u32).to_le_bytes());
        for id in self.ids.drain(..) {
            self.bits[(id / 64) as usize] = 0;
            put_name(o, id, name(id));
        }
    }

    fn clear(&mut self) {
        for id in self.ids.drain(..) {
            self.bits[(id / 64) as usize] = 0;
        }
    }
}

const NO_SPI: u8 = 1;
const NO_TUNNEL: u8 = 2;
const HAS_NAT: u8 = 4;
const HAS_DIRECTION: u8 = 8;
const REPLY: u8 = 16;

fn put_addr(o: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(v) => {
            o.push(4);
            o.extend_from_slice(&v.octets());
        }
        IpAddr::V6(v) => {
            o.push(6);
            o.extend_from_slice(&v.octets());
        }
    }
}

fn put_name(o: &mut Vec<u8>, id: u32, name: &str) {
    o.extend_from_slice(&id.to_le_bytes());
    o.extend_from_slice(&(name.len() as u32).to_le_bytes());
    o.extend_from_slice(name.as_bytes());
}

impl RawLog {
    /// A datagram from `exporter` begins; its domain is set by [`RawLog::end_datagram`].
    pub fn begin_datagram(&mut self, exporter: IpAddr) {
        let at = self.buf.len();
        put_addr(&mut self.buf, exporter);
        self.buf.extend_from_slice(&[0; 8]);
        self.group = Some((at, 0));
    }

    /// The datagram ended: its observation domain (`None`: nothing was decoded).
    pub fn end_datagram(&mut self, domain: Option<u32>) {
        let Some((at, n)) = self.group.take() else {
            return;
        };
        match domain {
            Some(d) if n > 0 => {
                let h = at + if self.buf[at] == 4 { 5 } else { 17 };
                self.buf[h..h + 4].copy_from_slice(&d.to_le_bytes());
                self.buf[h + 4..h + 8].copy_from_slice(&n.to_le_bytes());
            }
            _ => {
                // A datagram delivers records only when it decodes (`Ok`), so none are
                // lost here; the header alone goes.
                debug_assert!(n == 0 || domain.is_some());
                self.buf.truncate(at);
            }
        }
    }

    /// One record as the aggregator counts it: bytes and packets scaled by its sampling,
    /// over `[start_ms, end_ms]` as the time rule left them.
    pub fn push(&mut self, f: &Flow, (start_ms, end_ms): (u64, u64)) {
        let Some((_, n)) = &mut self.group else {
            return;
        };
        *n += 1;
        self.records += 1;
        let o = &mut self.buf;
        o.extend_from_slice(&f.label.to_le_bytes());
        let mut flags = 0;
        if f.spi.is_none() {
            flags |= NO_SPI;
        }
        if f.tunnel.is_none() {
            flags |= NO_TUNNEL;
        }
        if f.nat.is_some() {
            flags |= HAS_NAT;
        }
        match f.reply {
            Some(true) => flags |= HAS_DIRECTION | REPLY,
            Some(false) => flags |= HAS_DIRECTION,
            None => {}
        }
        o.push(flags);
        put_addr(o, f.src);
        put_addr(o, f.dst);
        o.push(f.protocol);
        o.extend_from_slice(&f.src_port.to_le_bytes());
        o.extend_from_slice(&f.dst_port.to_le_bytes());
        if let Some(s) = f.spi {
            o.extend_from_slice(&s.to_le_bytes());
        }
        if let Some(t) = f.tunnel {
            o.extend_from_slice(&t.to_le_bytes());
            self.tunnels.insert(t);
        }
        let scale = u64::from(f.sampling.max(1));
        o.extend_from_slice(&f.bytes.saturating_mul(scale).to_le_bytes());
        o.extend_from_slice(&f.packets.saturating_mul(scale).to_le_bytes());
        o.extend_from_slice(&f.sampling.to_le_bytes());
        o.extend_from_slice(&start_ms.to_le_bytes());
        o.extend_from_slice(&end_ms.to_le_bytes());
        if let Some((inside, public)) = f.nat {
            put_addr(o, inside);
            put_addr(o, public);
        }
        self.labels.insert(f.label);
    }

    /// Octets buffered for the current batch.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// Take the batch's records as the two parts of their blob (the names of the ids
    /// used, then the records) without copying them: the records' buffer is handed out and
    /// `fresh` (an emptied buffer handed out earlier, or a new one) takes its place.
    /// `None` (and `fresh` dropped) when the batch holds no record.
    pub fn take_parts<'a>(
        &mut self,
        label: impl Fn(u32) -> &'a str,
        tunnel: impl Fn(u32) -> &'a str,
        mut fresh: Vec<u8>,
    ) -> Option<Parts> {
        if self.records == 0 {
            self.buf.clear();
            self.labels.clear();
            self.tunnels.clear();
            return None;
        }
        let mut names = Vec::new();
        self.labels.drain_into(&mut names, label);
        self.tunnels.drain_into(&mut names, tunnel);
        fresh.clear();
        // A batch ends past MAX_BATCH_BYTES by at most one datagram's records: reserved
        // once, the buffer never doubles.
        fresh.reserve_exact(MAX_BATCH_BYTES + (256 << 10));
        Some(Parts {
            names,
            records: std::mem::replace(&mut self.buf, fresh),
            count: std::mem::take(&mut self.records),
        })
    }

    /// Take the batch's records as one blob; `label` and `tunnel` name the ids.
    pub fn take<'a>(
        &mut self,
        label: impl Fn(u32) -> &'a str,
        tunnel: impl Fn(u32) -> &'a str,
    ) -> Option<RawRecords> {
        self.take_parts(label, tunnel, Vec::new())
            .map(|p| p.joined())
    }
}

/// One decoded raw record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFlow {
    pub exporter: IpAddr,
    pub domain: u32,
    pub label: String,
    /// Empty when the exporter named none.
    pub tunnel: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// 0 when none.
    pub spi: u32,
    pub bytes: u64,
    pub packets: u64,
    pub sampling: u32,
    pub start_ms: u64,
    pub end_ms: u64,
    /// (inside, public) of a NAT pair.
    pub nat: Option<(IpAddr, IpAddr)>,
    /// 0 unknown, 1 initiator's packets, 2 responder's (RFC 5103 biflowDirection).
    pub direction: u8,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (h, t) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn addr(&mut self) -> Option<IpAddr> {
        match self.u8()? {
            4 => Some(IpAddr::V4(Ipv4Addr::from(
                <[u8; 4]>::try_from(self.take(4)?).ok()?,
            ))),
            6 => Some(IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(self.take(16)?).ok()?,
            ))),
            _ => None,
        }
    }
    fn names(&mut self) -> Option<HashMap<u32, String>> {
        let n = self.u32()?;
        let mut m = HashMap::new();
        for _ in 0..n {
            let id = self.u32()?;
            let len = self.u32()? as usize;
            m.insert(id, String::from_utf8(self.take(len)?.to_vec()).ok()?);
        }
        Some(m)
    }
}

/// Largest label or tunnel id a blob may name: ids are dense from 0 and bounded by
/// `max_labels` and `max_tunnel_names`; a larger one marks a blob this collector did not
/// write.
const MAX_ID: u32 = 1 << 20;

/// Names of a blob's ids, mapped once to the caller's ids (`u32::MAX`: not named).
fn mapped(names: HashMap<u32, String>, mut map: impl FnMut(&str) -> u32) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for (id, name) in names {
        if id >= MAX_ID {
            return None;
        }
        if out.len() <= id as usize {
            out.resize(id as usize + 1, u32::MAX);
        }
        out[id as usize] = map(&name);
    }
    Some(out)
}

/// What a [`FlowCursor`] hands a blob's names and records to.
pub trait FlowVisitor {
    /// The caller's id of a label name.
    fn label(&mut self, name: &str) -> u32;
    /// The caller's id of a tunnel name.
    fn tunnel(&mut self, name: &str) -> u32;
    fn flow(&mut self, f: &Flow);
}

/// A position in a blob's records, for visiting them a slice at a time: the blob's names
/// mapped to the visitor's ids once, then records from where the last slice ended.
#[derive(Debug, Default)]
pub struct FlowCursor {
    labels: Vec<u32>,
    tunnels: Vec<u32>,
    /// Octet offset of the next record or datagram header.
    pos: usize,
    /// Records left in the current datagram.
    left: u32,
}

impl FlowCursor {
    /// A cursor at a blob's first record, its names mapped by `to`; `None`: the blob's
    /// names are malformed.
    pub fn new(blob: &[u8], to: &mut impl FlowVisitor) -> Option<FlowCursor> {
        let mut r = Reader(blob);
        let (labels, tunnels) = (r.names()?, r.names()?);
        let labels = mapped(labels, |n| to.label(n))?;
        let tunnels = mapped(tunnels, |n| to.tunnel(n))?;
        Some(FlowCursor {
            labels,
            tunnels,
            pos: blob.len() - r.0.len(),
            left: 0,
        })
    }

    /// Where the cursor stands: (octet offset, records left in the current datagram), to
    /// be stored and given back to [`FlowCursor::resume`].
    pub fn position(&self) -> (usize, u32) {
        (self.pos, self.left)
    }

    /// Move to a position [`FlowCursor::position`] gave (one of the same blob); a position
    /// before the first record leaves the cursor where it is.
    pub fn resume(&mut self, (pos, left): (usize, u32)) {
        if pos > self.pos {
            (self.pos, self.left) = (pos, left);
        }
    }

    /// Visit up to `max` records from the cursor on, as the aggregator counts them (label
    /// and tunnel ids mapped, bytes and packets with sampling applied so `sampling` is 1,
    /// times as the time rule left them). Returns the records visited and whether the blob
    /// is done; `Err(n)`: the blob is malformed after `n` more records.
    pub fn visit(
        &mut self,
        blob: &[u8],
        max: u64,
        to: &mut impl FlowVisitor,
    ) -> Result<(u64, bool), u64> {
        let mut r = Reader(blob.get(self.pos..).unwrap_or_default());
        let mut n = 0u64;
        let id = |ids: &[u32], i: u32| ids.get(i as usize).copied().filter(|v| *v != u32::MAX);
        while n < max {
            if self.left == 0 {
                if r.0.is_empty() {
                    self.pos = blob.len();
                    return Ok((n, true));
                }
                let Some((_, _, count)) = (|| Some((r.addr()?, r.u32()?, r.u32()?)))() else {
                    return Err(n);
                };
                self.left = count;
                continue;
            }
            let f = read_record(&mut r).and_then(|(mut f, _sampling)| {
                f.label = id(&self.labels, f.label)?;
                f.tunnel = match f.tunnel {
                    Some(t) => Some(id(&self.tunnels, t)?),
                    None => None,
                };
                f.sampling = 1;
                Some(f)
            });
            let Some(f) = f else {
                return Err(n);
            };
            to.flow(&f);
            self.left -= 1;
            n += 1;
        }
        self.pos = blob.len() - r.0.len();
        Ok((n, self.left == 0 && r.0.is_empty()))
    }
}

/// The records of a blob, in order. `Err(n)`: the blob is malformed after `n` records
/// (a blob this collector did not write); those before are returned in `out`.
pub fn decode(blob: &[u8], out: &mut Vec<RawFlow>) -> Result<(), usize> {
    let start = out.len();
    let mut r = Reader(blob);
    let bad = |out: &Vec<RawFlow>| out.len() - start;
    let (Some(labels), Some(tunnels)) = (r.names(), r.names()) else {
        return Err(0);
    };
    while !r.0.is_empty() {
        let group = (|| Some((r.addr()?, r.u32()?, r.u32()?)))();
        let Some((exporter, domain, n)) = group else {
            return Err(bad(out));
        };
        for _ in 0..n {
            let Some(f) = decode_one(&mut r, exporter, domain, &labels, &tunnels) else {
                return Err(bad(out));
            };
            out.push(f);
        }
    }
    Ok(())
}

fn decode_one(
    r: &mut Reader<'_>,
    exporter: IpAddr,
    domain: u32,
    labels: &HashMap<u32, String>,
    tunnels: &HashMap<u32, String>,
) -> Option<RawFlow> {
    let (f, sampling) = read_record(r)?;
    let tunnel = match f.tunnel {
        Some(t) => tunnels.get(&t)?.clone(),
        None => String::new(),
    };
    Some(RawFlow {
        exporter,
        domain,
        label: labels.get(&f.label)?.clone(),
        tunnel,
        src: f.src,
        dst: f.dst,
        protocol: f.protocol,
        src_port: f.src_port,
        dst_port: f.dst_port,
        spi: f.spi.unwrap_or(0),
        bytes: f.bytes,
        packets: f.packets,
        sampling,
        start_ms: f.start_ms,
        end_ms: f.end_ms,
        nat: f.nat,
        direction: match f.reply {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        },
    })
}

/// One record as [`RawLog::push`] wrote it: a flow whose `label` and `tunnel` are the
/// blob's ids, bytes and packets with sampling applied, and the sampling.
fn read_record(r: &mut Reader<'_>) -> Option<(Flow, u32)> {
    let label = r.u32()?;
    let flags = r.u8()?;
    let (src, dst, protocol) = (r.addr()?, r.addr()?, r.u8()?);
    let (src_port, dst_port) = (r.u16()?, r.u16()?);
    let spi = if flags & NO_SPI == 0 {
        Some(r.u32()?)
    } else {
        None
    };
    let tunnel = if flags & NO_TUNNEL == 0 {
        Some(r.u32()?)
    } else {
        None
    };
    let (bytes, packets, sampling) = (r.u64()?, r.u64()?, r.u32()?);
    let (start_ms, end_ms) = (r.u64()?, r.u64()?);
    let nat = if flags & HAS_NAT != 0 {
        Some((r.addr()?, r.addr()?))
    } else {
        None
    };
    let reply = (flags & HAS_DIRECTION != 0).then_some(flags & REPLY != 0);
    let f = Flow {
        label,
        src,
        dst,
        protocol,
        src_port,
        dst_port,
        spi,
        tunnel,
        bytes,
        packets,
        sampling,
        start_ms,
        end_ms,
        nat,
        reply,
    };
    Some((f, sampling))
}

/// Create the raw outbox if needed; its batch ids are raised like the totals' outbox's.
pub fn create(conn: &Connection, now_us: i64) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS clickhouse_raw_outbox (
             batch INTEGER PRIMARY KEY AUTOINCREMENT,
             created_ms INTEGER NOT NULL,
             records INTEGER NOT NULL,
             blob BLOB NOT NULL)",
    )?;
    super::outbox::raise_sequence(conn, "clickhouse_raw_outbox", now_us)
}

/// Queue a batch's records inside the commit's transaction `tx`.
pub fn record(tx: &Transaction<'_>, raw: &RawRecords) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO clickhouse_raw_outbox (created_ms, records, blob)
         VALUES (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), ?1, ?2)",
    )?
    .execute(params![raw.records as i64, raw.blob])?;
    Ok(())
}

/// Raw batches and records waiting, and the oldest one's creation time (ms).
pub fn backlog(conn: &Connection) -> rusqlite::Result<(u64, u64, Option<i64>)> {
    conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(records), 0), MIN(created_ms) FROM clickhouse_raw_outbox",
        [],
        |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get(2)?,
            ))
        },
    )
}

/// Raw batches waiting in the database at `path` (for tools and tests).
pub fn waiting(path: &std::path::Path) -> rusqlite::Result<u64> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(backlog(&conn)?.0)
}

/// Keep at most `max_batches` raw batches and `max_bytes` octets of them (the newest
/// ones): drop the oldest. Returns (batches, records) dropped.
///
/// The octet bound is what bounds the SQLite file: a batch holds up to
/// [`MAX_BATCH_BYTES`] (plus the last record), so a count alone would allow 10,000 × 16 MiB.
pub fn bound(
    conn: &mut Connection,
    max_batches: usize,
    max_bytes: usize,
) -> rusqlite::Result<(u64, u64)> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // The newest batch past either bound, counting from the newest; it and every older
    // batch go. `length()` of a BLOB reads its size, not its content.
    let last: Option<i64> = tx
        .query_row(
            "SELECT batch FROM (
               SELECT batch,
                      SUM(length(blob)) OVER (ORDER BY batch DESC) AS kept_bytes,
                      ROW_NUMBER() OVER (ORDER BY batch DESC) AS kept
               FROM clickhouse_raw_outbox)
             WHERE kept > ?1 OR kept_bytes > ?2
             ORDER BY batch DESC LIMIT 1",
            params![clamp(max_batches), clamp(max_bytes)],
            |r| r.get(0),
        )
        .optional()?;
    let Some(last) = last else {
        return Ok((0, 0));
    };
    let (batches, records): (i64, i64) = tx.query_row(
        "SELECT COUNT(*), COALESCE(SUM(records), 0) FROM clickhouse_raw_outbox
         WHERE batch <= ?1",
        params![last],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    tx.execute(
        "DELETE FROM clickhouse_raw_outbox WHERE batch <= ?1",
        params![last],
    )?;
    tx.commit()?;
    Ok((batches as u64, records as u64))
}

/// A bound as SQLite's integer (`usize::MAX`: none).
fn clamp(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Raw batches due: the oldest ones, at least one, up to about `max_records` records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRaw {
    /// (batch id, records) of each batch, oldest first.
    pub batches: Vec<(i64, Vec<RawFlow>)>,
    pub oldest_ms: i64,
    /// Batches that could not be read whole (their readable records are sent).
    pub malformed: usize,
}

pub fn take(conn: &Connection, max_records: u64) -> rusqlite::Result<Option<PendingRaw>> {
    let mut st = conn.prepare_cached(
        "SELECT batch, created_ms, records, blob FROM clickhouse_raw_outbox ORDER BY batch",
    )?;
    let mut rows = st.query([])?;
    let (mut batches, mut oldest_ms, mut malformed, mut n) = (Vec::new(), i64::MAX, 0, 0u64);
    while let Some(r) = rows.next()? {
        let records = r.get::<_, i64>(2)? as u64;
        if !batches.is_empty() && n + records > max_records {
            break;
        }
        n += records;
        oldest_ms = oldest_ms.min(r.get(1)?);
        let mut flows = Vec::with_capacity(records as usize);
        if decode(r.get_ref(3)?.as_blob()?, &mut flows).is_err() {
            malformed += 1;
        }
        batches.push((r.get(0)?, flows));
    }
    Ok((!batches.is_empty()).then_some(PendingRaw {
        batches,
        oldest_ms,
        malformed,
    }))
}

/// ClickHouse acknowledged the raw batches up to `upto`.
pub fn acknowledge(conn: &Connection, upto: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM clickhouse_raw_outbox WHERE batch <= ?1",
        params![upto],
    )
}

#[cfg(test)]
mod tests;
