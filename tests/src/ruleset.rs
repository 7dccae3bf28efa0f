//! Rulesets from files (an example's own `rules.iptables` / `rules.nft` and lab overlays):
//! loading them into the gateway, detaching them, and reading every commented counter.
//!
//! Counter keys are kept whole (`labelflow-count:esp`, `tunnel:hq:esp`, `naive:wan`) and
//! summed over every rule or object with the same key:
//!
//! | source | key |
//! |---|---|
//! | iptables / ip6tables rule with `-m comment --comment C`, any table | `C` |
//! | nft named counter | its comment, else its name |
//! | nft rule with an anonymous `counter` and a comment | the rule's comment |
//! | nft set element with a counter | `SET:ELEMENT` (`host_out:198.51.100.2`) |
//!
//! Whitespace in a key becomes `_`, so that `KEY PACKETS BYTES` lines stay three fields.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::lab::{Lab, Role};
use crate::rules::{Counter, Counters, Firewall};
use crate::LabError;

/// Built-in chains of every iptables table.
const BUILTIN_CHAINS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// Which iptables front end a ruleset file is for: `*.ip6tables` (or `*.ip6tables.*`) files
/// are IPv6, every other file IPv4.
fn is_ip6tables_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains("ip6tables"))
}

fn read(path: &Path) -> Result<String, LabError> {
    std::fs::read_to_string(path).map_err(|source| LabError::Io {
        what: format!("read {}", path.display()),
        source,
    })
}

/// Loads ruleset files into the gateway, in order. iptables: the first file of each family
/// with `iptables-restore` (replacing the tables it names), the next ones with `--noflush`
/// (overlays: added to what is there); nft: `nft -f` each (the files say what they replace).
pub fn load_files(lab: &Lab, fw: Firewall, files: &[PathBuf]) -> Result<(), LabError> {
    let mut restored = BTreeSet::new();
    for path in files {
        let text = read(path)?;
        match fw {
            Firewall::Iptables => {
                let v6 = is_ip6tables_file(path);
                let prog = if v6 {
                    "ip6tables-restore"
                } else {
                    "iptables-restore"
                };
                let args: &[&str] = if restored.insert(v6) {
                    &[]
                } else {
                    &["--noflush"]
                };
                lab.exec_stdin(Role::Gw, prog, args, &text)?;
            }
            Firewall::Nftables => {
                lab.exec_stdin(Role::Gw, "nft", &["-f", "-"], &text)?;
            }
        }
    }
    Ok(())
}

/// Stops counting and logging at once for rulesets loaded from `files`, keeping every counter
/// readable: iptables: the built-in chains each file declares or adds rules to are flushed,
/// per table, in one `iptables-restore --noflush` transaction per family; nft: every base
/// chain (a chain with a hook) of the tables the files name is flushed, in one transaction.
pub fn detach_files(lab: &Lab, fw: Firewall, files: &[PathBuf]) -> Result<(), LabError> {
    match fw {
        Firewall::Iptables => {
            for v6 in [false, true] {
                let mut chains: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
                for path in files.iter().filter(|p| is_ip6tables_file(p) == v6) {
                    for (table, cs) in iptables_builtin_chains(&read(path)?) {
                        chains.entry(table).or_default().extend(cs);
                    }
                }
                if chains.is_empty() {
                    continue;
                }
                let prog = if v6 {
                    "ip6tables-restore"
                } else {
                    "iptables-restore"
                };
                lab.exec_stdin(
                    Role::Gw,
                    prog,
                    &["--noflush"],
                    &iptables_flush_script(&chains),
                )?;
            }
        }
        Firewall::Nftables => {
            let mut tables = BTreeSet::new();
            for path in files {
                tables.extend(nft_tables(&read(path)?));
            }
            let mut script = String::new();
            for (family, name) in &tables {
                let out = lab.exec(Role::Gw, "nft", &["-j", "list", "table", family, name])?;
                for chain in nft_base_chains(&String::from_utf8_lossy(&out.stdout))? {
                    script.push_str(&format!("flush chain {family} {name} {chain}\n"));
                }
            }
            if !script.is_empty() {
                lab.exec_stdin(Role::Gw, "nft", &["-f", "-"], &script)?;
            }
        }
    }
    Ok(())
}

