//! The exporter allowlist and the HTTP side: datagrams from sources outside
//! `allowed_exporters` are counted per source and never decoded; with `http_token_file` the
//! API and `/metrics` need the bearer token; nothing over HTTP writes.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::*;

/// Status line and body of one HTTP/1.0 request.
fn request(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: x\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {out:?}"));
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn metric(body: &str, line_prefix: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .map(|v| v.trim().parse().unwrap())
}

#[test]
fn allowlist_drops_other_sources_and_http_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t0k3n-for-tests\n").unwrap();
    let extra = format!(
        "allowed_exporters = [\"127.0.0.9/32\"]\nhttp_token_file = \"{}\"\n",
        token_file.display()
    );
    let c = Collector::start(dir.path(), &db, &extra);
    let token = Some("t0k3n-for-tests");

    let good = UdpSocket::bind("127.0.0.9:0").unwrap();
    let other = UdpSocket::bind("127.0.0.10:0").unwrap();
    let t0 = u64::from(now_secs() - 120) * 1000;
    c.send(&good, &ipfix_template(now_secs(), 0, 1));
    c.send(&other, &ipfix_template(now_secs(), 0, 1));
    for i in 0..5 {
        c.send(
            &good,
            &ipfix_data(now_secs(), i, 1, &[flow("esp", 1000, t0)]),
        );
        c.send(
            &other,
            &ipfix_data(now_secs(), i, 1, &[flow("evil", 7, t0)]),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused_line = "labelflow_collector_refused_datagrams_total{source=\"127.0.0.10\"} ";
    loop {
        let (status, body) = request(c.http, "GET", "/metrics", token);
        assert_eq!(status, 200);
        let committed = metric(&body, "labelflow_collector_committed_datagrams_total ");
        if committed == Some(6) && metric(&body, refused_line) == Some(6) {
            assert_eq!(
                metric(&body, "labelflow_collector_datagrams_total "),
                Some(6)
            );
            break;
        }
        assert!(Instant::now() < deadline, "not all counted:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }

    assert_eq!(request(c.http, "GET", "/metrics", None).0, 401);
    assert_eq!(request(c.http, "GET", "/metrics", Some("wrong")).0, 401);
    assert_eq!(
        request(c.http, "GET", "/api/report?by=label&last=1h", None).0,
        401
    );
    assert_eq!(
        request(c.http, "GET", "/api/report?by=label&last=1h", token).0,
        200
    );
    // The page itself holds no data.
    assert_eq!(request(c.http, "GET", "/", None).0, 200);
    for path in ["/", "/metrics", "/api/report"] {
        for method in ["POST", "PUT", "DELETE"] {
            assert_eq!(
                request(c.http, method, path, token).0,
                405,
                "{method} {path}"
            );
        }
    }
    c.term();
    assert_eq!(
        all_time_bytes(&db, "label", "label"),
        vec![("esp".to_string(), 5000)]
    );
}
