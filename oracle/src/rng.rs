//! Deterministic choices from the input: a hash to seed with, a generator, cut points.

/// The FNV-1a hash of `data`: a seed that makes each input replay the same.
pub(crate) fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Marsaglia's xorshift64: deterministic, and enough to pick split points.
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Up to eight sorted cut points in `0..=len`, starting at 0 and ending at `len`.
pub(crate) fn cut_points(rng: &mut XorShift, len: usize) -> Vec<usize> {
    let n = rng.next() % 8;
    let mut points: Vec<usize> = (0..n)
        .map(|_| (rng.next() % (len as u64 + 1)) as usize)
        .collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points
}
