//! Real IPsec in the lab: a strongSwan `charon` pair negotiating IKEv2 (PSK) between the
//! Internet peer and the gateway, with ESP inside UDP 4500 (RFC 3948).
//!
//! ```text
//!  PREFIX-inet  charon (vici PREFIX-inet.vici)        PREFIX-gw  charon (vici PREFIX-gw.vici)
//!  10.99.0.0/24 ── ipsec0 ══ ESP in UDP 4500 over the wan link ══ ipsec0 ── 198.51.100.0/24 (LAN)
//! ```
//!
//! The kernel here has no ESP transform, so both daemons run the `kernel-libipsec` backend:
//! ESP is done in userspace, decrypted packets enter and leave through the TUN device `ipsec0`,
//! and routes to the remote subnet go through table 220. libipsec only carries ESP inside UDP,
//! hence `encap = yes`. Each daemon gets its own `strongswan.conf` (own vici socket, log to
//! stderr) and a private `/run` (`unshare -m` and a tmpfs), because charon keeps a pid file.
//!
//! Ground truth beside iptables: [`IpsecPair::child_sas`] reads every CHILD_SA with its SPIs and
//! the byte and packet counters of its inner packets (`swanctl --list-sas --raw`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::lab::{Lab, Role};
use crate::netns::{self, io};
use crate::process::Daemon;
use crate::LabError;

/// The charon binary of Debian's `strongswan-charon`.
pub const CHARON: &str = "/usr/lib/ipsec/charon";
/// The IKE connection name both ends use.
pub const CONNECTION: &str = "hq";
/// The CHILD_SA name both ends use.
pub const CHILD: &str = "net";

/// Plugins charon loads: the software crypto of Debian's `libstrongswan` (its openssl plugin
/// is another package), `kernel-libipsec` before `kernel-netlink` (otherwise SAs go to the
/// kernel, which has no ESP transform here), and vici.
const PLUGINS: &str = "random nonce aes sha1 sha2 hmac gmp kdf pem pkcs1 x509 pubkey \
                       socket-default kernel-libipsec kernel-netlink vici updown";

/// How a pair is set up.
#[derive(Debug, Clone)]
pub struct PairConfig {
    /// CHILD_SA rekey interval (strongSwan `rekey_time`); the SA's life is 10 % longer.
    pub rekey_time: Duration,
}

impl Default for PairConfig {
    fn default() -> Self {
        PairConfig {
            rekey_time: Duration::from_secs(3600),
        }
    }
}

/// One CHILD_SA as strongSwan lists it. Counters are of the inner (decrypted) packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSa {
    /// IKE_SA (connection) name.
    pub connection: String,
    /// CHILD_SA config name.
    pub child: String,
    /// strongSwan's unique id of this CHILD_SA.
    pub unique_id: u64,
    pub state: String,
    pub spi_in: u32,
    pub spi_out: u32,
    pub bytes_in: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub packets_out: u64,
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
}

/// Two charon daemons, in the Internet peer and the gateway, with one tunnel between the
/// remote subnet and the LAN. Dropping it stops both daemons.
#[derive(Debug)]
pub struct IpsecPair {
    dir: PathBuf,
    prefix: String,
    daemons: Vec<(Role, Daemon)>,
}

