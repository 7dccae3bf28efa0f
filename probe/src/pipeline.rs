//! Decode + flow cache: what the NFLOG loop and the pcap replay both drive.
//!
//! ```text
//!  (PacketMeta, payload, now) ──► decode ──► FlowCache::observe
//!                                   └─ error ──► counted by reason, packet skipped
//!  expire(now) / flush(now) ──► FlowRecord sink (the exporter)
//! ```
//!
//! ```
//! use labelflow_probe::cache::CacheConfig;
//! use labelflow_probe::packet::PacketMeta;
//! use labelflow_probe::pipeline::Pipeline;
//! let mut p = Pipeline::new(CacheConfig {
//!     labels: vec![(1, "esp".into())],
//!     ..CacheConfig::default()
//! });
//! let esp = [
//!     0x45, 0, 0, 120, 0, 0, 0, 0, 64, 50, 0, 0, // IPv4, total length 120, protocol ESP
//!     192, 0, 2, 1, 198, 51, 100, 1, // addresses
//!     0, 0, 0x10, 0x01, // SPI 0x1001
//! ];
//! let meta = PacketMeta { group: 1, ..PacketMeta::default() };
//! p.handle(&meta, &esp, 1_000).unwrap();
//! let mut out = Vec::new();
//! p.flush(2_000, &mut |r| out.push(r));
//! assert_eq!((out[0].label.as_deref(), out[0].ipsec_spi, out[0].bytes), (Some("esp"), Some(0x1001), 120));
//! ```

use labelflow_proto::FlowRecord;

use crate::cache::{CacheConfig, CacheStats, FlowCache, Keyer, Prepared};
use crate::decode::{decode_with, DecodeError, DecodeErrorKind, Decoded, IpsecPorts, Partial};
use crate::packet::PacketMeta;

/// Decode outcomes since the pipeline was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Packets decoded and counted into flows.
    pub decoded: u64,
    /// Packets skipped, by [`DecodeErrorKind::index`].
    pub errors: [u64; DecodeErrorKind::COUNT],
    /// Packets counted without their full transport header, by [`Partial::index`].
    pub partial: [u64; Partial::COUNT],
}

