//! `Pacer`: a token bucket of flow records per second for one export target.
//!
//! ```text
//!  tokens += (now - last) * rate          (at most `burst`)
//!  grant(now): whole tokens available ─► Ok(n records may go now), tokens -= n
//!              none                   ─► Err(instant, ns, at which one will be)
//! ```
//!
//! A flush of the whole cache (shutdown) or a burst of expiries would otherwise hand a
//! collector a million records as fast as the loopback carries them, more than its socket
//! buffer holds while it is busy writing: nfcapd with its default buffer lost about 10 % of a
//! 1M-record flush. The bucket holds `burst` records (10 ms at the rate, by default), so what
//! arrives at once stays well inside a default Linux receive buffer (`net.core.rmem_default`,
//! 208 KiB: about 90 datagrams of 1400 octets).
//!
//! Pure: the caller passes a monotonic `now` in nanoseconds and does the waiting.

/// Default records per second per target: about 2,300 datagrams/s at the default MTU, so the
/// 208 KiB default receive buffer of a collector (about 90 datagrams) covers 40 ms in which
/// it does not read. nfcapd 1.7.1 on its default buffer lost 21-32 % of an unpaced 1M-record
/// flush on a busy 2-core VM, about 1 % at 100k/s and 0-0.6 % at this rate (none when it
/// was never kept waiting for a CPU).
pub const DEFAULT_MAX_RATE: u32 = 50_000;

/// Nanoseconds in a second: one token is `NANOS` units, refilled at `rate` units per ns.
const NANOS: u64 = 1_000_000_000;

/// A token bucket counting flow records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pacer {
    /// Records per second (non-zero).
    rate: u64,
    /// Bucket size, in units (records x `NANOS`).
    capacity: u64,
    /// Tokens, in units.
    tokens: u64,
    /// When the tokens were last refilled; `None` before the first grant (the bucket
    /// starts full).
    last_ns: Option<u64>,
}

impl Pacer {
    /// `rate` records per second, bursts of at most `burst` records (at least 1).
    pub fn new(rate: u32, burst: u32) -> Self {
        let rate = u64::from(rate.max(1));
        let capacity = u64::from(burst.max(1)) * NANOS;
        Pacer {
            rate,
            capacity,
            tokens: capacity,
            last_ns: None,
        }
    }

    /// `rate` records per second with the default burst: 10 ms of the rate (at least one
    /// record).
    pub fn with_rate(rate: u32) -> Self {
        Pacer::new(rate, (rate / 100).max(1))
    }

    /// Records per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Largest burst, in records.
    pub fn burst(&self) -> u64 {
        self.capacity / NANOS
    }

    fn refill(&mut self, now_ns: u64) {
        let last = *self.last_ns.get_or_insert(now_ns);
        // A clock that goes back (it should not: monotonic) refills nothing.
        let elapsed = now_ns.saturating_sub(last);
        self.last_ns = Some(now_ns.max(last));
        // Time to fill the bucket from empty bounds the product (no overflow).
        let full_in = self.capacity / self.rate + 1;
        let add = elapsed.min(full_in) * self.rate;
        self.tokens = (self.tokens + add).min(self.capacity);
    }

    /// Takes every whole token available at `now_ns`: `Ok(n)` records may be sent now
    /// (`n >= 1`), or `Err(t)`: none before `t` (ns, same clock as `now_ns`).
    pub fn grant(&mut self, now_ns: u64) -> Result<u64, u64> {
        self.refill(now_ns);
        let n = self.tokens / NANOS;
        if n == 0 {
            let missing = NANOS - self.tokens;
            return Err(now_ns.saturating_add(missing.div_ceil(self.rate)));
        }
        self.tokens -= n * NANOS;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Sends `records` as fast as the pacer allows, stepping the clock to each `Err(t)`:
    /// returns the time the last one was granted.
    fn drain(p: &mut Pacer, mut now: u64, mut records: u64) -> u64 {
        while records > 0 {
            match p.grant(now) {
                Ok(n) => records = records.saturating_sub(n),
                Err(t) => {
                    assert!(t > now, "a wait must move time forward");
                    now = t;
                }
            }
        }
        now
    }

    #[test]
    fn starts_full_then_paces_at_the_rate() {
        let mut p = Pacer::with_rate(100_000);
        assert_eq!(p.burst(), 1_000);
        assert_eq!(p.grant(0), Ok(1_000));
        // Empty: the next record is 10 us away.
        assert_eq!(p.grant(0), Err(10_000));
        assert_eq!(p.grant(10_000), Ok(1));
        // 1M records take 10 s, less the first burst.
        let mut p = Pacer::with_rate(100_000);
        let end = drain(&mut p, 0, 1_000_000);
        assert_eq!(end, 9_990 * MS);
    }

    #[test]
    fn never_more_than_rate_times_time_plus_burst() {
        let mut p = Pacer::new(3_000, 7);
        let mut sent = 0u64;
        let mut now = 5 * MS;
        let start = now;
        for step in [1u64, 13, 250_000, 3, 999_999, 40 * MS, 1, 77_777] {
            now += step;
            if let Ok(n) = p.grant(now) {
                sent += n;
            }
            let allowed = (now - start) * 3_000 / NANOS + 7;
            assert!(sent <= allowed, "sent {sent} > allowed {allowed} at {now}");
        }
    }

    #[test]
    fn idle_time_fills_only_up_to_the_burst() {
        let mut p = Pacer::new(1_000, 50);
        assert_eq!(p.grant(0), Ok(50));
        assert_eq!(p.grant(3_600 * 1_000 * MS), Ok(50));
        // Sub-record refills accumulate: 1.5 ms gives 1, the next 0.5 ms another.
        assert_eq!(p.grant(3_600 * 1_000 * MS + 1_500_000), Ok(1));
        assert_eq!(p.grant(3_600 * 1_000 * MS + 2_000_000), Ok(1));
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let mut p = Pacer::new(u32::MAX, u32::MAX);
        assert_eq!(p.grant(u64::MAX / 2), Ok(u64::from(u32::MAX)));
        assert!(p.grant(u64::MAX - 1).is_ok());
        let mut p = Pacer::new(1, 1);
        assert_eq!(p.grant(0), Ok(1));
        assert_eq!(p.grant(0), Err(NANOS));
        // A clock stepping back grants nothing extra and still answers.
        assert_eq!(p.grant(NANOS), Ok(1));
        assert!(p.grant(NANOS / 2).is_err());
    }
}