impl IpsecPair {
    /// Starts both daemons, loads their configuration and brings the tunnel up (initiated by
    /// the gateway). Fails with charon's own log when anything does not come up in time.
    pub fn up(lab: &Lab, cfg: &PairConfig) -> Result<IpsecPair, LabError> {
        if !Path::new(CHARON).is_file() {
            return Err(LabError::MissingBinary {
                name: CHARON.into(),
                searched: "Debian strongswan-charon (scripts/deps.sh installs it)".into(),
            });
        }
        let dir = std::env::temp_dir().join(format!("{}-ipsec", lab.prefix()));
        let mut pair = IpsecPair {
            dir: dir.clone(),
            prefix: lab.prefix().to_owned(),
            daemons: Vec::new(),
        };
        let gw = Side {
            role: Role::Gw,
            me: "192.0.2.2",
            peer: "192.0.2.1",
            id: "gw.lab",
            peer_id: "remote.lab",
            local_ts: "198.51.100.0/24",
            remote_ts: crate::lab::addr::REMOTE_NET_V4,
        };
        let inet = Side {
            role: Role::Inet,
            me: "192.0.2.1",
            peer: "192.0.2.2",
            id: "remote.lab",
            peer_id: "gw.lab",
            local_ts: crate::lab::addr::REMOTE_NET_V4,
            remote_ts: "198.51.100.0/24",
        };
        for side in [&inet, &gw] {
            let d = dir.join(side.role.suffix());
            std::fs::create_dir_all(&d).map_err(|e| io(&format!("mkdir {}", d.display()), e))?;
            write(
                &d.join("strongswan.conf"),
                &strongswan_conf(&pair.vici(side.role)),
            )?;
            write(&d.join("swanctl.conf"), &swanctl_conf(side, cfg))?;
            let conf = d.join("strongswan.conf");
            let args = vec![
                format!("STRONGSWAN_CONF={}", conf.display()),
                "unshare".into(),
                "-m".into(),
                "sh".into(),
                "-c".into(),
                format!("mount -t tmpfs none /run && exec {CHARON}"),
            ];
            let mut daemon = Daemon::start(lab, side.role, Path::new("/usr/bin/env"), &args)?;
            let vici = pair.vici(side.role);
            daemon.wait_until("vici socket", Duration::from_secs(20), || {
                Ok(std::os::unix::net::UnixStream::connect(&vici).is_ok())
            })?;
            pair.daemons.push((side.role, daemon));
            pair.swanctl(
                side.role,
                &[
                    "--load-all",
                    "--file",
                    &d.join("swanctl.conf").to_string_lossy(),
                ],
            )?;
        }
        pair.swanctl(
            Role::Gw,
            &["--initiate", "--child", CHILD, "--timeout", "20"],
        )?;
        Ok(pair)
    }

    /// The vici socket of the daemon in `role`.
    pub fn vici(&self, role: Role) -> PathBuf {
        self.dir
            .join(format!("{}-{}.vici", self.prefix, role.suffix()))
    }

    /// `swanctl ARGS --uri unix://VICI` against the daemon in `role`.
    pub fn swanctl(&self, role: Role, args: &[&str]) -> Result<String, LabError> {
        let uri = format!("unix://{}", self.vici(role).display());
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--uri", &uri]);
        let out = netns::run(None, "swanctl", &all, None)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts collecting the SA events of the daemon in `role` (see [`SaMonitor`]).
    pub fn monitor(&self, role: Role) -> Result<SaMonitor, LabError> {
        use std::io::BufRead;
        let uri = format!("unix://{}", self.vici(role).display());
        let mut child = std::process::Command::new("swanctl")
            .args(["--monitor-sa", "--raw", "--uri", &uri])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| io("spawn swanctl --monitor-sa", e))?;
        let out = child.stdout.take().ok_or_else(|| LabError::Daemon {
            name: "swanctl".into(),
            detail: "no stdout".into(),
        })?;
        let lines = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let mut all = sink.lock().unwrap_or_else(|e| e.into_inner());
                all.push_str(&line);
                all.push('\n');
            }
        });
        Ok(SaMonitor {
            child,
            lines,
            reader: Some(reader),
        })
    }

    /// Every CHILD_SA the daemon in `role` lists now, installed or being deleted.
    pub fn child_sas(&self, role: Role) -> Result<Vec<ChildSa>, LabError> {
        parse_list_sas(&self.swanctl(role, &["--list-sas", "--raw"])?)
    }

    /// Stops both daemons (SIGTERM), returning the first failure with charon's log.
    pub fn down(&mut self) -> Result<(), LabError> {
        let mut first = Ok(());
        for (_, mut d) in self.daemons.drain(..) {
            if let Err(e) = d.stop(libc::SIGTERM, Duration::from_secs(10)) {
                first = first.and(Err(e));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        first
    }
}

impl Drop for IpsecPair {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

struct Side {
    role: Role,
    me: &'static str,
    peer: &'static str,
    id: &'static str,
    peer_id: &'static str,
    local_ts: &'static str,
    remote_ts: &'static str,
}

fn write(path: &Path, text: &str) -> Result<(), LabError> {
    std::fs::write(path, text).map_err(|e| io(&format!("write {}", path.display()), e))
}

fn strongswan_conf(vici: &Path) -> String {
    format!(
        "charon {{\n  load = {PLUGINS}\n  install_routes = yes\n  \
         plugins {{\n    vici {{\n      socket = unix://{}\n    }}\n  }}\n  \
         filelog {{\n    stderr {{\n      default = 1\n    }}\n  }}\n}}\n",
        vici.display()
    )
}

fn swanctl_conf(s: &Side, cfg: &PairConfig) -> String {
    let rekey = cfg.rekey_time.as_secs().max(1);
    format!(
        "connections {{\n  {CONNECTION} {{\n    version = 2\n    local_addrs = {me}\n    \
         remote_addrs = {peer}\n    encap = yes\n    proposals = aes128-sha256-modp2048\n    \
         local {{\n      auth = psk\n      id = {id}\n    }}\n    \
         remote {{\n      auth = psk\n      id = {peer_id}\n    }}\n    \
         children {{\n      {CHILD} {{\n        local_ts = {lts}\n        remote_ts = {rts}\n        \
         rekey_time = {rekey}s\n        esp_proposals = aes128-sha256\n        \
         start_action = none\n      }}\n    }}\n  }}\n}}\n\
         secrets {{\n  ike-lab {{\n    id-1 = gw.lab\n    id-2 = remote.lab\n    \
         secret = \"labelflow-lab-psk\"\n  }}\n}}\n",
        me = s.me,
        peer = s.peer,
        id = s.id,
        peer_id = s.peer_id,
        lts = s.local_ts,
        rts = s.remote_ts,
    )
}

/// A value in swanctl's raw output: `k=v`, `k=[a b]` or `k {…}`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Raw {
    Value(String),
    List(Vec<String>),
    Section(BTreeMap<String, Raw>),
}

/// Parses `swanctl --list-sas --raw`: one `list-sa event {IKE {… child-sas {NAME {…}}}}` line
/// per IKE_SA, then `list-sas reply {}`. Also reads the SA events `swanctl --monitor-sa --raw`
/// prints (`child-updown event {…}`, `child-rekey event {… {old {…} new {…}}}`): every
/// section that holds an `spi-in` is a CHILD_SA of the IKE_SA it is nested in.
pub fn parse_list_sas(text: &str) -> Result<Vec<ChildSa>, LabError> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((_, body)) = line.split_once(" event ") else {
            continue;
        };
        let mut tokens = tokenize(body).into_iter().peekable();
        for (connection, ike) in section(&mut tokens)? {
            if let Raw::Section(ike) = ike {
                collect_children(&connection, &ike, &mut out)?;
            }
        }
    }
    Ok(out)
}

