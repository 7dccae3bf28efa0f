//! labelflow-probe: NFLOG groups in, labelled flows out as IPFIX / NetFlow v9 / v5.
//!
//! ```text
//!  NFLOG groups      ─► nflog::NflogSocket    ─┐
//!  pcap/pcapng file  ─► replay::CaptureReader ─┴► (PacketMeta, payload) ─► pipeline::Pipeline
//!                                          (decode ─► cache::FlowCache) ─► FlowRecord
//!  conntrack events + counter sweeps ─► conntrack::ConntrackSource ─────────► FlowRecord
//!                                       ─► export::UdpExporter (IPFIX / v9 / v5 over UDP)
//! ```
//!
//! The sources, the pipeline and the exporters' state machines are plain library code driven
//! by `daemon` (the only part that reads clocks, waits on sockets and handles signals).

pub mod cache;
pub mod config;
pub mod conntrack;
pub mod daemon;
pub mod decode;
pub mod export;
pub mod ipsec;
pub mod nflog;
pub mod packet;
pub mod pipeline;
mod prefetch;
pub mod replay;
mod sockio;
