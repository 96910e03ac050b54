//! The visibility rule of the contract (which raw keys and which summaries a query sees), and
//! the work it implies. Pure; the float64 reference, the work counts and the launch planning all
//! use these, so the rule is written once.

use crate::spec::LocalMode;

/// Whether raw key `j` is visible to query `i`.
pub fn key_visible(i: usize, j: usize, window: usize, local: LocalMode) -> bool {
    j <= i
        && match local {
            LocalMode::Block => j / window == i / window,
            LocalMode::Sliding => j + window > i,
        }
}

/// Number of summaries visible to query `i`: chunks `c < i / C` (capped by the `nc` present).
pub fn summaries_visible(i: usize, chunk: usize, nc: usize) -> usize {
    (i / chunk).min(nc)
}

/// The raw keys visible to query `i`, as a range.
pub fn key_range(i: usize, window: usize, local: LocalMode) -> std::ops::Range<usize> {
    let lo = match local {
        LocalMode::Block => (i / window) * window,
        LocalMode::Sliding => (i + 1).saturating_sub(window),
    };
    lo..i + 1
}

/// Visible (query, key-or-summary) pairs of a prefill over `n` tokens (per batch and head).
pub fn count_prefill_pairs(n: usize, window: usize, chunk: usize, local: LocalMode) -> u64 {
    let nc = n / chunk;
    (0..n)
        .map(|i| (key_range(i, window, local).len() + summaries_visible(i, chunk, nc)) as u64)
        .sum()
}