/// Per `*table` of an iptables-restore file, the built-in chains it declares (`:INPUT ACCEPT
/// [0:0]`) or appends / inserts rules to.
pub fn iptables_builtin_chains(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut table: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix('*') {
            table = Some(t.trim().to_owned());
            out.entry(t.trim().to_owned()).or_default();
            continue;
        }
        let Some(t) = &table else { continue };
        let chain = if let Some(decl) = line.strip_prefix(':') {
            decl.split_whitespace().next()
        } else if line.starts_with("-A ") || line.starts_with("-I ") {
            line.split_whitespace().nth(1)
        } else {
            None
        };
        if let Some(c) = chain.filter(|c| BUILTIN_CHAINS.contains(c)) {
            out.entry(t.clone()).or_default().insert(c.to_owned());
        }
    }
    out.retain(|_, cs| !cs.is_empty());
    out
}

/// An iptables-restore `--noflush` script flushing the given chains (one transaction).
pub fn iptables_flush_script(chains: &BTreeMap<String, BTreeSet<String>>) -> String {
    let mut s = String::new();
    for (table, cs) in chains {
        s.push_str(&format!("*{table}\n"));
        for c in cs {
            s.push_str(&format!("-F {c}\n"));
        }
        s.push_str("COMMIT\n");
    }
    s
}

/// The tables an nft file names (`table`, `add table`, `delete table`, and rule commands such
/// as `insert rule FAMILY TABLE ...`): (family, name); the family defaults to `ip`.
pub fn nft_tables(text: &str) -> BTreeSet<(String, String)> {
    const FAMILIES: [&str; 6] = ["ip", "ip6", "inet", "arp", "bridge", "netdev"];
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let words: Vec<&str> = line
            .split_whitespace()
            .map(|w| w.trim_end_matches(['{', ';']))
            .filter(|w| !w.is_empty())
            .collect();
        let rest: &[&str] = match words.as_slice() {
            ["table", rest @ ..] => rest,
            ["add" | "create" | "delete" | "flush", "table", rest @ ..] => rest,
            ["add" | "insert" | "replace" | "delete", "rule", rest @ ..] => rest,
            ["add" | "create", "chain" | "set" | "map" | "counter", rest @ ..] => rest,
            _ => continue,
        };
        match rest {
            [family, name, ..] if FAMILIES.contains(family) => {
                out.insert(((*family).to_owned(), (*name).to_owned()));
            }
            [name, ..] if !FAMILIES.contains(name) => {
                out.insert(("ip".to_owned(), (*name).to_owned()));
            }
            _ => {}
        }
    }
    out
}

fn nft_items(text: &str) -> Result<Vec<serde_json::Value>, LabError> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| LabError::Parse {
        what: "nft json",
        detail: e.to_string(),
    })?;
    Ok(v["nftables"].as_array().cloned().unwrap_or_default())
}

/// Names of the base chains (chains with a hook) in `nft -j list ...` output.
pub fn nft_base_chains(text: &str) -> Result<Vec<String>, LabError> {
    Ok(nft_items(text)?
        .iter()
        .filter_map(|i| i.get("chain"))
        .filter(|c| c.get("hook").is_some())
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect())
}

/// Whitespace in a key becomes `_`.
fn key(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join("_")
}

fn counter_of(v: &serde_json::Value) -> Counter {
    Counter {
        packets: v["packets"].as_u64().unwrap_or(0),
        bytes: v["bytes"].as_u64().unwrap_or(0),
    }
}

/// Every commented rule's counter in `iptables-save -c` output (any table), with its comment.
pub fn parse_iptables_save_comments(text: &str) -> Result<Vec<(String, Counter)>, LabError> {
    let mut found = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix('[') else {
            continue;
        };
        let Some(pos) = line.find("--comment ") else {
            continue;
        };
        let bad = || LabError::Parse {
            what: "iptables-save counters",
            detail: line.to_owned(),
        };
        let (nums, _) = rest.split_once(']').ok_or_else(bad)?;
        let (p, b) = nums.split_once(':').ok_or_else(bad)?;
        let comment = &line[pos + "--comment ".len()..];
        let text = match comment.strip_prefix('"') {
            // Quoted: up to the closing quote; `\"` and `\\` are escapes.
            Some(q) => {
                let mut s = String::new();
                let mut chars = q.chars();
                loop {
                    match chars.next().ok_or_else(bad)? {
                        '\\' => s.push(chars.next().ok_or_else(bad)?),
                        '"' => break,
                        c => s.push(c),
                    }
                }
                s
            }
            None => comment.split_whitespace().next().unwrap_or("").to_owned(),
        };
        found.push((
            key(&text),
            Counter {
                packets: p.parse().map_err(|_| bad())?,
                bytes: b.parse().map_err(|_| bad())?,
            },
        ));
    }
    Ok(found)
}

