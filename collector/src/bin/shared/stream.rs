//! The stream file `labelflow-ipfix-gen generate` writes and its other commands and
//! `labelflow-ingest-cpu` read: datagrams one after the other, each prefixed by its length
//! as a big-endian u16.

use anyhow::Context as _;

/// Splits a stream file into its datagrams.
pub fn datagrams(data: &[u8]) -> anyhow::Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let head = data
            .get(at..at + 2)
            .with_context(|| format!("truncated stream at octet {at}: partial length prefix"))?;
        let n = usize::from(u16::from_be_bytes([head[0], head[1]]));
        let d = data
            .get(at + 2..at + 2 + n)
            .with_context(|| format!("truncated stream at octet {at}: partial datagram"))?;
        out.push(d);
        at += 2 + n;
    }
    Ok(out)
}
