//! What a packet source (NFLOG socket, pcap replay) hands to the flow pipeline: the metadata
//! netfilter attached to a packet, beside its bytes (which start at the IP header).

/// Network-layer protocol of a payload, from the NFLOG family / hardware protocol or the
/// capture's link type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L3 {
    Ipv4,
    Ipv6,
    /// Not known from the source: decide from the IP version nibble.
    Unknown,
}

/// Netfilter hook the packet was logged at (`NFULA_PACKET_HDR.hook`), in the kernel's
/// `NF_INET_*` numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    PreRouting,
    LocalIn,
    Forward,
    LocalOut,
    PostRouting,
    Other(u8),
}

impl Hook {
    pub fn from_code(code: u8) -> Self {
        match code {
            0 => Hook::PreRouting,
            1 => Hook::LocalIn,
            2 => Hook::Forward,
            3 => Hook::LocalOut,
            4 => Hook::PostRouting,
            n => Hook::Other(n),
        }
    }
}

/// Metadata of one logged packet. Borrowed from the receive buffer: sources build one per
/// packet without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketMeta<'a> {
    /// NFLOG group (or the `--label` pseudo group for captures without one).
    pub group: u16,
    pub l3: L3,
    pub hook: Option<Hook>,
    /// `skb->mark` (`NFULA_MARK`), 0 when absent.
    pub mark: u32,
    /// Ingress / egress ifindex (`NFULA_IFINDEX_INDEV` / `OUTDEV`), 0 when absent.
    pub ingress_if: u32,
    pub egress_if: u32,
    /// Bridge ports (`NFULA_IFINDEX_PHYSINDEV` / `PHYSOUTDEV`), 0 when absent.
    pub phys_ingress_if: u32,
    pub phys_egress_if: u32,
    /// Owner of the local socket (`NFULA_UID` / `NFULA_GID`): the kernel adds them when the
    /// packet still belongs to a full local socket (locally generated traffic, OUTPUT hook).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The rule's `--nflog-prefix` / nftables `prefix`, without the trailing NUL.
    pub prefix: &'a [u8],
    /// Kernel timestamp (`NFULA_TIMESTAMP`) or capture timestamp, ms since the UNIX epoch.
    pub timestamp_ms: Option<u64>,
    /// Per-group sequence number (`NFULA_SEQ`) when the listener enabled it.
    pub seq: Option<u32>,
}

impl Default for PacketMeta<'_> {
    fn default() -> Self {
        PacketMeta {
            group: 0,
            l3: L3::Unknown,
            hook: None,
            mark: 0,
            ingress_if: 0,
            egress_if: 0,
            phys_ingress_if: 0,
            phys_egress_if: 0,
            uid: None,
            gid: None,
            prefix: &[],
            timestamp_ms: None,
            seq: None,
        }
    }
}