/// The tables present in `iptables-save` output (`*mangle`, ...).
pub fn iptables_save_tables(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix('*'))
        .map(|t| t.trim().to_owned())
        .collect()
}

/// Named counters in `nft -j list counters` (or `reset counters`) output: key = comment, else
/// the counter's name.
pub fn parse_nft_named_counters(text: &str) -> Result<Vec<(String, Counter)>, LabError> {
    Ok(nft_items(text)?
        .iter()
        .filter_map(|i| i.get("counter"))
        .map(|c| {
            let k = c["comment"].as_str().or(c["name"].as_str()).unwrap_or("");
            (key(k), counter_of(c))
        })
        .collect())
}

/// Rules with a comment and an anonymous counter in `nft -j list ruleset` output.
pub fn parse_nft_rule_counters(text: &str) -> Result<Vec<(String, Counter)>, LabError> {
    let mut found = Vec::new();
    for rule in nft_items(text)?.iter().filter_map(|i| i.get("rule")) {
        let Some(comment) = rule["comment"].as_str() else {
            continue;
        };
        // An anonymous counter is an object; a reference to a named one is its name.
        let anon = rule["expr"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("counter"))
            .find(|c| c.is_object());
        if let Some(c) = anon {
            found.push((key(comment), counter_of(c)));
        }
    }
    Ok(found)
}

/// An element value as nft prints it: addresses and numbers as they are, concatenations
/// joined with `.`, prefixes `A/LEN`, ranges `A-B`.
fn element_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => {
            if let Some(parts) = o.get("concat").and_then(|c| c.as_array()) {
                parts.iter().map(element_text).collect::<Vec<_>>().join(".")
            } else if let Some(p) = o.get("prefix") {
                format!("{}/{}", element_text(&p["addr"]), element_text(&p["len"]))
            } else if let Some(r) = o.get("range").and_then(|r| r.as_array()) {
                r.iter().map(element_text).collect::<Vec<_>>().join("-")
            } else {
                v.to_string()
            }
        }
        other => other.to_string(),
    }
}

/// Set elements with counters in `nft -j list ruleset` output, as `SET:ELEMENT`; also the
/// (family, table, set) of every set that counts its elements.
pub type SetCounters = (Vec<(String, Counter)>, Vec<(String, String, String)>);

pub fn parse_nft_set_counters(text: &str) -> Result<SetCounters, LabError> {
    let mut found = Vec::new();
    let mut counted = Vec::new();
    for set in nft_items(text)?.iter().filter_map(|i| i.get("set")) {
        let name = set["name"].as_str().unwrap_or("");
        let has_counter = set["stmt"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s.get("counter").is_some());
        let mut any = false;
        for e in set["elem"].as_array().into_iter().flatten() {
            let Some(elem) = e.get("elem") else { continue };
            let Some(c) = elem.get("counter") else {
                continue;
            };
            any = true;
            found.push((
                key(&format!("{name}:{}", element_text(&elem["val"]))),
                counter_of(c),
            ));
        }
        if has_counter || any {
            counted.push((
                set["family"].as_str().unwrap_or("").to_owned(),
                set["table"].as_str().unwrap_or("").to_owned(),
                name.to_owned(),
            ));
        }
    }
    Ok((found, counted))
}

fn sum(into: &mut Counters, found: Vec<(String, Counter)>) {
    for (k, c) in found {
        *into.entry(k).or_default() += c;
    }
}