fn collect_children(
    connection: &str,
    s: &BTreeMap<String, Raw>,
    out: &mut Vec<ChildSa>,
) -> Result<(), LabError> {
    if s.contains_key("spi-in") {
        out.push(child_sa(connection, s)?);
        return Ok(());
    }
    for v in s.values() {
        if let Raw::Section(inner) = v {
            collect_children(connection, inner, out)?;
        }
    }
    Ok(())
}

/// `swanctl --monitor-sa --raw` against one daemon: the SA events (with each SA's final
/// counters when it goes down or is rekeyed) collected in the background. Stops when dropped.
#[derive(Debug)]
pub struct SaMonitor {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl SaMonitor {
    /// The CHILD_SAs the events so far described.
    pub fn child_sas(&self) -> Result<Vec<ChildSa>, LabError> {
        let text = self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone();
        parse_list_sas(&text)
    }
}

impl Drop for SaMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn child_sa(connection: &str, c: &BTreeMap<String, Raw>) -> Result<ChildSa, LabError> {
    let text = |k: &str| match c.get(k) {
        Some(Raw::Value(v)) => v.clone(),
        _ => String::new(),
    };
    let num = |k: &str| text(k).parse::<u64>().unwrap_or(0);
    let spi = |k: &str| {
        u32::from_str_radix(&text(k), 16).map_err(|_| LabError::Parse {
            what: "swanctl SPI",
            detail: format!("{k}={:?}", text(k)),
        })
    };
    let list = |k: &str| match c.get(k) {
        Some(Raw::List(v)) => v.clone(),
        _ => Vec::new(),
    };
    Ok(ChildSa {
        connection: connection.to_owned(),
        child: text("name"),
        unique_id: num("uniqueid"),
        state: text("state"),
        spi_in: spi("spi-in")?,
        spi_out: spi("spi-out")?,
        bytes_in: num("bytes-in"),
        packets_in: num("packets-in"),
        bytes_out: num("bytes-out"),
        packets_out: num("packets-out"),
        local_ts: list("local-ts"),
        remote_ts: list("remote-ts"),
    })
}

fn tokenize(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in s.chars() {
        match ch {
            '{' | '}' | '[' | ']' | '=' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(ch.to_string());
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn section(
    t: &mut std::iter::Peekable<std::vec::IntoIter<String>>,
) -> Result<BTreeMap<String, Raw>, LabError> {
    let bad = |detail: String| LabError::Parse {
        what: "swanctl --raw output",
        detail,
    };
    if t.next().as_deref() != Some("{") {
        return Err(bad("expected {".into()));
    }
    let mut map = BTreeMap::new();
    loop {
        let key = t.next().ok_or_else(|| bad("unterminated section".into()))?;
        if key == "}" {
            return Ok(map);
        }
        match t.peek().map(String::as_str) {
            Some("=") => {
                t.next();
                if t.peek().map(String::as_str) == Some("[") {
                    t.next();
                    let mut items = Vec::new();
                    loop {
                        let item = t.next().ok_or_else(|| bad("unterminated list".into()))?;
                        if item == "]" {
                            break;
                        }
                        items.push(item);
                    }
                    map.insert(key, Raw::List(items));
                } else {
                    let v = t
                        .next()
                        .ok_or_else(|| bad(format!("{key}= without a value")))?;
                    map.insert(key, Raw::Value(v));
                }
            }
            Some("{") => {
                let s = section(t)?;
                map.insert(key, Raw::Section(s));
            }
            other => return Err(bad(format!("after {key}: {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_swanctl_raw_output() {
        // As strongSwan 5.9.8 printed it for a tunnel mid-rekey (one SA being deleted).
        let text = "list-sa event {hq {uniqueid=1 version=2 state=ESTABLISHED \
            local-host=192.0.2.1 local-port=4500 child-sas {net-2 {name=net uniqueid=2 reqid=1 \
            state=DELETED mode=TUNNEL protocol=ESP encap=yes spi-in=e257a45f spi-out=dcf01304 \
            bytes-in=168 packets-in=2 use-in=9 bytes-out=0 packets-out=0 \
            local-ts=[10.1.0.0/24] remote-ts=[10.2.0.0/24]} net-3 {name=net uniqueid=3 \
            state=INSTALLED spi-in=f6269689 spi-out=000f7c26 bytes-in=0 packets-in=0 \
            bytes-out=84 packets-out=1 local-ts=[10.1.0.0/24 10.1.1.0/24] remote-ts=[]}}}}\n\
            list-sas reply {}\n";
        let sas = parse_list_sas(text).unwrap();
        assert_eq!(sas.len(), 2);
        assert_eq!(
            (
                sas[0].connection.as_str(),
                sas[0].child.as_str(),
                sas[0].state.as_str()
            ),
            ("hq", "net", "DELETED")
        );
        assert_eq!((sas[0].spi_in, sas[0].spi_out), (0xe257_a45f, 0xdcf0_1304));
        assert_eq!((sas[0].bytes_in, sas[0].packets_in), (168, 2));
        assert_eq!(sas[1].spi_out, 0x000f_7c26);
        assert_eq!((sas[1].bytes_out, sas[1].packets_out), (84, 1));
        assert_eq!(sas[1].local_ts, vec!["10.1.0.0/24", "10.1.1.0/24"]);
        assert!(sas[1].remote_ts.is_empty());
        assert!(parse_list_sas("list-sa event {hq {child-sas {x {spi-in=zz}}}}").is_err());
        // A rekey event nests the old and the new SA one level deeper; up=yes is no IKE_SA.
        let ev = "child-rekey event {hq {uniqueid=1 child-sas {net-2 {old {name=net \
            uniqueid=2 spi-in=0000000a spi-out=0000000b bytes-in=10 packets-in=1 bytes-out=20 \
            packets-out=2} new {name=net uniqueid=3 spi-in=0000000c spi-out=0000000d}}}}}\n\
            child-updown event {up=yes hq {child-sas {net-4 {name=net uniqueid=4 \
            spi-in=0000000e spi-out=0000000f}}}}\n";
        let sas = parse_list_sas(ev).unwrap();
        let ids: Vec<(u64, u32, u64)> = sas
            .iter()
            .map(|s| (s.unique_id, s.spi_in, s.packets_out))
            .collect();
        assert_eq!(ids, vec![(3, 0xc, 0), (2, 0xa, 2), (4, 0xe, 0)]);
        assert!(parse_list_sas("list-sa event {hq {a=").is_err());
    }
}
