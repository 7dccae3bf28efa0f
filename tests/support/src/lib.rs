//! Test support shared by the tests of every labelflow crate (`proto`, `probe`, `collector`
//! and the end-to-end `tests`). It depends on none of them, so each can dev-depend on it.
//!
//! ```text
//!   tools    require_program("nfcapd"), require_root("why")   missing -> the test fails, loudly
//!   wait     wait_for("what", timeout, || ready)               polls a real condition, bounded
//!   net      udp_socket_of(pid, port), with_fresh_port(..)     readiness and ports from /proc
//!   pcap     PcapWriter, ipv4_udp(..)                          captures for replays and tshark
//!   nfcapd   Nfcapd::start(..).stop(), nfdump(dir, args)       every file of the run (-R)
//!   clickhouse  ClickHouse::start(dir), ::cluster(dir, 2)      own config and ports, /ping
//! ```
//!
//! ```
//! use labelflow_testkit::pcap::{ipv4_udp, PcapWriter, LINKTYPE_IPV4};
//! let mut w = PcapWriter::new(LINKTYPE_IPV4);
//! w.packet(1_700_000_000_000_000, &ipv4_udp([127, 0, 0, 1], [127, 0, 0, 1], 40000, 4739, b"x", 0));
//! assert_eq!(w.bytes().len(), 24 + 16 + 29);
//! ```

pub mod clickhouse;
pub mod net;
pub mod nfcapd;
pub mod pcap;
pub mod tools;
pub mod wait;
