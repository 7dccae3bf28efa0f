//! Replay of pcapng gives exactly what replay of the pcap of the same packets gives.
//!
//! The project's generator writes a microsecond pcap; Wireshark's `editcap` (a writer nobody
//! here wrote) turns it into pcapng (`-F pcapng`, microsecond interface) and into a
//! nanosecond pcap and its pcapng (`if_tsresol` 9). The probe replays each one to a UDP
//! socket this test holds: the IPFIX datagrams must be byte for byte the same (replay is
//! driven by the capture's timestamps, so the same packets give the same export), and they
//! must account for every packet of the capture.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;

use labelflow_testkit::tools::on_path;
use labelflow_tests::ipfix::ExportLog;
use labelflow_tests::process::find_binary;

const PACKETS: u64 = 20_000;
const FLOWS: u64 = 3_000;

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("labelflow-pcapng-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fn run(prog: &Path, args: &[&str]) {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{} does not run: {e}", prog.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        prog.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Replays `capture` to a fresh socket; returns every datagram the probe sent.
fn replay(probe: &Path, capture: &Path) -> Vec<Vec<u8>> {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sock = socket2::SockRef::from(&rx);
    // Holds the whole export (about 150 datagrams) while the probe runs.
    sock.set_recv_buffer_size(4 << 20).unwrap();
    let target = format!("ipfix://{}", rx.local_addr().unwrap());
    run(
        probe,
        &[
            "--replay",
            capture.to_str().unwrap(),
            "--label",
            "mix",
            "--export",
            &target,
        ],
    );
    // The probe has exited: everything it sent is queued on the socket.
    rx.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        match rx.recv(&mut buf) {
            Ok(n) => out.push(buf[..n].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("recv: {e}"),
        }
    }
    out
}

#[test]
fn pcapng_replays_exactly_like_the_pcap_of_the_same_packets() {
    assert!(
        on_path("editcap"),
        "editcap not installed (apt-get install tshark): scripts/deps.sh installs it"
    );
    let editcap = PathBuf::from("editcap");
    let probe = find_binary("labelflow-probe")
        .expect("labelflow-probe binary (cargo build --workspace --bins)");
    let dir = scratch();
    let pcap = dir.join("mix.pcap");
    run(
        Path::new(env!("CARGO_BIN_EXE_labelflow-gen-capture")),
        &[
            "--packets",
            &PACKETS.to_string(),
            "--flows",
            &FLOWS.to_string(),
            "--seconds",
            "30",
            "--out",
            pcap.to_str().unwrap(),
        ],
    );
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let pcap_s = pcap.to_str().unwrap();
    run(&editcap, &["-F", "pcapng", pcap_s, &path("mix.pcapng")]);
    run(&editcap, &["-F", "nsecpcap", pcap_s, &path("mix-ns.pcap")]);
    run(
        &editcap,
        &["-F", "pcapng", &path("mix-ns.pcap"), &path("mix-ns.pcapng")],
    );
    let pcapng = std::fs::read(dir.join("mix.pcapng")).unwrap();
    assert_eq!(
        pcapng[..4],
        [0x0a, 0x0d, 0x0d, 0x0a],
        "editcap wrote pcapng"
    );

    let reference = replay(&probe, &pcap);
    let mut log = ExportLog::new();
    for d in &reference {
        log.feed(d);
    }
    assert!(log.errors.is_empty(), "{:?}", log.errors);
    let packets: u64 = log.flows.iter().map(|f| f.packets).sum();
    assert_eq!(packets, PACKETS, "every packet of the capture is in a flow");
    assert!(log.flows.len() as u64 >= FLOWS);

    for name in ["mix.pcapng", "mix-ns.pcap", "mix-ns.pcapng"] {
        let got = replay(&probe, &dir.join(name));
        assert_eq!(
            got.len(),
            reference.len(),
            "{name}: datagram count differs from the pcap's"
        );
        for (i, (a, b)) in got.iter().zip(&reference).enumerate() {
            assert_eq!(a, b, "{name}: datagram {i} differs from the pcap's");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
