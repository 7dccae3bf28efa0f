//! The labelflow lab ruleset (iptables and nftables, equivalent), loading it into the gateway
//! namespace, detaching it, and reading its counters.
//!
//! Every packet crossing the gateway's uplink (`wan`: input, output, forwarded either way) goes
//! through one chain that sends it to exactly one group:
//!
//! | group | label | what |
//! |---|---|---|
//! | 1 | `esp` | ESP (IP protocol 50) on the uplink, any SPI |
//! | 2 | `vpn` | traffic of the remote tunnel subnet (10.99.0.0/24, 2001:db8:99::/64) |
//! | 3 | `other` | everything else on the uplink |
//!
//! On a real policy-based IPsec gateway group 2 would match the decrypted packets with
//! `-m policy --dir in --pol ipsec` (nft `meta ipsec exists`). The kernel of the lab has no ESP,
//! so the lab plays those inner packets from the Internet peer and matches them by their
//! source (or destination) subnet instead; the NFLOG path is the same.
//!
//! Each group's chain starts with a rule that only counts, commented `labelflow-count:LABEL`:
//! its packet and byte counters are the ground truth the probe's export is checked against.
//! ESP addressed to the gateway itself is dropped after logging, otherwise this kernel (no
//! in-kernel ESP) answers with ICMP protocol-unreachable.

use std::collections::BTreeMap;

use crate::lab::{addr, Lab, Role, GW_WAN_IF};
use crate::LabError;

/// The lab's groups: (NFLOG group, label).
pub const GROUPS: [(u16, &str); 3] = [(1, "esp"), (2, "vpn"), (3, "other")];

/// Comment prefix of the counting rules.
pub const COUNT_COMMENT: &str = "labelflow-count:";

/// Which firewall front end loads the ruleset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firewall {
    /// `iptables-restore` + `ip6tables-restore`.
    Iptables,
    /// `nft -f` (one `inet` table for both families).
    Nftables,
}

impl Firewall {
    pub fn parse(s: &str) -> Option<Firewall> {
        match s {
            "iptables" => Some(Firewall::Iptables),
            "nft" | "nftables" => Some(Firewall::Nftables),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Firewall::Iptables => "iptables",
            Firewall::Nftables => "nftables",
        }
    }
}

/// Packet and byte counters of one rule (or one group, summed over families).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl std::ops::AddAssign for Counter {
    fn add_assign(&mut self, rhs: Counter) {
        self.packets += rhs.packets;
        self.bytes += rhs.bytes;
    }
}

/// Ground-truth counters per label.
pub type Counters = BTreeMap<String, Counter>;

/// The iptables ruleset for one family (`restore` format). `v6` selects the ip6tables variant.
pub fn iptables_ruleset(v6: bool) -> String {
    let remote = if v6 {
        addr::REMOTE_NET_V6
    } else {
        addr::REMOTE_NET_V4
    };
    let mut s = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:LF_UPLINK - [0:0]\n");
    for (_, label) in GROUPS {
        s.push_str(&format!(":LF_{} - [0:0]\n", label.to_uppercase()));
    }
    let w = GW_WAN_IF;
    s.push_str(&format!("-A INPUT -i {w} -j LF_UPLINK\n"));
    s.push_str(&format!(
        "-A INPUT -i {w} -p esp -m comment --comment \"no in-kernel ESP: drop after logging\" -j DROP\n"
    ));
    s.push_str(&format!("-A OUTPUT -o {w} -j LF_UPLINK\n"));
    s.push_str(&format!("-A FORWARD -i {w} -j LF_UPLINK\n"));
    s.push_str(&format!("-A FORWARD -o {w} -j LF_UPLINK\n"));
    // `-g`: the group chain returns to the base chain, so each packet lands in one group.
    s.push_str("-A LF_UPLINK -p esp -g LF_ESP\n");
    s.push_str(&format!(
        "-A LF_UPLINK -s {remote} -m comment --comment \"decrypted tunnel traffic (real gateways: -m policy --dir in --pol ipsec)\" -g LF_VPN\n"
    ));
    s.push_str(&format!(
        "-A LF_UPLINK -d {remote} -m comment --comment \"tunnel traffic before encryption (real gateways: -m policy --dir out --pol ipsec)\" -g LF_VPN\n"
    ));
    s.push_str("-A LF_UPLINK -g LF_OTHER\n");
    for (group, label) in GROUPS {
        let chain = format!("LF_{}", label.to_uppercase());
        s.push_str(&format!(
            "-A {chain} -m comment --comment \"{COUNT_COMMENT}{label}\"\n"
        ));
        s.push_str(&format!(
            "-A {chain} -j NFLOG --nflog-group {group} --nflog-prefix {label}\n"
        ));
    }
    s.push_str("COMMIT\n");
    s
}

