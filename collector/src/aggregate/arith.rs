//! Small arithmetic of the per-record path: the counters of a cell, and bucket numbers
//! without a 64-bit division per record.

use super::keys::Counters;

/// Division of 32-bit numbers by a fixed 32-bit divisor as one multiplication:
/// `n / d == (M * n) >> 64` with `M = floor((2^64 - 1) / d) + 1`, exact for every 32-bit `n`
/// and `d` >= 2 (Lemire, Kaser and Kurz, "Faster remainder by direct computation",
/// Software: Practice and Experience 49(6), 2019, section 4).
#[derive(Debug, Clone, Copy)]
pub(super) struct Divisor(u64);

impl Divisor {
    pub(super) fn new(d: u64) -> Option<Divisor> {
        (2..=u64::from(u32::MAX))
            .contains(&d)
            .then(|| Divisor(u64::MAX / d + 1))
    }

    #[inline]
    pub(super) fn div(self, n: u32) -> u64 {
        ((u128::from(self.0) * u128::from(n)) >> 64) as u64
    }
}

/// Counters of the dimensions without in/out split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Sum {
    pub(super) bytes: u64,
    pub(super) packets: u64,
    pub(super) flows: u64,
}

impl Sum {
    #[inline]
    pub(super) fn add(&mut self, o: Sum) {
        self.bytes = self.bytes.saturating_add(o.bytes);
        self.packets = self.packets.saturating_add(o.packets);
        self.flows = self.flows.saturating_add(o.flows);
    }

    pub(super) fn is_zero(&self) -> bool {
        *self == Sum::default()
    }

    pub(super) fn counters(self) -> Counters {
        Counters {
            bytes: self.bytes,
            packets: self.packets,
            flows: self.flows,
            ..Counters::default()
        }
    }
}
