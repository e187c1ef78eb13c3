//! Port ranges as prefixes over the 16 port bits, the form an LPM map can match.

/// The fewest `(port, prefix_len)` blocks whose union is exactly
/// `first..=last`: block `(p, n)` covers the ports whose top `n` bits equal
/// `p`'s. `0..=65535` is `[(0, 0)]`; a single port `p` is `[(p, 16)]`.
/// Empty when `first > last`.
pub fn decompose(first: u16, last: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(first), u32::from(last));
    while lo <= hi {
        // Largest aligned block starting at `lo` that does not pass `hi`.
        let mut size_bits = if lo == 0 {
            16
        } else {
            lo.trailing_zeros().min(16)
        };
        while size_bits > 0 && lo + (1u32 << size_bits) - 1 > hi {
            size_bits -= 1;
        }
        // `lo` <= 65535 and `size_bits` <= 16, so both casts are exact.
        out.push((lo as u16, (16 - size_bits) as u8));
        lo += 1u32 << size_bits;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_ranges_decompose_minimally() {
        assert_eq!(decompose(0, 65535), vec![(0, 0)]);
        assert_eq!(decompose(6379, 6379), vec![(6379, 16)]);
        assert_eq!(decompose(8080, 8083), vec![(8080, 14)]);
        assert_eq!(decompose(1, 3), vec![(1, 16), (2, 15)]);
        assert_eq!(decompose(65535, 65535), vec![(65535, 16)]);
        assert!(decompose(5, 4).is_empty());
    }

    proptest! {
        #[test]
        fn port_range_decomposition_covers_exactly_the_range(a: u16, b: u16) {
            let (first, last) = (a.min(b), a.max(b));
            let blocks = decompose(first, last);
            let mut covered = 0u32;
            let mut prev_end: Option<u32> = None;
            for (port, len) in &blocks {
                prop_assert!(*len <= 16);
                let size = 1u32 << (16 - u32::from(*len));
                let start = u32::from(*port);
                prop_assert_eq!(start % size, 0, "aligned block");
                // Blocks are in order, disjoint, and adjacent.
                prop_assert_eq!(prev_end.map_or(u32::from(first), |e| e + 1), start);
                prev_end = Some(start + size - 1);
                covered += size;
            }
            prop_assert_eq!(prev_end, Some(u32::from(last)));
            prop_assert_eq!(covered, u32::from(last) - u32::from(first) + 1);
            // Minimal: at most two blocks per bit level.
            prop_assert!(blocks.len() <= 32);
        }
    }
}
