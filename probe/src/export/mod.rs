//! The exporter: flow records in, IPFIX / NetFlow v9 / v5 datagrams out.
//!
//! ```text
//!  FlowRecord ─► ExportState (one per target: format, domain, MTU)  ─► sink(&[u8])
//!                 ├ templates + options first, then every `template_interval`
//!                 │ and every `template_every` messages (RFC 7011 section 8.4)
//!                 ├ per-domain sequence numbers (IPFIX: data records, v9: packets, v5: flows)
//!                 └ partly filled message sent after `max_delay`
//!  UdpExporter: several ExportStates over socket2 UDP sockets; send errors are counted.
//! ```
//!
//! `ExportState` is pure: time comes in as `now_ms` (wall clock, milliseconds since the
//! UNIX epoch, read by the caller).

mod state;
mod target;
mod udp;

pub use labelflow_proto::template::AppIdEncoding;
pub use state::{
    ExportConfig, ExportMeta, ExportState, ExportStats, GroupMeta, InterfaceMeta, DEFAULT_MTU,
    DEFAULT_TEMPLATE_EVERY, DEFAULT_TEMPLATE_INTERVAL,
};
pub use target::{Format, Target, TargetError};
pub use udp::{TargetStats, UdpExporter};