impl DecodeStats {
    /// `(reason, count)` for every error reason, zero counts included (stable metric series).
    pub fn errors_by_reason(&self) -> impl Iterator<Item = (DecodeErrorKind, u64)> + '_ {
        DecodeErrorKind::ALL
            .iter()
            .map(move |k| (*k, self.errors[k.index()]))
    }

    pub fn partial_by_reason(&self) -> impl Iterator<Item = (Partial, u64)> + '_ {
        Partial::ALL
            .iter()
            .map(move |k| (*k, self.partial[k.index()]))
    }

    pub fn total_errors(&self) -> u64 {
        self.errors.iter().sum()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineStats {
    pub decode: DecodeStats,
    pub cache: CacheStats,
}

/// Packet decode with per-reason counters: the first half of a [`Pipeline`], which a
/// replay runs on a thread of its own.
#[derive(Debug, Clone)]
pub struct Decoder {
    ports: IpsecPorts,
    stats: DecodeStats,
}

impl Decoder {
    pub fn new(ports: IpsecPorts) -> Self {
        Decoder {
            ports,
            stats: DecodeStats::default(),
        }
    }

    /// Decodes one packet, counting the outcome.
    #[inline]
    pub fn decode(
        &mut self,
        meta: &PacketMeta<'_>,
        payload: &[u8],
    ) -> Result<Decoded, DecodeError> {
        match decode_with(meta.l3, payload, &self.ports) {
            Ok(pkt) => {
                self.stats.decoded += 1;
                if let Some(p) = pkt.partial {
                    self.stats.partial[p.index()] += 1;
                }
                Ok(pkt)
            }
            Err(e) => {
                self.stats.errors[e.kind().index()] += 1;
                Err(e)
            }
        }
    }

    pub fn stats(&self) -> &DecodeStats {
        &self.stats
    }
}

/// Packet decode feeding a [`FlowCache`], with per-reason decode counters.
#[derive(Debug)]
pub struct Pipeline {
    cache: FlowCache,
    decoder: Decoder,
}

impl Pipeline {
    pub fn new(config: CacheConfig) -> Self {
        Pipeline {
            decoder: Decoder::new(config.ipsec_ports),
            cache: FlowCache::new(config),
        }
    }

    /// Decodes one packet and counts it into its flow. A malformed packet is counted by reason
    /// and skipped; the error is returned so the caller can log it (rate-limited).
    pub fn handle(
        &mut self,
        meta: &PacketMeta<'_>,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<(), DecodeError> {
        let pkt = self.decoder.decode(meta, payload)?;
        self.cache.observe(meta, &pkt, now_ms);
        Ok(())
    }

    /// A decoder like this pipeline's, with its own counters (see
    /// [`add_decoded`](Self::add_decoded)).
    pub fn decoder(&self) -> Decoder {
        Decoder::new(self.decoder.ports)
    }

    /// See [`FlowCache::keyer`].
    pub fn keyer(&self) -> Keyer {
        self.cache.keyer()
    }

    /// See [`FlowCache::prefetch`].
    #[inline]
    pub fn prefetch(&self, prepared: &Prepared) {
        self.cache.prefetch(prepared);
    }

    /// Counts a packet decoded by a [`decoder`](Self::decoder) and prepared by a
    /// [`keyer`](Self::keyer) into its flow.
    #[inline]
    pub fn observe_prepared(
        &mut self,
        meta: &PacketMeta<'_>,
        pkt: &Decoded,
        prepared: Prepared,
        now_ms: u64,
    ) {
        self.cache.observe_prepared(meta, pkt, prepared, now_ms);
    }

    /// Adds the counters of a [`decoder`](Self::decoder) that fed this pipeline.
    pub fn add_decoded(&mut self, other: &DecodeStats) {
        let d = &mut self.decoder.stats;
        d.decoded += other.decoded;
        for (a, b) in d.errors.iter_mut().zip(&other.errors) {
            *a += b;
        }
        for (a, b) in d.partial.iter_mut().zip(&other.partial) {
            *a += b;
        }
    }

    /// See [`FlowCache::expire`].
    pub fn expire(&mut self, now_ms: u64, sink: &mut impl FnMut(FlowRecord)) {
        self.cache.expire(now_ms, sink);
    }

    /// See [`FlowCache::flush`].
    pub fn flush(&mut self, now_ms: u64, sink: &mut impl FnMut(FlowRecord)) {
        self.cache.flush(now_ms, sink);
    }

    /// See [`FlowCache::next_deadline`].
    pub fn next_deadline(&self) -> Option<u64> {
        self.cache.next_deadline()
    }

    pub fn stats(&self) -> PipelineStats {
        PipelineStats {
            decode: self.decoder.stats,
            cache: self.cache.stats(),
        }
    }

    pub fn cache(&self) -> &FlowCache {
        &self.cache
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_partials_are_counted_by_reason() {
        let mut p = Pipeline::new(CacheConfig::default());
        let meta = PacketMeta::default();
        assert_eq!(p.handle(&meta, &[], 0), Err(DecodeError::Empty));
        assert!(p.handle(&meta, &[0x45; 10], 0).is_err());
        // IPv4 TCP, total length 60, only the IP header captured.
        #[rustfmt::skip]
        let hdr = [
            0x45, 0x00, 0x00, 60,   // v4, IHL 5, total length 60
            0, 0, 0, 0,             // id, flags, offset
            64, 6, 0, 0,            // TTL, TCP, checksum
            10, 0, 0, 1, 10, 0, 0, 2, // addresses
        ];
        p.handle(&meta, &hdr, 0).unwrap();
        let s = p.stats();
        assert_eq!(s.decode.decoded, 1);
        assert_eq!(s.decode.total_errors(), 2);
        assert_eq!(s.decode.errors[DecodeErrorKind::Empty.index()], 1);
        assert_eq!(s.decode.errors[DecodeErrorKind::HeaderTruncated.index()], 1);
        assert_eq!(s.decode.partial[Partial::TransportNotCaptured.index()], 1);
        assert_eq!(
            (s.cache.packets, s.cache.bytes, s.cache.live_flows),
            (1, 60, 1)
        );
        assert_eq!(p.next_deadline(), Some(15_000));
        let mut out = Vec::new();
        p.expire(14_999, &mut |r| out.push(r));
        assert!(out.is_empty());
        p.expire(15_000, &mut |r| out.push(r));
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].src_port, out[0].dst_port, out[0].bytes), (0, 0, 60));
        assert_eq!(p.stats().cache.exported, 1);
    }

    /// IPv4 UDP 192.0.2.1:`sport` -> 198.51.100.1:4500 carrying `payload`.
    fn natt(sport: u16, payload: &[u8]) -> Vec<u8> {
        let total = 28 + payload.len() as u16;
        let udp_len = 8 + payload.len() as u16;
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 192, 0, 2, 1, 198, 51, 100, 1,
        ];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&4500u16.to_be_bytes());
        p.extend_from_slice(&udp_len.to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn natt_sas_ike_and_keepalives_are_separate_flows() {
        let mut p = Pipeline::new(CacheConfig {
            labels: vec![(1, "esp".into())],
            ..CacheConfig::default()
        });
        let meta = PacketMeta {
            group: 1,
            ..PacketMeta::default()
        };
        let mut esp_a = vec![0xc0, 0, 0, 1, 0, 0, 0, 1];
        esp_a.resize(108, 0x5a);
        let mut esp_b = vec![0xc0, 0, 0, 2, 0, 0, 0, 1];
        esp_b.resize(58, 0x5a);
        let packets = [
            natt(4500, &esp_a),
            natt(4500, &esp_a),
            natt(4500, &esp_b),
            natt(4500, &[0, 0, 0, 0, 0x21, 0x20, 0x22, 0x08]),
            natt(4500, &[0xff]),
            natt(4500, &[0xff]),
            // Another NAT mapping of the same SA is another flow.
            natt(61000, &esp_a),
        ];
        for (i, pkt) in packets.iter().enumerate() {
            p.handle(&meta, pkt, 1_000 + i as u64).unwrap();
        }
        let mut out = Vec::new();
        p.flush(10_000, &mut |r| out.push(r));
        let mut got: Vec<_> = out
            .iter()
            .map(|r| (r.src_port, r.ipsec_spi, r.packets, r.bytes, r.protocol))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (4500, None, 1, 36, 17), // IKE behind the non-ESP marker
                (4500, None, 2, 58, 17), // two NAT-keepalives of 29 bytes
                (4500, Some(0xc000_0001), 2, 272, 17),
                (4500, Some(0xc000_0002), 1, 86, 17),
                (61000, Some(0xc000_0001), 1, 136, 17),
            ]
        );
    }
}
