//! Apportioning: splitting a count over parts in proportion to weights, exactly (the
//! shares always sum to the total).

/// Split `total` over `weights` in proportion, exactly: the shares sum to `total`.
///
/// Largest-remainder method: every part gets the floor of its exact share, and the units
/// left over go to the parts with the largest remainders (earliest first on ties).
pub fn apportion(total: u64, weights: &[u64], out: &mut Vec<u64>) {
    apportion_with(total, weights, out, &mut Vec::new());
}

/// [`apportion`] with a caller-kept scratch vector (no allocation once it has grown).
pub(crate) fn apportion_with(
    total: u64,
    weights: &[u64],
    out: &mut Vec<u64>,
    rems: &mut Vec<(u128, usize)>,
) {
    out.clear();
    match *weights {
        [_] => {
            out.push(total);
            return;
        }
        // The common case of a flow crossing one bucket boundary, without the sort.
        [w0, w1] if w0 != 0 || w1 != 0 => {
            let (s0, s1) = split2(total, w0, w1);
            out.extend([s0, s1]);
            return;
        }
        _ => {}
    }
    let sum: u128 = weights.iter().map(|w| u128::from(*w)).sum();
    if weights.is_empty() {
        return;
    }
    if sum == 0 {
        out.extend(std::iter::repeat_n(0, weights.len()));
        out[0] = total;
        return;
    }
    rems.clear();
    let mut given = 0u64;
    for (i, w) in weights.iter().enumerate() {
        let (s, r) = share(total, *w, sum);
        rems.push((r, i));
        out.push(s);
        given += s;
    }
    let left = (total - given) as usize;
    if left == 0 {
        return;
    }
    if weights.len() <= 8 {
        // A few parts: pick the largest remainders (earliest on ties) one by one.
        for _ in 0..left {
            let mut best = usize::MAX;
            for (k, &(r, _)) in rems.iter().enumerate() {
                if r != u128::MAX && (best == usize::MAX || r > rems[best].0) {
                    best = k;
                }
            }
            out[rems[best].1] += 1;
            rems[best].0 = u128::MAX;
        }
        return;
    }
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in rems.iter().take(left) {
        out[i] += 1;
    }
}

/// Most parts [`apportion_small`] takes.
pub(crate) const SMALL: usize = 8;

/// [`apportion`] into an array, in 64-bit arithmetic, for 1 to [`SMALL`] parts whose weights
/// sum to a non-zero value that `total` times it fits 64 bits (then every exact share does
/// too); `false`, with `out` unspecified, otherwise. A flow crossing a few bucket boundaries
/// takes this path rather than the general one's vectors and 128-bit remainders.
#[inline]
pub(crate) fn apportion_small(total: u64, weights: &[u64], out: &mut [u64; SMALL]) -> bool {
    let n = weights.len();
    if n == 0 || n > SMALL {
        return false;
    }
    let Some(sum) = weights.iter().try_fold(0u64, |a, w| a.checked_add(*w)) else {
        return false;
    };
    if sum == 0 || total.checked_mul(sum).is_none() {
        return false;
    }
    // A remainder is below `sum`, so u64::MAX marks one already given its unit.
    let mut rems = [0u64; SMALL];
    let mut given = 0;
    for (i, w) in weights.iter().enumerate() {
        let exact = total * w;
        out[i] = exact / sum;
        rems[i] = exact % sum;
        given += out[i];
    }
    for _ in 0..total - given {
        let mut best = 0;
        for k in 1..n {
            if rems[k] != u64::MAX && (rems[best] == u64::MAX || rems[k] > rems[best]) {
                best = k;
            }
        }
        out[best] += 1;
        rems[best] = u64::MAX;
    }
    true
}

/// [`apportion`] over two parts, not both of weight 0. At most one unit is left over, and it
/// goes to the larger remainder (the first on a tie), as the general method decides: the
/// remainders r0 + r1 are a multiple of the sum and each below it, so either both are 0 or
/// r1 = sum - r0. One division.
#[inline]
pub(crate) fn split2(total: u64, w0: u64, w1: u64) -> (u64, u64) {
    debug_assert!(w0 != 0 || w1 != 0);
    let sum = u128::from(w0) + u128::from(w1);
    let (mut s0, r0) = share(total, w0, sum);
    let mut s1 = total - s0;
    if r0 != 0 {
        s1 -= 1;
        if r0 >= sum - r0 {
            s0 += 1;
        } else {
            s1 += 1;
        }
    }
    (s0, s1)
}

/// `total * w / sum` and its remainder, exactly; in 64-bit arithmetic when it fits (counts
/// times milliseconds nearly always do), which spares a 128-bit division.
#[inline]
fn share(total: u64, w: u64, sum: u128) -> (u64, u128) {
    if let (Ok(sum), Some(exact)) = (u64::try_from(sum), total.checked_mul(w)) {
        return (exact / sum, u128::from(exact % sum));
    }
    let exact = u128::from(total) * u128::from(w);
    ((exact / sum) as u64, exact % sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The general largest-remainder method, without the shortcuts.
    fn reference(total: u64, weights: &[u64]) -> Vec<u64> {
        let sum: u128 = weights.iter().map(|w| u128::from(*w)).sum();
        if sum == 0 {
            let mut out = vec![0; weights.len()];
            out[0] = total;
            return out;
        }
        let mut out = Vec::new();
        let mut rems = Vec::new();
        for (i, w) in weights.iter().enumerate() {
            let exact = u128::from(total) * u128::from(*w);
            out.push((exact / sum) as u64);
            rems.push((exact % sum, i));
        }
        let mut left = total - out.iter().sum::<u64>();
        rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, i) in rems {
            if left == 0 {
                break;
            }
            out[i] += 1;
            left -= 1;
        }
        out
    }

    #[test]
    fn two_parts_tie_goes_first() {
        let mut out = Vec::new();
        apportion(3, &[5, 5], &mut out);
        assert_eq!(out, vec![2, 1]);
        apportion(3, &[0, 0], &mut out);
        assert_eq!(out, vec![3, 0]);
        apportion(u64::MAX, &[u64::MAX, 1], &mut out);
        assert_eq!(out, reference(u64::MAX, &[u64::MAX, 1]));
    }

    #[test]
    fn small_parts_ties_go_first() {
        let mut out = [0u64; SMALL];
        assert!(apportion_small(2, &[7, 7, 7], &mut out));
        assert_eq!(out[..3], [1, 1, 0]);
        assert!(apportion_small(5, &[1, 2, 1, 2], &mut out));
        assert_eq!(out[..4], reference(5, &[1, 2, 1, 2])[..]);
        assert!(!apportion_small(5, &[0, 0], &mut out));
        assert!(!apportion_small(u64::MAX, &[1, 1], &mut out));
        assert!(!apportion_small(1, &[1; SMALL + 1], &mut out));
    }

    proptest! {
        #[test]
        fn shortcuts_equal_the_general_method(
            total in prop_oneof![any::<u64>(), 0u64..3_000_000, 0u64..10],
            weights in proptest::collection::vec(prop_oneof![0u64..3, 0u64..120_000, any::<u64>()], 1..10),
        ) {
            let mut out = Vec::new();
            apportion(total, &weights, &mut out);
            let want = reference(total, &weights);
            let mut small = [0u64; SMALL];
            if apportion_small(total, &weights, &mut small) {
                prop_assert_eq!(&small[..weights.len()], &want[..]);
            }
            prop_assert_eq!(out, want);
        }
    }
}
