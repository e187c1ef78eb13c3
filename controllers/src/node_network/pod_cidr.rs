//! Pod CIDRs for bare-metal nodes from Sextant's own cluster pool, for
//! clusters whose controller-manager does not allocate `Node.spec.podCIDR`
//! (`--allocate-node-cidrs=false`). A node's block is recorded in its
//! NodeNetwork's `spec.podCIDRs`, so the NodeNetworks are the allocation
//! table: a block is free when no NodeNetwork holds any part of it, nor a
//! create in flight, nor one that left within the quarantine (its pods may
//! still be being removed).
//!
//! ```text
//!  node without podCIDR ─▶ lock ─▶ taken = NodeNetworks' CIDRs ∪ in flight ∪ quarantined
//!                               ─▶ first free block (pure) ─▶ POST NodeNetwork ─▶ unlock
//! ```
//!
//! Only the leader creates NodeNetworks, so one process allocates. After an
//! operator restart the quarantine starts empty: a block freed just before
//! may be handed out at once (the pod garbage collector has normally removed
//! the dead node's pods by then).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::Duration,
};

use tokio::time::Instant;

/// An IPv4 CIDR as a start address and a prefix length, normalised to its
/// network address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    network: u32,
    len: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/len`; host bits are cleared.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, len) = sextant_crds::parse_ipv4_cidr(s.trim())?;
        Some(Cidr::new(addr, len))
    }

    fn new(addr: Ipv4Addr, len: u8) -> Cidr {
        let len = len.min(32);
        Cidr {
            network: u32::from(addr) & mask(len),
            len,
        }
    }

    /// First and last address, as numbers.
    fn range(self) -> (u64, u64) {
        let first = u64::from(self.network);
        (first, first + (1u64 << (32 - u32::from(self.len))) - 1)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.len)
    }
}

fn mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

/// Why a pool cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// A pool entry is not an IPv4 CIDR.
    #[error("--pod-cidr-pool entry {0:?} is not an IPv4 CIDR (a.b.c.d/len)")]
    BadCidr(String),
    /// The node mask does not fit a pool block.
    #[error(
        "--pod-cidr-mask-size {mask} is outside /{smallest}..=/30: every pool CIDR must hold at least one node block of at least 4 addresses"
    )]
    BadMask {
        /// The node mask.
        mask: u8,
        /// The longest prefix among the pool's CIDRs.
        smallest: u8,
    },
    /// Two pool CIDRs overlap.
    #[error("--pod-cidr-pool entries {0} and {1} overlap")]
    Overlap(String, String),
}

/// The cluster pool: CIDRs cut into node blocks of one prefix length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCidrPool {
    cidrs: Vec<Cidr>,
    node_len: u8,
}

impl PodCidrPool {
    /// A pool of `cidrs` handing out `/node_len` blocks.
    pub fn new(cidrs: &[String], node_len: u8) -> Result<PodCidrPool, PoolError> {
        let mut parsed = Vec::with_capacity(cidrs.len());
        for c in cidrs {
            parsed.push(Cidr::parse(c).ok_or_else(|| PoolError::BadCidr(c.clone()))?);
        }
        parsed.sort();
        for w in parsed.windows(2) {
            if w[1].range().0 <= w[0].range().1 {
                return Err(PoolError::Overlap(w[0].to_string(), w[1].to_string()));
            }
        }
        let smallest = parsed.iter().map(|c| c.len).max().unwrap_or(0);
        if node_len < smallest || node_len > 30 {
            return Err(PoolError::BadMask {
                mask: node_len,
                smallest,
            });
        }
        Ok(PodCidrPool {
            cidrs: parsed,
            node_len,
        })
    }

    /// The first node block that overlaps none of `taken` (CIDRs of any
    /// size, inside the pool or not), lowest address first; `None` when the
    /// pool is full. Skips over each taken range instead of testing every
    /// block, so a /8 pool with thousands of nodes stays cheap.
    pub fn first_free(&self, taken: &BTreeSet<Cidr>) -> Option<Cidr> {
        let ranges: Vec<(u64, u64)> = merged(taken.iter().map(|c| c.range()));
        let block = 1u64 << (32 - u32::from(self.node_len));
        for pool in &self.cidrs {
            let (start, end) = pool.range();
            let mut at = start;
            // The first taken range that may end at or after `at`.
            let mut i = ranges.partition_point(|r| r.1 < at);
            while at + block - 1 <= end {
                match ranges.get(i) {
                    Some(&(first, last)) if first <= at + block - 1 => {
                        // Overlaps: jump past it, to the next block boundary.
                        let next = last + 1;
                        at = next.div_ceil(block) * block;
                        i += 1;
                        while ranges.get(i).is_some_and(|r| r.1 < at) {
                            i += 1;
                        }
                    }
                    _ => {
                        let network = u32::try_from(at).ok()?;
                        return Some(Cidr {
                            network,
                            len: self.node_len,
                        });
                    }
                }
            }
        }
        None
    }

    /// The node block's prefix length.
    pub fn node_len(&self) -> u8 {
        self.node_len
    }

    /// How many node blocks the pool has in all.
    pub fn blocks(&self) -> u64 {
        self.cidrs
            .iter()
            .map(|c| 1u64 << (u32::from(self.node_len) - u32::from(c.len)))
            .sum()
    }
}

/// Sorted, merged `(first, last)` ranges.
fn merged(ranges: impl Iterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = ranges.collect();
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (first, last) in v {
        match out.last_mut() {
            Some(prev) if first <= prev.1 + 1 => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out
}

/// The allocator's memory between calls: blocks handed out whose
/// NodeNetwork the cache has not shown yet, and blocks that left the cache
/// recently.
#[derive(Debug, Default)]
pub struct Allocations {
    /// Node name → the block created for it, until the cache shows it.
    in_flight: BTreeMap<String, Cidr>,
    /// Blocks seen in the cache at the last allocation.
    seen: BTreeSet<Cidr>,
    /// Blocks that left the cache, with when that was noticed.
    quarantined: BTreeMap<Cidr, Instant>,
}

impl Allocations {
    /// Picks `node`'s block given `cached`, the CIDRs of the NodeNetworks in
    /// the cache by node name, at `now`; remembers it as in flight. `None`
    /// when the pool is full.
    pub fn allocate(
        &mut self,
        pool: &PodCidrPool,
        node: &str,
        cached: &BTreeMap<String, Vec<Cidr>>,
        now: Instant,
        quarantine: Duration,
    ) -> Option<Cidr> {
        let present: BTreeSet<Cidr> = cached.values().flatten().copied().collect();
        // A create the cache now shows (under its node) is no longer in flight.
        self.in_flight
            .retain(|n, c| !cached.get(n).is_some_and(|cs| cs.contains(c)));
        for gone in self.seen.difference(&present) {
            self.quarantined.entry(*gone).or_insert(now);
        }
        self.quarantined
            .retain(|c, since| !present.contains(c) && now.duration_since(*since) < quarantine);
        self.seen = present.clone();
        if let Some(c) = self.in_flight.get(node) {
            return Some(*c);
        }
        let mut taken = present;
        taken.extend(self.in_flight.values().copied());
        taken.extend(self.quarantined.keys().copied());
        let block = pool.first_free(&taken)?;
        self.in_flight.insert(node.to_owned(), block);
        Some(block)
    }

    /// `node`'s create failed: its block is free again.
    pub fn abandon(&mut self, node: &str) {
        self.in_flight.remove(node);
    }

    /// Blocks in quarantine.
    pub fn quarantined(&self) -> usize {
        self.quarantined.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    fn pool(cidrs: &[&str], len: u8) -> PodCidrPool {
        PodCidrPool::new(
            &cidrs.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
            len,
        )
        .unwrap()
    }

    #[test]
    fn blocks_are_handed_out_lowest_first_around_taken_ranges() {
        let p = pool(&["10.244.0.0/16"], 25);
        assert_eq!(p.blocks(), 512);
        assert_eq!(p.first_free(&BTreeSet::new()), Some(c("10.244.0.0/25")));
        let taken: BTreeSet<Cidr> = [c("10.244.0.0/25"), c("10.244.0.200/32")].into();
        // 10.244.0.128/25 holds a taken /32: the next whole block is free.
        assert_eq!(p.first_free(&taken), Some(c("10.244.1.0/25")));
        // A controller-manager /24 over two blocks.
        let taken: BTreeSet<Cidr> = [c("10.244.0.0/24")].into();
        assert_eq!(p.first_free(&taken), Some(c("10.244.1.0/25")));
    }

    #[test]
    fn a_full_pool_gives_nothing_and_the_next_pool_cidr_is_used() {
        let p = pool(&["10.1.0.0/24", "10.2.0.0/24"], 25);
        let taken: BTreeSet<Cidr> = [c("10.1.0.0/25"), c("10.1.0.128/25")].into();
        assert_eq!(p.first_free(&taken), Some(c("10.2.0.0/25")));
        let taken: BTreeSet<Cidr> = [c("10.0.0.0/14")].into();
        assert_eq!(p.first_free(&taken), None);
    }

    #[test]
    fn bad_pools_are_refused_with_the_reason() {
        let e = PodCidrPool::new(&["10.0.0.0/33".into()], 24).unwrap_err();
        assert!(e.to_string().contains("10.0.0.0/33"), "{e}");
        let e = PodCidrPool::new(&["10.0.0.0/24".into()], 20).unwrap_err();
        assert!(
            matches!(
                e,
                PoolError::BadMask {
                    mask: 20,
                    smallest: 24
                }
            ),
            "{e}"
        );
        let e = PodCidrPool::new(&["10.0.0.0/16".into(), "10.0.5.0/24".into()], 25).unwrap_err();
        assert!(matches!(e, PoolError::Overlap(..)), "{e}");
        let e = PodCidrPool::new(&["10.0.0.0/16".into()], 31).unwrap_err();
        assert!(matches!(e, PoolError::BadMask { .. }), "{e}");
    }

    /// Two nodes allocated before the cache shows either get different
    /// blocks; a block that left the cache waits out the quarantine.
    #[test]
    fn in_flight_and_recently_freed_blocks_are_not_handed_out_again() {
        let p = pool(&["10.244.0.0/24"], 25);
        let mut a = Allocations::default();
        let t0 = Instant::now();
        let q = Duration::from_secs(300);
        let empty = BTreeMap::new();
        let first = a.allocate(&p, "n1", &empty, t0, q).unwrap();
        let second = a.allocate(&p, "n2", &empty, t0, q).unwrap();
        assert_ne!(first, second);
        assert_eq!(
            a.allocate(&p, "n1", &empty, t0, q),
            Some(first),
            "same node, same block"
        );
        assert_eq!(
            a.allocate(&p, "n3", &empty, t0, q),
            None,
            "pool of two blocks"
        );
        // The cache shows both; then n1 is deleted.
        let both: BTreeMap<String, Vec<Cidr>> =
            [("n1".into(), vec![first]), ("n2".into(), vec![second])].into();
        assert_eq!(a.allocate(&p, "n3", &both, t0, q), None);
        let only_n2: BTreeMap<String, Vec<Cidr>> = [("n2".into(), vec![second])].into();
        assert_eq!(
            a.allocate(&p, "n3", &only_n2, t0, q),
            None,
            "n1's block in quarantine"
        );
        assert_eq!(a.quarantined(), 1);
        let later = t0 + q;
        assert_eq!(a.allocate(&p, "n3", &only_n2, later, q), Some(first));
        // A failed create gives its block back.
        a.abandon("n3");
        assert_eq!(a.allocate(&p, "n4", &only_n2, later, q), Some(first));
    }

    proptest! {
        /// Whatever is taken, the block handed out overlaps none of it and
        /// lies inside the pool; `None` only when no block is free.
        #[test]
        fn a_block_handed_out_never_overlaps_a_taken_cidr(
            taken in proptest::collection::btree_set((0u32..4096, 20u8..=32), 0..40),
            node_len in 22u8..=28,
        ) {
            let p = pool(&["10.0.0.0/20"], node_len);
            let taken: BTreeSet<Cidr> = taken
                .into_iter()
                .map(|(off, len)| Cidr::new(Ipv4Addr::from(0x0a00_0000 + off), len))
                .collect();
            let overlaps = |b: Cidr| taken.iter().any(|t| {
                let (a0, a1) = t.range();
                let (b0, b1) = b.range();
                a0 <= b1 && b0 <= a1
            });
            match p.first_free(&taken) {
                Some(b) => {
                    prop_assert!(!overlaps(b), "{b} overlaps {taken:?}");
                    prop_assert_eq!(b.len, node_len);
                    prop_assert!(b.range().0 >= 0x0a00_0000 && b.range().1 <= 0x0a00_0fff);
                    // And it is the lowest such block.
                    let size = 1u64 << (32 - u32::from(node_len));
                    let mut at = 0x0a00_0000u64;
                    while at < b.range().0 {
                        let cand = Cidr::new(Ipv4Addr::from(u32::try_from(at).unwrap()), node_len);
                        prop_assert!(overlaps(cand), "{cand} was free and lower than {b}");
                        at += size;
                    }
                }
                None => {
                    let size = 1u64 << (32 - u32::from(node_len));
                    let mut at = 0x0a00_0000u64;
                    while at <= 0x0a00_0fff {
                        let cand = Cidr::new(Ipv4Addr::from(u32::try_from(at).unwrap()), node_len);
                        prop_assert!(overlaps(cand), "{cand} was free");
                        at += size;
                    }
                }
            }
        }
    }
}
