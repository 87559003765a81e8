//! [`RankSet`]: the readers of a page, and the ranks a transaction awaits, without an
//! allocation per page in the sessions most have.
//!
//! A `BTreeSet` per page allocated a node for the first reader of every page and freed it when
//! the readers were cleared: in a bulk read that was one `malloc` and one `free` per page at
//! the coordinator (with `malloc_consolidate` and `unlink_chunk` in the profile). Ranks below
//! 64 are bits of one word; higher ranks (sessions of more than 64 processes) go to a
//! `BTreeSet` made when the first of them joins.

use std::collections::BTreeSet;

use crate::wire::Rank;

/// Ranks held inline as bits.
const INLINE: Rank = 64;

/// A set of ranks, iterated in ascending order (see the module docs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct RankSet {
    low: u64,
    // Boxed: 8 bytes in every page's entry instead of a 24-byte empty tree.
    #[allow(clippy::box_collection)]
    high: Option<Box<BTreeSet<Rank>>>,
}

impl RankSet {
    /// Adds `r`; whether it was new.
    pub(super) fn insert(&mut self, r: Rank) -> bool {
        if r < INLINE {
            let was = self.low & (1 << r) != 0;
            self.low |= 1 << r;
            !was
        } else {
            self.high.get_or_insert_with(Default::default).insert(r)
        }
    }

    /// Removes `r`; whether it was there.
    pub(super) fn remove(&mut self, r: Rank) -> bool {
        if r < INLINE {
            let was = self.low & (1 << r) != 0;
            self.low &= !(1 << r);
            was
        } else {
            let Some(high) = &mut self.high else { return false };
            let was = high.remove(&r);
            if high.is_empty() {
                self.high = None;
            }
            was
        }
    }

    pub(super) fn contains(&self, r: Rank) -> bool {
        if r < INLINE {
            self.low & (1 << r) != 0
        } else {
            self.high.as_ref().is_some_and(|h| h.contains(&r))
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.low == 0 && self.high.is_none()
    }

    pub(super) fn clear(&mut self) {
        *self = RankSet::default();
    }

    /// The ranks, ascending.
    pub(super) fn iter(&self) -> impl Iterator<Item = Rank> + '_ {
        let mut bits = self.low;
        let low = std::iter::from_fn(move || {
            (bits != 0).then(|| {
                let r = bits.trailing_zeros();
                bits &= bits - 1;
                r
            })
        });
        low.chain(self.high.iter().flat_map(|h| h.iter().copied()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Acts as a `BTreeSet` would, over ranks on both sides of the inline bound.
    #[test]
    fn acts_like_an_ordered_set() {
        let mut set = RankSet::default();
        let mut model = BTreeSet::new();
        let ops: [(bool, Rank); 14] = [
            (true, 3), (true, 63), (true, 64), (true, 1023), (true, 0), (true, 3), (false, 64),
            (true, 700), (false, 3), (false, 5), (false, 1023), (false, 700), (true, 64), (false, 2000),
        ];
        for (insert, r) in ops {
            let (got, want) = if insert { (set.insert(r), model.insert(r)) } else { (set.remove(r), model.remove(&r)) };
            assert_eq!(got, want, "{} {r}", if insert { "insert" } else { "remove" });
            assert_eq!(set.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            assert_eq!(set.is_empty(), model.is_empty());
            for probe in [0, 3, 63, 64, 700, 1023, 2000] {
                assert_eq!(set.contains(probe), model.contains(&probe));
            }
        }
        // Removing the last high rank drops the tree: equal to a set that never had one.
        let mut a = RankSet::default();
        a.insert(1);
        a.insert(100);
        a.remove(100);
        let mut b = RankSet::default();
        b.insert(1);
        assert_eq!(a, b);
        a.clear();
        assert!(a.is_empty() && a.iter().next().is_none());
    }
}