/// Every commented counter of the gateway's ruleset (see the module documentation), summed
/// per key. With `zero`, they are zeroed once read:
///
/// - iptables: `iptables-save -c`, then `-Z` per table present (and the same for ip6tables).
///   Packets counted between the two are lost to both periods: a window of one `iptables`
///   process start per table (milliseconds).
/// - nft: named counters with `reset counters`, whose output is the values it reset (read and
///   reset are one operation: nothing is lost). Rules' anonymous counters with `reset rules`
///   the same way (nft 1.0.7 and later; older nft cannot zero them and this fails). Counted
///   set elements: read from the ruleset, then the set is flushed (its elements and their
///   counters go; anything counted in between is lost).
pub fn all_counters(lab: &Lab, fw: Firewall, zero: bool) -> Result<Counters, LabError> {
    let mut out = Counters::new();
    match fw {
        Firewall::Iptables => {
            for (save, prog) in [
                ("iptables-save", "iptables"),
                ("ip6tables-save", "ip6tables"),
            ] {
                let o = lab.exec(Role::Gw, save, &["-c"])?;
                let text = String::from_utf8_lossy(&o.stdout);
                sum(&mut out, parse_iptables_save_comments(&text)?);
                if zero {
                    for t in iptables_save_tables(&text) {
                        lab.exec(Role::Gw, prog, &["-t", &t, "-Z"])?;
                    }
                }
            }
        }
        Firewall::Nftables => {
            let verb = if zero { "reset" } else { "list" };
            let o = lab.exec(Role::Gw, "nft", &["-j", verb, "counters"])?;
            sum(
                &mut out,
                parse_nft_named_counters(&String::from_utf8_lossy(&o.stdout))?,
            );
            let o = lab.exec(Role::Gw, "nft", &["-j", "list", "ruleset"])?;
            let ruleset = String::from_utf8_lossy(&o.stdout).into_owned();
            let rules = parse_nft_rule_counters(&ruleset)?;
            if zero && !rules.is_empty() {
                let o = lab.exec(Role::Gw, "nft", &["-j", "reset", "rules"]).map_err(|e| {
                    LabError::Daemon {
                        name: "nft".to_owned(),
                        detail: format!(
                            "cannot zero the rules' anonymous counters ({e}); `reset rules` needs nft 1.0.7 or later, or use named counters"
                        ),
                    }
                })?;
                sum(
                    &mut out,
                    parse_nft_rule_counters(&String::from_utf8_lossy(&o.stdout))?,
                );
            } else {
                sum(&mut out, rules);
            }
            let (elements, counted_sets) = parse_nft_set_counters(&ruleset)?;
            sum(&mut out, elements);
            if zero && !counted_sets.is_empty() {
                let script: String = counted_sets
                    .iter()
                    .map(|(f, t, s)| format!("flush set {f} {t} {s}\n"))
                    .collect();
                lab.exec_stdin(Role::Gw, "nft", &["-f", "-"], &script)?;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_builtin_chains_per_table() {
        let text = "# comment\n*mangle\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
            :LF_ESP - [0:0]\n-A PREROUTING -i wan -j LF_UP_IN\n-A LF_ESP -j NFLOG\nCOMMIT\n\
            *filter\n-A INPUT -i wan -p esp -j DROP\nCOMMIT\n*nat\n:LF_X - [0:0]\nCOMMIT\n";
        let got = iptables_builtin_chains(text);
        let want: BTreeMap<String, BTreeSet<String>> = [
            ("filter", vec!["INPUT"]),
            ("mangle", vec!["POSTROUTING", "PREROUTING"]),
        ]
        .into_iter()
        .map(|(t, cs)| (t.to_owned(), cs.into_iter().map(str::to_owned).collect()))
        .collect();
        assert_eq!(got, want);
        assert_eq!(
            iptables_flush_script(&got),
            "*filter\n-F INPUT\nCOMMIT\n*mangle\n-F POSTROUTING\n-F PREROUTING\nCOMMIT\n"
        );
    }

    #[test]
    fn finds_nft_tables() {
        let text = "#!/usr/sbin/nft -f\n# table ip commented_out\ntable inet labelflow\n\
            delete table inet labelflow\ntable inet labelflow {\n\tchain x {\n\t}\n}\n\
            insert rule inet other uplink_in index 2 ip saddr 10.99.0.0/24 goto label_vpn\n\
            table plain {\n}\nadd rule ip6 six c counter\n";
        let got: Vec<(String, String)> = nft_tables(text).into_iter().collect();
        let want: Vec<(String, String)> = [
            ("inet", "labelflow"),
            ("inet", "other"),
            ("ip", "plain"),
            ("ip6", "six"),
        ]
        .into_iter()
        .map(|(f, n)| (f.to_owned(), n.to_owned()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn parses_commented_iptables_counters_of_every_table() {
        let text = "*mangle\n:PREROUTING ACCEPT [9:900]\n\
            [5:420] -A LF_UP_IN -m comment --comment naive:wan\n\
            [2:100] -A LF_UP_OUT -m comment --comment \"naive:wan\"\n\
            [3:252] -A LF_ESP -s 192.0.2.1/32 -m comment --comment \"tunnel:hq:esp\"\n\
            [1:10] -A LF_X -m comment --comment \"say \\\"hi\\\" twice\" -j DROP\n\
            [7:70] -A LF_ESP -j NFLOG --nflog-group 1\nCOMMIT\n*filter\n\
            [4:40] -A INPUT -m comment --comment \"LAB: no in-kernel ESP\" -j DROP\nCOMMIT\n";
        let mut got = Counters::new();
        sum(&mut got, parse_iptables_save_comments(text).unwrap());
        let c = |packets, bytes| Counter { packets, bytes };
        let want: Counters = [
            ("LAB:_no_in-kernel_ESP", c(4, 40)),
            ("naive:wan", c(7, 520)),
            ("say_\"hi\"_twice", c(1, 10)),
            ("tunnel:hq:esp", c(3, 252)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(got, want);
        assert_eq!(iptables_save_tables(text), vec!["mangle", "filter"]);
        assert!(parse_iptables_save_comments("[1:x] -A C -m comment --comment k").is_err());
        assert!(parse_iptables_save_comments("[1:2] -A C -m comment --comment \"open").is_err());
    }

    #[test]
    fn parses_nft_counters_rules_and_sets() {
        let counters = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"counter": {"family": "ip", "name": "count_net", "table": "labelflow", "handle": 1,
              "comment": "labelflow-count:net", "packets": 12, "bytes": 3400}},
            {"counter": {"family": "ip", "name": "plain", "table": "labelflow", "handle": 2,
              "packets": 1, "bytes": 2}}]}"#;
        let c = |packets, bytes| Counter { packets, bytes };
        assert_eq!(
            parse_nft_named_counters(counters).unwrap(),
            vec![
                ("labelflow-count:net".to_owned(), c(12, 3400)),
                ("plain".to_owned(), c(1, 2))
            ]
        );
        let ruleset = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"set": {"family": "ip", "name": "host_out", "table": "labelflow", "type": "ipv4_addr",
              "handle": 3, "size": 65536, "flags": ["dynamic"],
              "elem": [{"elem": {"val": "198.51.100.2", "counter": {"packets": 4, "bytes": 336}}}],
              "stmt": [{"counter": null}]}},
            {"set": {"family": "ip", "name": "port_connections", "table": "labelflow",
              "type": ["inet_proto", "inet_service"], "handle": 4,
              "elem": [{"elem": {"val": {"concat": ["tcp", 80]}, "counter": {"packets": 2, "bytes": 0}}}],
              "stmt": [{"counter": null}]}},
            {"set": {"family": "ip", "name": "essential_ports", "table": "labelflow",
              "type": "inet_service", "handle": 5, "elem": [20, 21]}},
            {"chain": {"family": "ip", "table": "labelflow", "name": "forward", "handle": 1,
              "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
            {"chain": {"family": "ip", "table": "labelflow", "name": "net", "handle": 2}},
            {"rule": {"family": "ip", "table": "labelflow", "chain": "net", "handle": 5,
              "comment": "anon key", "expr": [{"counter": {"packets": 4, "bytes": 336}}]}},
            {"rule": {"family": "ip", "table": "labelflow", "chain": "net", "handle": 6,
              "comment": "named only", "expr": [{"counter": "count_net"}]}},
            {"rule": {"family": "ip", "table": "labelflow", "chain": "net", "handle": 7,
              "expr": [{"counter": {"packets": 9, "bytes": 9}}]}}]}"#;
        assert_eq!(
            parse_nft_rule_counters(ruleset).unwrap(),
            vec![("anon_key".to_owned(), c(4, 336))]
        );
        let (elements, counted) = parse_nft_set_counters(ruleset).unwrap();
        assert_eq!(
            elements,
            vec![
                ("host_out:198.51.100.2".to_owned(), c(4, 336)),
                ("port_connections:tcp.80".to_owned(), c(2, 0)),
            ]
        );
        let sets: Vec<&str> = counted.iter().map(|(_, _, s)| s.as_str()).collect();
        assert_eq!(sets, vec!["host_out", "port_connections"]);
        assert_eq!(nft_base_chains(ruleset).unwrap(), vec!["forward"]);
        assert!(parse_nft_named_counters("not json").is_err());
    }
}
