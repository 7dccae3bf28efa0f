//! A TCP proxy in front of ClickHouse for the fault tests: it forwards inserts, or answers
//! some of them by closing the connection after the server got them, or cuts them mid-body.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A TCP proxy in front of ClickHouse that can cut connections mid-insert.
pub struct Proxy {
    pub port: u16,
    /// Inserts still to forward whole but answer by closing the connection (the server
    /// inserted; the collector cannot know).
    pub drop_answers: Arc<AtomicUsize>,
    /// Inserts still to cut after half of their body (the server sees a broken request).
    pub cut_requests: Arc<AtomicUsize>,
    /// Inserts that went through either way.
    pub inserts: Arc<AtomicUsize>,
}

fn read_request(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(buf);
            }
        }
    }
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let drop_answers = Arc::new(AtomicUsize::new(0));
        let cut_requests = Arc::new(AtomicUsize::new(0));
        let inserts = Arc::new(AtomicUsize::new(0));
        let (d, c, n) = (drop_answers.clone(), cut_requests.clone(), inserts.clone());
        std::thread::spawn(move || {
            for client in l.incoming() {
                let Ok(mut client) = client else { continue };
                let Some(req) = read_request(&mut client) else {
                    continue;
                };
                let insert = String::from_utf8_lossy(&req[..req.len().min(300)]).contains("INSERT");
                let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let take = |a: &AtomicUsize| {
                    insert
                        && a.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                            .is_ok()
                };
                if take(&c) {
                    let _ = up.write_all(&req[..req.len() / 2 + 10]);
                    continue; // both ends closed mid-request
                }
                if up.write_all(&req).is_err() {
                    continue;
                }
                let mut resp = Vec::new();
                let _ = up.read_to_end(&mut resp);
                if insert {
                    n.fetch_add(1, Ordering::SeqCst);
                }
                if take(&d) {
                    continue; // the server answered; the client never hears it
                }
                let _ = client.write_all(&resp);
            }
        });
        Proxy {
            port,
            drop_answers,
            cut_requests,
            inserts,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
