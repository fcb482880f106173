//! The reservation budget: cutting back what forecasts ask for so that it fits the reservable
//! share of the pool.
//!
//! When the asks exceed the budget they are cut back **by weight, then proportionally**: tiers are
//! served from the highest weight down, each in full while the budget lasts; the tier where it runs
//! out shares what is left in proportion to its asks (rounded down); lower tiers get nothing.

/// Grants for `asks[i] = (amount, weight)` within `budget`, in the same order.
///
/// ```
/// use shadowbucket::reserve::cut_back;
/// // fits: everyone gets what they asked
/// assert_eq!(cut_back(&[(10, 1), (20, 1)], 100), vec![10, 20]);
/// // weight 2 first, then weight 1 shares the remaining 10 in proportion 1:3
/// assert_eq!(cut_back(&[(10, 1), (30, 1), (50, 2)], 60), vec![2, 7, 50]);
/// ```
pub fn cut_back(asks: &[(u64, u16)], budget: u64) -> Vec<u64> {
    let total: u128 = asks.iter().map(|&(a, _)| a as u128).sum();
    if total <= budget as u128 {
        return asks.iter().map(|&(a, _)| a).collect();
    }
    let mut order: Vec<usize> = (0..asks.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(asks[i].1));
    let mut out = vec![0u64; asks.len()];
    let mut left = budget as u128;
    let mut k = 0;
    while k < order.len() {
        let w = asks[order[k]].1;
        let end = k + order[k..].iter().take_while(|&&i| asks[i].1 == w).count();
        let tier: u128 = order[k..end].iter().map(|&i| asks[i].0 as u128).sum();
        if tier <= left {
            for &i in &order[k..end] {
                out[i] = asks[i].0;
            }
            left -= tier;
        } else {
            for &i in &order[k..end] {
                out[i] = (asks[i].0 as u128 * left / tier) as u64;
            }
            break;
        }
        k = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn never_over_budget_and_never_over_ask(
            asks in proptest::collection::vec((0u64..1_000_000, 0u16..4), 0..50),
            budget in 0u64..5_000_000,
        ) {
            let g = cut_back(&asks, budget);
            let sum: u128 = g.iter().map(|&x| x as u128).sum();
            prop_assert!(sum <= budget as u128);
            for (gi, (a, _)) in g.iter().zip(&asks) {
                prop_assert!(gi <= a);
            }
            // a higher tier is never cut while a lower one gets anything
            for (i, (a, w)) in asks.iter().enumerate() {
                if g[i] < *a {
                    for (j, (_, w2)) in asks.iter().enumerate() {
                        if w2 < w { prop_assert_eq!(g[j], 0); }
                    }
                }
            }
        }
    }
}