/// The nftables ruleset (one `inet labelflow` table), equivalent to [`iptables_ruleset`].
pub fn nft_ruleset() -> String {
    let w = GW_WAN_IF;
    let mut s =
        String::from("table inet labelflow\ndelete table inet labelflow\ntable inet labelflow {\n");
    for (_, label) in GROUPS {
        s.push_str(&format!(
            "  chain lf_{label} {{\n    counter comment \"{COUNT_COMMENT}{label}\"\n    log prefix \"{label}\" group {}\n  }}\n",
            GROUPS.iter().find(|(_, l)| *l == label).map(|(g, _)| *g).unwrap_or(0)
        ));
    }
    s.push_str(&format!(
        "  chain lf_uplink {{\n    meta l4proto esp goto lf_esp\n    ip saddr {v4} goto lf_vpn comment \"decrypted tunnel traffic (real gateways: meta ipsec exists)\"\n    ip6 saddr {v6} goto lf_vpn\n    ip daddr {v4} goto lf_vpn comment \"tunnel traffic before encryption (real gateways: rt ipsec exists)\"\n    ip6 daddr {v6} goto lf_vpn\n    goto lf_other\n  }}\n",
        v4 = addr::REMOTE_NET_V4,
        v6 = addr::REMOTE_NET_V6
    ));
    s.push_str(&format!(
        "  chain input {{\n    type filter hook input priority filter; policy accept;\n    iifname \"{w}\" jump lf_uplink\n    iifname \"{w}\" meta l4proto esp drop comment \"no in-kernel ESP: drop after logging\"\n  }}\n"
    ));
    s.push_str(&format!(
        "  chain output {{\n    type filter hook output priority filter; policy accept;\n    oifname \"{w}\" jump lf_uplink\n  }}\n"
    ));
    s.push_str(&format!(
        "  chain forward {{\n    type filter hook forward priority filter; policy accept;\n    iifname \"{w}\" jump lf_uplink\n    oifname \"{w}\" jump lf_uplink\n  }}\n}}\n"
    ));
    s
}

/// Loads the ruleset into the gateway namespace (atomically per family; counters start at 0).
pub fn load(lab: &Lab, fw: Firewall) -> Result<(), LabError> {
    match fw {
        Firewall::Iptables => {
            lab.exec_stdin(Role::Gw, "iptables-restore", &[], &iptables_ruleset(false))?;
            lab.exec_stdin(Role::Gw, "ip6tables-restore", &[], &iptables_ruleset(true))?;
        }
        Firewall::Nftables => {
            lab.exec_stdin(Role::Gw, "nft", &["-f", "-"], &nft_ruleset())?;
        }
    }
    Ok(())
}

/// Stops counting and logging at once by emptying the base chains (one transaction per
/// family), keeping the group chains and their counters for [`counters`].
///
/// After this, late stray packets (neighbour discovery, TCP teardown) change neither the
/// counters nor what the probe receives, so the two can be compared.
pub fn detach(lab: &Lab, fw: Firewall) -> Result<(), LabError> {
    match fw {
        Firewall::Iptables => {
            let flush = "*filter\n-F INPUT\n-F OUTPUT\n-F FORWARD\nCOMMIT\n";
            lab.exec_stdin(Role::Gw, "iptables-restore", &["--noflush"], flush)?;
            lab.exec_stdin(Role::Gw, "ip6tables-restore", &["--noflush"], flush)?;
        }
        Firewall::Nftables => {
            let flush = "flush chain inet labelflow input\nflush chain inet labelflow output\nflush chain inet labelflow forward\n";
            lab.exec_stdin(Role::Gw, "nft", &["-f", "-"], flush)?;
        }
    }
    Ok(())
}

/// Removes the ruleset.
pub fn unload(lab: &Lab, fw: Firewall) -> Result<(), LabError> {
    match fw {
        Firewall::Iptables => {
            let empty = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
            lab.exec_stdin(Role::Gw, "iptables-restore", &[], empty)?;
            lab.exec_stdin(Role::Gw, "ip6tables-restore", &[], empty)?;
        }
        Firewall::Nftables => {
            lab.exec(Role::Gw, "nft", &["delete", "table", "inet", "labelflow"])?;
        }
    }
    Ok(())
}

/// Reads the counting rules' counters per label (IPv4 and IPv6 summed for iptables).
pub fn counters(lab: &Lab, fw: Firewall) -> Result<Counters, LabError> {
    let mut out = Counters::new();
    match fw {
        Firewall::Iptables => {
            for prog in ["iptables-save", "ip6tables-save"] {
                let o = lab.exec(Role::Gw, prog, &["-c", "-t", "filter"])?;
                for (label, c) in parse_iptables_save(&String::from_utf8_lossy(&o.stdout))? {
                    *out.entry(label).or_default() += c;
                }
            }
        }
        Firewall::Nftables => {
            let o = lab.exec(
                Role::Gw,
                "nft",
                &["-j", "list", "table", "inet", "labelflow"],
            )?;
            for (label, c) in parse_nft_json(&String::from_utf8_lossy(&o.stdout))? {
                *out.entry(label).or_default() += c;
            }
        }
    }
    Ok(out)
}

