//! Wire formats and the flow model shared by `labelflow-probe` and `labelflow-collector`.
//!
//! ```text
//!   FlowRecord ──► ipfix::MessageWriter ──► UDP datagram (RFC 7011)
//!              ──► v9 / v5 writers      ──► UDP datagram (RFC 3954 / Cisco v5)
//!   any exporter's datagram ──► netflow_parser ──► convert ──► FlowRecord
//! ```
//!
//! Pure code: no sockets, no clock reads, no logging.
#![forbid(unsafe_code)]

pub mod convert;
pub mod ie;
pub mod record;

pub use record::{Direction, EndReason, FlowRecord};
