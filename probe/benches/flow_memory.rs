//! Memory per live flow with 1,000,000 flows: labelflow's `FlowCache` beside the `lru` crate
//! holding the same key and a compact state.
//!
//! Each case runs in a fresh child process and reports two figures:
//! * heap: bytes requested from the allocator and still live (a counting global allocator);
//! * RSS: growth of the resident set, which also includes malloc's per-chunk overhead.
//!
//! Run: `cargo bench -p labelflow-probe --bench flow_memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::num::NonZeroU32;
use std::process::Command;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use labelflow_probe::cache::{CacheConfig, FlowCache, FlowKey};
use labelflow_probe::decode::{Decoded, Fragment, IpVersion, Transport};
use labelflow_probe::packet::PacketMeta;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator with the caller's arguments; the
// counter has no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const FLOWS: u32 = 1_000_000;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Flow `i`: every fourth one IPv6, all distinct.
fn packet(i: u32) -> Decoded {
    let mut src = [0u8; 16];
    let v6 = i.is_multiple_of(4);
    if v6 {
        src[..2].copy_from_slice(&[0x20, 0x01]);
        src[12..].copy_from_slice(&i.to_be_bytes());
    } else {
        src[..4].copy_from_slice(&(0x0a00_0000 | (i >> 8)).to_be_bytes());
    }
    Decoded {
        version: if v6 { IpVersion::V6 } else { IpVersion::V4 },
        src,
        dst: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        protocol: 6,
        transport: Transport::Ports {
            src: 1024 + (i & 0xff) as u16,
            dst: 443,
        },
        tcp_flags: 0x10,
        tos: 0,
        length: 1500,
        fragment: Fragment::None,
        partial: None,
    }
}

/// What a cache built on `lru::LruCache<FlowKey, _>` keeps per flow at the least: counters,
/// times as offsets and the same interned attribute id.
#[allow(dead_code)]
struct LruState {
    bytes: u64,
    packets: u32,
    first: u32,
    last: u32,
    attrs: u32,
    tcp_flags: u8,
    tos: u8,
}

fn measure(case: &str) -> (i64, i64) {
    let meta = PacketMeta {
        group: 1,
        ingress_if: 2,
        egress_if: 3,
        ..PacketMeta::default()
    };
    let heap0 = LIVE.load(Ordering::Relaxed);
    let rss0 = rss_bytes();
    match case {
        "flow_cache" => {
            let mut c = FlowCache::new(CacheConfig {
                max_flows: NonZeroU32::new(FLOWS).unwrap(),
                idle_timeout: Duration::from_secs(3600),
                active_timeout: Duration::from_secs(3600),
                labels: vec![(1, "x".into())],
                user_names: |_| None,
                ..CacheConfig::default()
            });
            for i in 0..FLOWS {
                c.observe(&meta, &packet(i), 1_000 + u64::from(i));
            }
            assert_eq!(c.len(), FLOWS as usize);
            let r = (
                (LIVE.load(Ordering::Relaxed) - heap0) as i64,
                rss_bytes() as i64 - rss0 as i64,
            );
            std::hint::black_box(&c);
            r
        }
        "lru" => {
            let mut c: lru::LruCache<FlowKey, LruState> =
                lru::LruCache::new(std::num::NonZeroUsize::new(FLOWS as usize).unwrap());
            for i in 0..FLOWS {
                let k = FlowKey::new(&meta, &packet(i));
                c.put(
                    k,
                    LruState {
                        bytes: 1500,
                        packets: 1,
                        first: i,
                        last: i,
                        attrs: 0,
                        tcp_flags: 0x10,
                        tos: 0,
                    },
                );
            }
            assert_eq!(c.len(), FLOWS as usize);
            let r = (
                (LIVE.load(Ordering::Relaxed) - heap0) as i64,
                rss_bytes() as i64 - rss0 as i64,
            );
            std::hint::black_box(&c);
            r
        }
        other => panic!("unknown case {other}"),
    }
}

fn main() {
    if let Ok(case) = std::env::var("FLOW_MEMORY_CASE") {
        let (heap, rss) = measure(&case);
        println!("{heap} {rss}");
        return;
    }
    // `cargo test --benches` runs this too: keep it short there.
    if std::env::args().all(|a| a != "--bench") {
        println!("flow_memory: run with `cargo bench` to measure");
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    println!("memory per live flow, {FLOWS} flows (heap = bytes requested, RSS = resident growth)");
    for case in ["flow_cache", "lru"] {
        let out = Command::new(&exe)
            .env("FLOW_MEMORY_CASE", case)
            .output()
            .expect("run child");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text
            .split_whitespace()
            .map(|s| s.parse::<i64>().unwrap_or(0));
        let (heap, rss) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
        println!(
            "{case:>10}: heap {:6.1} bytes/flow, RSS {:6.1} bytes/flow",
            heap as f64 / f64::from(FLOWS),
            rss as f64 / f64::from(FLOWS)
        );
    }
}