/// Counters of the `labelflow-count:LABEL` rules in `iptables-save -c` output
/// (`[packets:bytes] -A CHAIN ... --comment labelflow-count:LABEL`).
pub fn parse_iptables_save(text: &str) -> Result<Vec<(String, Counter)>, LabError> {
    let mut found = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix('[') else {
            continue;
        };
        let Some(pos) = line.find(COUNT_COMMENT) else {
            continue;
        };
        let bad = || LabError::Parse {
            what: "iptables-save counters",
            detail: line.to_owned(),
        };
        let (nums, _) = rest.split_once(']').ok_or_else(bad)?;
        let (p, b) = nums.split_once(':').ok_or_else(bad)?;
        let label: String = line[pos + COUNT_COMMENT.len()..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '"')
            .collect();
        found.push((
            label,
            Counter {
                packets: p.parse().map_err(|_| bad())?,
                bytes: b.parse().map_err(|_| bad())?,
            },
        ));
    }
    Ok(found)
}

/// Counters of the rules commented `labelflow-count:LABEL` in `nft -j list ...` output.
pub fn parse_nft_json(text: &str) -> Result<Vec<(String, Counter)>, LabError> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| LabError::Parse {
        what: "nft json",
        detail: e.to_string(),
    })?;
    let mut found = Vec::new();
    let items = v["nftables"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for item in items {
        let rule = &item["rule"];
        let Some(label) = rule["comment"]
            .as_str()
            .and_then(|c| c.strip_prefix(COUNT_COMMENT))
        else {
            continue;
        };
        let counter = rule["expr"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|e| e.get("counter"))
            .ok_or_else(|| LabError::Parse {
                what: "nft json",
                detail: format!("rule {label} has no counter"),
            })?;
        found.push((
            label.to_owned(),
            Counter {
                packets: counter["packets"].as_u64().unwrap_or(0),
                bytes: counter["bytes"].as_u64().unwrap_or(0),
            },
        ));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iptables_save_counters() {
        let text = "# Generated by iptables-save\n*filter\n:INPUT ACCEPT [10:840]\n\
            [3:252] -A LF_ESP -m comment --comment \"labelflow-count:esp\"\n\
            [3:252] -A LF_ESP -j NFLOG --nflog-prefix esp --nflog-group 1\n\
            [7:1234] -A LF_OTHER -m comment --comment labelflow-count:other\n\
            [0:0] -A LF_UPLINK -g LF_OTHER\nCOMMIT\n";
        let got = parse_iptables_save(text).unwrap();
        assert_eq!(
            got,
            vec![
                (
                    "esp".to_owned(),
                    Counter {
                        packets: 3,
                        bytes: 252
                    }
                ),
                (
                    "other".to_owned(),
                    Counter {
                        packets: 7,
                        bytes: 1234
                    }
                ),
            ]
        );
        assert!(
            parse_iptables_save("[x:1] -A C -m comment --comment labelflow-count:esp").is_err()
        );
    }

    #[test]
    fn parses_nft_json_counters() {
        let text = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "labelflow", "handle": 1}},
            {"rule": {"family": "inet", "table": "labelflow", "chain": "lf_vpn", "handle": 4,
              "comment": "labelflow-count:vpn", "expr": [{"counter": {"packets": 5, "bytes": 420}}]}},
            {"rule": {"family": "inet", "table": "labelflow", "chain": "lf_vpn", "handle": 5,
              "expr": [{"log": {"prefix": "vpn", "group": 2}}]}}]}"#;
        let got = parse_nft_json(text).unwrap();
        assert_eq!(
            got,
            vec![(
                "vpn".to_owned(),
                Counter {
                    packets: 5,
                    bytes: 420
                }
            )]
        );
    }

    #[test]
    fn rulesets_name_every_group() {
        let v4 = iptables_ruleset(false);
        let v6 = iptables_ruleset(true);
        let nft = nft_ruleset();
        for (group, label) in GROUPS {
            for text in [&v4, &v6] {
                assert!(text.contains(&format!("--nflog-group {group} ")), "{text}");
                assert!(text.contains(&format!("{COUNT_COMMENT}{label}")));
            }
            assert!(nft.contains(&format!("group {group}\n")), "{nft}");
            assert!(nft.contains(&format!("{COUNT_COMMENT}{label}")));
        }
        assert!(v6.contains(addr::REMOTE_NET_V6) && !v6.contains(addr::REMOTE_NET_V4));
    }
}
