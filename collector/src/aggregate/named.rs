//! Tunnel names from the wire: exporters that know the IKE connection a flow belongs to
//! (labelflow-probe with `--vici`) send its name; the aggregator interns names, within a
//! bound, so that a per-tunnel key is as small as any other.

use super::{Aggregator, Part, OTHER};

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
        if self.tunnel_names.len() >= self.cfg.max_tunnel_names.max(2) - 1 && name != OTHER {
            self.stats.folded_tunnels += 1;
            return self.tunnel_id(OTHER);
        }
        let id = self.tunnel_names.len() as u32;
        self.tunnel_names.push(name.to_string());
        self.tunnel_ids.insert(name.to_string(), id);
        id
    }

    /// The name of a tunnel id from [`Aggregator::tunnel_id`].
    pub fn tunnel_name(&self, id: u32) -> &str {
        &self.tunnel_names[id as usize]
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
