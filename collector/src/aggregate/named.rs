//! Names of keys: labels, views, and tunnel names from the wire. Exporters that know the
//! IKE connection a flow belongs to (labelflow-probe with `--vici`) send its name; the
//! aggregator interns names, within a bound, so that a per-tunnel key is as small as any
//! other. [`KeyNames`] holds the names a key's text needs, shared with the batches taken so
//! that keys are named on the store thread.

use std::sync::Arc;

use super::{conn_key_text, protocol_name, Aggregator, Key, Part, OTHER};
use crate::config::AggConfig;

/// Default of `limits.max_tunnel_names`: distinct tunnel names the aggregator keeps; later
/// ones are counted under the tunnel [`OTHER`]. Names are the IKE connections an admin
/// configured, so this is generous; it bounds what an exporter sending arbitrary names
/// can make us keep.
pub const MAX_TUNNEL_NAMES: usize = 1024;

impl Aggregator {
    /// The id of a tunnel name, naming it on first sight; past `max_tunnel_names` names,
    /// new names get the id of [`OTHER`] (counted in `folded_tunnels`). Names longer than
    /// `max_label_bytes` are cut (at a character boundary), as labels are.
    pub fn tunnel_id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.tunnel_ids.get(name) {
            return *id;
        }
        if name.len() > self.cfg.max_label_bytes {
            let mut end = self.cfg.max_label_bytes;
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            return self.tunnel_id(&name[..end]);
        }
        if self.names.tunnel_names.len() >= self.cfg.max_tunnel_names.max(2) - 1 && name != OTHER {
            self.stats.folded_tunnels += 1;
            return self.tunnel_id(OTHER);
        }
        let id = self.names.tunnel_names.len() as u32;
        Arc::make_mut(&mut self.names)
            .tunnel_names
            .push(name.to_string());
        self.tunnel_ids.insert(name.to_string(), id);
        id
    }

    /// The name of a tunnel id from [`Aggregator::tunnel_id`].
    pub fn tunnel_name(&self, id: u32) -> &str {
        &self.names.tunnel_names[id as usize]
    }
}

impl Aggregator {
    /// Add to a named tunnel's totals since start.
    pub(super) fn count_tunnel(&mut self, name: u32, part: Part, bytes: u64, packets: u64) {
        let i = name as usize;
        if self.tunnel_totals.len() <= i {
            self.tunnel_totals.resize(i + 1, [(0, 0); 6]);
        }
        let t = &mut self.tunnel_totals[i][part as usize];
        *t = (t.0.saturating_add(bytes), t.1.saturating_add(packets));
    }

    /// (bytes, packets) since start per tunnel id (index) and [`Part`] (in [`Part::ALL`]
    /// order): sampling applied, before any per-bucket key bound.
    pub fn tunnel_totals(&self) -> &[[(u64, u64); 6]] {
        &self.tunnel_totals
    }
}

/// What naming keys needs: label, view and tunnel names, and the configured tunnels.
#[derive(Debug, Clone)]
pub struct KeyNames {
    pub(super) cfg: Arc<AggConfig>,
    pub(super) label_names: Vec<String>,
    pub(super) view_names: Vec<String>,
    /// Tunnel names by id ([`Aggregator::tunnel_id`]).
    pub(super) tunnel_names: Vec<String>,
}

impl KeyNames {
    /// Text of a key as stored and reported.
    pub fn key_text(&self, key: &Key) -> String {
        match *key {
            Key::Label(i) => self.label_names[i as usize].clone(),
            Key::View(i) => self.view_names[i as usize].clone(),
            Key::Sa {
                protocol,
                src,
                dst,
                spi,
            } => {
                let p = match protocol {
                    51 => "ah",
                    17 => "esp-in-udp",
                    _ => "esp",
                };
                // A configured peer at either end names the tunnel the SA belongs to.
                let tunnel = self
                    .cfg
                    .tunnels
                    .iter()
                    .find(|t| t.peers.iter().any(|n| n.contains(src) || n.contains(dst)));
                match tunnel {
                    Some(t) => format!("{}: {p} {src}>{dst} spi 0x{spi:08x}", t.name),
                    None => format!("{p} {src}>{dst} spi 0x{spi:08x}"),
                }
            }
            Key::Tunnel(i) => self.cfg.tunnels[i as usize].name.clone(),
            Key::Conn { name, part, spi } => {
                conn_key_text(&self.tunnel_names[name as usize], part, spi)
            }
            Key::Host(ip) => ip.to_string(),
            Key::Protocol(p) => protocol_name(p),
            Key::Port(p, port) => format!("{}/{port}", protocol_name(p)),
            Key::Nat { inside, public } => format!("{inside} > {public}"),
            Key::LabelDir { label, reply } => {
                let dir = if reply { "reply" } else { "orig" };
                format!("{} {dir}", self.label_names[label as usize])
            }
            Key::Other => OTHER.to_string(),
        }
    }
}
