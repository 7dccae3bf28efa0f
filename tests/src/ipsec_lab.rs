//! Real IPsec from the shell and in tests: traffic through the tunnels of a
//! [`strongswan::IpsecPair`](crate::strongswan::IpsecPair), and a pair that outlives the
//! command that started it (the demo and the ipsec-gateway example start it with
//! `labelflow-lab ipsec up`, and `labelflow-lab down` removes it with the lab).
//!
//! ```text
//!  LAN 198.51.100.2 ──► gw ══ hq (ESP in UDP 4500) ══ inet 10.99.0.1       UDP + ping
//!                       gw ══ rw (ESP in UDP 4500, via the NAT) ══ rw 10.77.0.5
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::lab::{addr, Lab, Role};
use crate::strongswan::{IpsecPair, PairConfig, RW_INNER};
use crate::{netns, traffic, LabError};

/// What one round sent and got through, per tunnel: (datagrams and echo requests sent,
/// answered or received).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    pub hq: (u64, u64),
    pub rw: (u64, u64),
}

/// The road warrior's namespace of the lab `prefix`.
pub fn road_warrior_ns(prefix: &str) -> String {
    format!("{prefix}-rw")
}

/// One round of traffic from the LAN host through both tunnels: 20 UDP datagrams of 300
/// bytes and 2 pings to the site's subnet, 10 datagrams and 2 pings to the road warrior
/// (with `road_warrior`). Datagrams that do not arrive within the receive timeout are
/// counted as lost, not retried.
pub fn round(lab: &Lab, road_warrior: bool) -> Result<Round, LabError> {
    let lan = SocketAddr::new(IpAddr::V4(addr::LAN_V4), 40_000);
    let lan_ip = IpAddr::V4(addr::LAN_V4);
    let remote = IpAddr::V4(addr::REMOTE_V4);
    let mut r = Round::default();
    let c = traffic::udp(
        lab,
        Role::Lan,
        lan,
        Role::Inet,
        SocketAddr::new(remote, 5_000),
        20,
        300,
    )?;
    let (_, pinged) = traffic::ping(lab, Role::Lan, lan_ip, remote, 2, 56)?;
    r.hq = (22, c.packets + pinged);
    if road_warrior {
        let inner: IpAddr = RW_INNER.parse().expect("literal address");
        // The road warrior's namespace is no lab role: its receiver is bound there directly.
        let to = SocketAddr::new(inner, 5_000);
        let rx = netns::udp_socket(&road_warrior_ns(lab.prefix()), to, None)?;
        rx.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| netns::io("udp timeout", e))?;
        let tx = netns::udp_socket(&lab.lan(), lan, None)?;
        let mut buf = [0u8; 512];
        let mut got = 0;
        for _ in 0..10 {
            tx.send_to(&[0x5a; 300], to)
                .map_err(|e| netns::io("send to the road warrior", e))?;
            if rx.recv_from(&mut buf).is_ok() {
                got += 1;
            }
        }
        let (_, pinged) = traffic::ping(lab, Role::Lan, lan_ip, inner, 2, 56)?;
        r.rw = (12, got + pinged);
    }
    Ok(r)
}

/// Starts the pair with a road warrior (`rekey` as the CHILD_SA rekey interval) and leaves
/// it running after this process ends; returns the gateway's vici socket.
pub fn up_kept(lab: &Lab, rekey: Duration) -> Result<std::path::PathBuf, LabError> {
    let pair = IpsecPair::up(
        lab,
        &PairConfig {
            rekey_time: rekey,
            road_warrior: true,
        },
    )?;
    let vici = pair.vici(Role::Gw);
    pair.keep();
    Ok(vici)
}

/// `repeat` rounds through both tunnels; prints `tunnel NAME sent N through M` per tunnel.
pub fn rounds(lab: &Lab, repeat: u32) -> Result<String, LabError> {
    let mut sum = Round::default();
    for _ in 0..repeat {
        let r = round(lab, true)?;
        sum.hq = (sum.hq.0 + r.hq.0, sum.hq.1 + r.hq.1);
        sum.rw = (sum.rw.0 + r.rw.0, sum.rw.1 + r.rw.1);
    }
    Ok(format!(
        "tunnel hq sent {} through {}\ntunnel rw sent {} through {}\n",
        sum.hq.0, sum.hq.1, sum.rw.0, sum.rw.1
    ))
}

/// The gateway's CHILD_SAs of a kept pair, one per line: `CONNECTION UNIQUEID STATE SPI_IN
/// SPI_OUT BYTES_IN PACKETS_IN BYTES_OUT PACKETS_OUT` (SPIs in hexadecimal).
pub fn sas_text(lab: &Lab) -> Result<String, LabError> {
    let mut out = String::new();
    for s in IpsecPair::child_sas_at(&IpsecPair::vici_of(lab.prefix(), "gw"))? {
        out.push_str(&format!(
            "{} {} {} {:08x} {:08x} {} {} {} {}\n",
            s.connection,
            s.unique_id,
            s.state,
            s.spi_in,
            s.spi_out,
            s.bytes_in,
            s.packets_in,
            s.bytes_out,
            s.packets_out
        ));
    }
    Ok(out)
}
