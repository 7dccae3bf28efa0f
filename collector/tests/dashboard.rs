//! Dashboard in headless Chromium against a collector with data, and graph files.

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;

use common::*;

const CONFIG: &str = r#"
[views]
uplink = ["esp", "other"]
[[tunnels]]
name = "branch"
subnets = ["10.2.0.0/16"]
[hosts]
networks = ["192.168.1.0/24"]
"#;

fn output_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-output");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn feed(c: &Collector) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.send(&sock, &ipfix_template(now_secs(), 0, 1));
    let now_ms = u64::from(now_secs()) * 1000;
    let mut seq = 0;
    for minute in 0..30u64 {
        let t = now_ms - (30 - minute) * 60_000;
        let mut esp = flow("esp", 2_000_000 + minute * 50_000, t);
        esp.protocol = 50;
        esp.spi = 0x1001;
        esp.src_port = 0;
        esp.dst_port = 0;
        let other = flow("other", 700_000, t + 1000);
        let mut inner = flow("decrypted", 1_500_000, t + 2000);
        inner.dst = Ipv4Addr::new(10, 2, 0, 5);
        let flows = [esp, other, inner];
        c.send(&sock, &ipfix_data(now_secs(), seq, 1, &flows));
        seq += 3;
    }
    c.wait_committed(31);
}

#[test]
fn dashboard_renders_graphs_in_chromium() {
    let chromium = require_program("chromium");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dash.db");
    let c = Collector::start(dir.path(), &db, CONFIG);
    feed(&c);
    let url = format!("http://127.0.0.1:{}/", c.http);
    let profile = dir.path().join("chromium-profile");
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=10000",
    ];
    let user_dir = format!("--user-data-dir={}", profile.display());
    let dom = Command::new(&chromium)
        .args(flags)
        .arg(&user_dir)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        dom.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("class=\"chart\""), "no chart in DOM:\n{dom}");
    assert!(
        dom.matches("<polygon").count() >= 4,
        "graphs are empty:\n{dom}"
    );
    for name in [
        "esp",
        "other",
        "decrypted",
        "uplink",
        "branch",
        "esp 192.168.1.10&gt;198.51.100.7 spi 0x00001001",
    ] {
        assert!(dom.contains(name), "{name} missing from the dashboard");
    }
    let shot = output_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let s = Command::new(&chromium)
        .args(flags)
        .arg(&user_dir)
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1100,1400")
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        s.status.success(),
        "chromium screenshot: {}",
        String::from_utf8_lossy(&s.stderr)
    );
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "screenshot too small"
    );
    c.term();
}

#[test]
fn graph_files_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("graph.db");
    let c = Collector::start(dir.path(), &db, CONFIG);
    feed(&c);
    c.term();
    // The view equals esp + other; decrypted traffic is not in it.
    let j = report_json(&db, &["--by", "view", "--last", "2h"]);
    assert_eq!(j["totals"][0]["view"], "uplink");
    let view = j["totals"][0]["bytes"].as_u64().unwrap();
    let labels = report_json(&db, &["--by", "label", "--last", "2h"]);
    let get = |k: &str| {
        labels["totals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["label"] == k)
            .unwrap()["bytes"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(view, get("esp") + get("other"));
    let tunnels = report_json(&db, &["--by", "tunnel", "--last", "2h"]);
    assert_eq!(tunnels["keys"].as_array().unwrap().len(), 2, "{tunnels}");
    let hosts = report_json(&db, &["--by", "host", "--last", "2h", "--top", "1"]);
    assert_eq!(hosts["totals"][0]["host"], "192.168.1.10");
    assert!(hosts["totals"][0]["bytes_out"].as_u64().unwrap() > 0);
    let table = Command::new(BIN)
        .args([
            "report", "--by", "label", "--last", "2h", "--top", "2", "--db",
        ])
        .arg(&db)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("other") && table.contains("total") && table.contains("bit/s"),
        "{table}"
    );
    for ext in ["svg", "png"] {
        let out = output_dir().join(format!("graph-label.{ext}"));
        let st = Command::new(BIN)
            .args([
                "graph", "--by", "label", "--last", "1h", "--bucket", "5m", "--db",
            ])
            .arg(&db)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "graph: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        assert!(std::fs::metadata(&out).unwrap().len() > 1000);
        if ext == "svg" {
            let svg = std::fs::read_to_string(&out).unwrap();
            assert!(
                svg.contains("<polygon") || svg.contains("<path"),
                "empty svg"
            );
            assert!(svg.contains("decrypted") && svg.contains("esp"));
        }
    }
}
