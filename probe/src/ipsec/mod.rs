//! IPsec awareness: tunnel (IKE connection) names from strongSwan's charon over vici.
//!
//! ```text
//!  charon ──vici socket──► client::ViciWatcher (thread) ──► table::TunnelTable
//!  exported FlowRecord ──► ViciWatcher::name_of ──► FlowRecord::tunnel
//! ```
//!
//! `vici` is the wire format (pure), `table` the name lookup (pure), `client` the only part
//! that touches the socket. A missing or restarting daemon only delays names; the flows are
//! counted and exported all the same.

pub mod client;
pub mod table;
pub mod vici;

pub use client::ViciWatcher;
pub use table::{ChildInfo, Net, TunnelTable};
