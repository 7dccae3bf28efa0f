//! The time rule: which flow times are believed, clamped or refused before a record is
//! spread over buckets. Pure: the receive clock comes in as a parameter.
//!
//! A record's times come from its exporter, and nothing stops them from being wrong: a
//! broken clock, a flipped bit, a hostile sender. Taken at face value, a record that claims
//! to span years would be spread over millions of buckets. The rule, applied in this order
//! (the first that applies names the record's reason, for the counters):
//!
//! | reason | condition | action |
//! |---|---|---|
//! | `future` | end later than the receive clock + `max_future` | refused |
//! | `expired` | end earlier than the receive clock − the base resolution's retention | refused |
//! | `reversed` | end before start | start := end (counted at its end) |
//! | `too_long` | end − start over `max_flow_duration` | start := end − `max_flow_duration` |
//!
//! Clamping keeps a record's counts (totals stay exact) and only narrows the time it is
//! spread over; refusing drops the record, counted per exporter and reason. Without a
//! receive clock (unit tests, offline use), `future` and `expired` do not apply.
//!
//! Times before the exporter's system init (IPFIX `systemInitTimeMilliseconds`) are not
//! refused: an exporter replaying a capture (`softflowd -r`) legitimately reports flows
//! that ended before it started, as negative offsets from its init time (see
//! `labelflow_proto::convert`), and a backlog is exactly such a stream. `expired` bounds how
//! far back any record reaches.

use crate::config::AggConfig;

use super::{Aggregator, Flow};

impl Aggregator {
    /// The time rule's verdict on a record, counted in [`AggStats`]: what it did and the
    /// times to spread the record over (`None`: refused). The receiving thread applies it
    /// before a record goes to the journal, against its receive clock.
    pub fn time_rule(&mut self, f: &Flow) -> (TimeRule, Option<(u64, u64)>) {
        self.stats.records += 1;
        let (rule, span) = apply(f.start_ms, f.end_ms, self.now_ms, &self.cfg);
        if let Some(i) = rule.index() {
            self.stats.time_rule[i] += 1;
        }
        if rule == TimeRule::TooLong {
            self.stats.clamped_durations += 1;
        }
        (rule, span)
    }
}

/// What the time rule did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimeRule {
    /// Believed as sent.
    Kept,
    Future,
    Expired,
    Reversed,
    TooLong,
}

impl TimeRule {
    /// Every reason a record can be refused or clamped for (all but [`TimeRule::Kept`]).
    pub const REASONS: [TimeRule; 4] = [
        TimeRule::Future,
        TimeRule::Expired,
        TimeRule::Reversed,
        TimeRule::TooLong,
    ];

    /// Stable name for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            TimeRule::Kept => "kept",
            TimeRule::Future => "future",
            TimeRule::Expired => "expired",
            TimeRule::Reversed => "reversed",
            TimeRule::TooLong => "too_long",
        }
    }

    /// Whether the record was refused.
    pub fn refused(self) -> bool {
        matches!(self, TimeRule::Future | TimeRule::Expired)
    }

    /// Index into [`TimeRule::REASONS`]-sized counters (`None` for [`TimeRule::Kept`]).
    pub fn index(self) -> Option<usize> {
        TimeRule::REASONS.iter().position(|r| *r == self)
    }
}

/// Apply the rule to a record's `[start, end]` (milliseconds since the epoch): the times to
/// aggregate (`None`: refused) and the reason. `now_ms` is the receive clock.
pub fn apply(
    start: u64,
    end: u64,
    now_ms: Option<u64>,
    cfg: &AggConfig,
) -> (TimeRule, Option<(u64, u64)>) {
    if let Some(now) = now_ms {
        if end > now.saturating_add(cfg.max_future_ms) {
            return (TimeRule::Future, None);
        }
        let oldest = now.saturating_sub(cfg.retention[0].saturating_mul(1000));
        if end < oldest {
            return (TimeRule::Expired, None);
        }
    }
    if end < start {
        return (TimeRule::Reversed, Some((end, end)));
    }
    if end - start > cfg.max_flow_duration_ms {
        return (
            TimeRule::TooLong,
            Some((end - cfg.max_flow_duration_ms, end)),
        );
    }
    (TimeRule::Kept, Some((start, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;
    const MIN: u64 = 60_000;

    fn cfg() -> AggConfig {
        AggConfig {
            max_future_ms: 10 * MIN,
            max_flow_duration_ms: 60 * MIN,
            retention: vec![7 * 86_400, 90 * 86_400],
            resolutions: vec![60, 3600],
            ..AggConfig::default()
        }
    }

    #[test]
    fn each_reason() {
        let c = cfg();
        let at = |s, e| apply(s, e, Some(NOW), &c);
        assert_eq!(at(NOW - MIN, NOW), (TimeRule::Kept, Some((NOW - MIN, NOW))));
        // Up to max_future ahead is believed (clock skew), beyond it refused.
        assert_eq!(at(NOW, NOW + 10 * MIN).0, TimeRule::Kept);
        assert_eq!(at(NOW, NOW + 10 * MIN + 1), (TimeRule::Future, None));
        assert_eq!(at(0, u64::MAX), (TimeRule::Future, None));
        // Older than the base retention (7 days) is refused; just inside is kept.
        let week = 7 * 86_400_000;
        assert_eq!(at(0, NOW - week - 1), (TimeRule::Expired, None));
        assert_eq!(
            at(NOW - week, NOW - week),
            (TimeRule::Kept, Some((NOW - week, NOW - week)))
        );
        assert_eq!(
            at(NOW, NOW - MIN),
            (TimeRule::Reversed, Some((NOW - MIN, NOW - MIN)))
        );
        assert_eq!(at(u64::MAX, NOW), (TimeRule::Reversed, Some((NOW, NOW))));
        assert_eq!(
            at(NOW - 3 * 60 * MIN, NOW),
            (TimeRule::TooLong, Some((NOW - 60 * MIN, NOW)))
        );
    }

    #[test]
    fn without_a_clock_only_the_record_itself_is_checked() {
        let c = cfg();
        assert_eq!(apply(0, u64::MAX, None, &c).0, TimeRule::TooLong);
        assert_eq!(apply(5, 10, None, &c), (TimeRule::Kept, Some((5, 10))));
    }

    proptest::proptest! {
        /// Whatever the times, a kept record spans at most max_flow_duration, ends when it
        /// said it did, no later than now + max_future and no earlier than the retention.
        #[test]
        fn kept_spans_are_bounded(
            s in proptest::prelude::any::<u64>(),
            e in proptest::prelude::any::<u64>(),
        ) {
            let c = cfg();
            let (v, span) = apply(s, e, Some(NOW), &c);
            proptest::prop_assert_eq!(span.is_none(), v.refused());
            if let Some((s2, e2)) = span {
                proptest::prop_assert!(s2 <= e2);
                proptest::prop_assert!(e2 - s2 <= c.max_flow_duration_ms);
                proptest::prop_assert!(e2 <= NOW + c.max_future_ms);
                proptest::prop_assert!(e2 >= NOW - c.retention[0] * 1000);
                proptest::prop_assert_eq!(e2, e);
            }
        }
    }
}
