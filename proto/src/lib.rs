//! Wire formats and the flow model shared by `labelflow-probe` and `labelflow-collector`.
//!
//! ```text
//!   FlowRecord ──► template::encode_flow ──► ipfix::MessageWriter ──► UDP datagram (RFC 7011)
//!              ──► v9::PacketWriter / v5::PacketWriter           ──► UDP datagram (RFC 3954 / v5)
//!   any exporter's datagram ──► netflow_parser ──► convert ──► FlowRecord   (feature `decode`)
//!   labelflow's own IPFIX   ──► ipfix::Message (zero-copy) ──► template::decode_flow
//! ```
//!
//! Pure code: no sockets, no clock reads, no logging.
//!
//! ```
//! use labelflow_proto::{ipfix::{Message, MessageWriter}, template, FlowRecord};
//! let rec = FlowRecord { observation_domain: 1, group: Some(1), label: Some("esp".into()), packets: 3, ..Default::default() };
//! let mut w = MessageWriter::new(1400);
//! w.begin(1_700_000_000, 0, 1);
//! assert!(template::write_templates(&mut w));
//! assert!(template::write_flow(&mut w, &rec));
//! let msg = Message::new_checked(w.finish()).unwrap();
//! let decoded = template::decode_message(&msg).unwrap();
//! assert_eq!(decoded, vec![rec]);
//! ```
#![forbid(unsafe_code)]

#[cfg(feature = "decode")]
pub mod convert;
pub mod ie;
pub mod ipfix;
mod pack;
#[cfg(feature = "decode")]
pub mod plan;
pub mod record;
pub mod template;
pub mod v5;
pub mod v9;

pub use record::{BiflowDirection, ConnInfo, Direction, EndReason, FlowRecord};
