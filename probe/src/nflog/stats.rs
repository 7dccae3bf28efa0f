//! Counters of the NFLOG source: per socket and per group, with loss from sequence gaps.

/// Counters of one NFLOG group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupStats {
    pub group: u16,
    /// Packets delivered to the pipeline.
    pub packets: u64,
    /// Packets the kernel numbered but that never arrived (`NFULA_SEQ` gaps). Exact, except
    /// for a lost tail after the last delivered packet (then only `enobufs` shows it).
    pub lost: u64,
    /// Packets whose sequence number went backwards (never expected from one instance); the
    /// expected number is resynchronised on them.
    pub seq_backwards: u64,
    /// Packets without `NFULA_SEQ` (loss cannot be counted for them).
    pub no_seq: u64,
    /// Socket overruns (ENOBUFS) seen while this group was bound: some of its batches may be
    /// among the dropped ones. Sequence gaps then tell which.
    pub enobufs_suspect: u64,
    /// Next sequence number expected.
    next_seq: Option<u32>,
}

impl GroupStats {
    pub fn new(group: u16) -> Self {
        GroupStats {
            group,
            // A freshly bound instance numbers its packets from 0 (`inst->seq` starts at 0).
            next_seq: Some(0),
            ..GroupStats::default()
        }
    }

    /// Accounts one delivered packet with its sequence number.
    pub fn observe(&mut self, seq: Option<u32>) {
        self.packets += 1;
        let Some(seq) = seq else {
            self.no_seq += 1;
            return;
        };
        if let Some(expected) = self.next_seq {
            // u32 arithmetic wraps; a forward distance below 2^31 is a gap, anything else
            // means the number went backwards.
            let gap = seq.wrapping_sub(expected);
            if gap < 1 << 31 {
                self.lost += u64::from(gap);
            } else {
                self.seq_backwards += 1;
            }
        }
        self.next_seq = Some(seq.wrapping_add(1));
    }
}

/// Counters of the whole source (one socket).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// `recv()` calls that returned data.
    pub datagrams: u64,
    /// Netlink messages walked (packets, acks, `NLMSG_DONE`).
    pub messages: u64,
    /// `recv()` failed with ENOBUFS: the kernel dropped at least one batch for this socket.
    pub enobufs: u64,
    /// Datagrams or messages that could not be parsed (skipped, counted here).
    pub malformed: u64,
    /// Packet messages for a group this socket did not bind (skipped).
    pub unknown_group: u64,
    /// Error messages from the kernel not answering one of our requests.
    pub unexpected_errors: u64,
    /// Per configured group, in configuration order.
    pub groups: Vec<GroupStats>,
}

impl SourceStats {
    pub fn new(groups: impl IntoIterator<Item = u16>) -> Self {
        SourceStats {
            groups: groups.into_iter().map(GroupStats::new).collect(),
            ..SourceStats::default()
        }
    }

    /// Total packets lost across groups (sequence gaps).
    pub fn lost(&self) -> u64 {
        self.groups.iter().map(|g| g.lost).sum()
    }

    /// Total packets delivered across groups.
    pub fn packets(&self) -> u64 {
        self.groups.iter().map(|g| g.packets).sum()
    }

    pub fn group(&self, group: u16) -> Option<&GroupStats> {
        self.groups.iter().find(|g| g.group == group)
    }

    /// Records an ENOBUFS: one more overrun, every group suspect.
    pub fn note_enobufs(&mut self) {
        self.enobufs += 1;
        for g in &mut self.groups {
            g.enobufs_suspect += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_gaps_from_zero() {
        let mut g = GroupStats::new(3);
        for s in [0, 1, 2, 5, 6, 10] {
            g.observe(Some(s));
        }
        assert_eq!(g.packets, 6);
        assert_eq!(g.lost, 2 + 3);
        assert_eq!(g.seq_backwards, 0);
    }

    #[test]
    fn first_packet_after_lost_head_counts() {
        let mut g = GroupStats::new(1);
        g.observe(Some(4));
        assert_eq!(g.lost, 4);
    }

    #[test]
    fn wraps_around_u32() {
        let mut g = GroupStats::new(1);
        g.next_seq = Some(u32::MAX - 1);
        g.observe(Some(u32::MAX - 1));
        g.observe(Some(u32::MAX));
        g.observe(Some(1)); // 0 lost
        assert_eq!(g.lost, 1);
        assert_eq!(g.seq_backwards, 0);
    }

    #[test]
    fn backwards_resyncs_without_loss() {
        let mut g = GroupStats::new(1);
        g.observe(Some(0));
        g.observe(Some(1));
        g.observe(Some(0));
        g.observe(Some(1));
        assert_eq!(g.seq_backwards, 1);
        assert_eq!(g.lost, 0);
    }

    #[test]
    fn missing_seq_is_counted_not_lost() {
        let mut g = GroupStats::new(1);
        g.observe(None);
        g.observe(Some(0));
        assert_eq!((g.no_seq, g.lost, g.packets), (1, 0, 2));
    }

    #[test]
    fn enobufs_marks_every_group() {
        let mut s = SourceStats::new([1, 2]);
        s.note_enobufs();
        assert_eq!(s.enobufs, 1);
        assert!(s.groups.iter().all(|g| g.enobufs_suspect == 1));
        assert_eq!(s.group(2).map(|g| g.group), Some(2));
    }
}
