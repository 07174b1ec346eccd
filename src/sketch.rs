//! Approx mode's per-window HyperLogLog sketch (SPEC §3a), bit for bit Redis's own.
//!
//! Owns the keyed id hash, Redis's element hash (MurmurHash64A, seed `0xadc83b19`), its
//! register rule (precision 14: the low 14 bits pick one of 16 384 registers, the run of
//! zeros above them plus one is the register's candidate), its dense encoding (the `HYLL`
//! header and 6-bit registers, little-endian) and its estimator (Ertl's, as `PFCOUNT` since
//! Redis 5). So a sketch built here and written to Redis is a value that `PFMERGE` and
//! `PFCOUNT` read directly, and verve's estimate of it equals `PFCOUNT`'s.
//!
//! An update is one register's `fetch_max`, lock-free, with no allocation. It never does
//! I/O: the reporter decides when a sketch goes to Redis.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// Bits of the hash that pick a register.
pub const PRECISION: u32 = 14;

/// Registers per sketch: 16 384, standard error 1.04 / √16 384 = 0.81 %.
pub const REGISTERS: usize = 1 << PRECISION;

/// Bits of the hash above the register index (Redis's `HLL_Q`).
const Q: u32 = 64 - PRECISION;

/// Bytes of Redis's dense header: `HYLL`, the encoding, three unused bytes, the cached
/// cardinality (8 bytes, little-endian; its top bit set means "invalid, compute it").
const HEADER: usize = 16;

/// Bytes of a dense sketch as Redis stores it: the header and 16 384 six-bit registers.
pub const DENSE_BYTES: usize = HEADER + REGISTERS * 6 / 8;

/// Redis's `HLL_ALPHA_INF`: 1 / (2 ln 2).
const ALPHA_INF: f64 = 0.721_347_520_444_481_7;

/// The secret that ids are hashed with before Redis's hash (SipHash-1-3, 128-bit key), so a
/// caller cannot pick ids whose hashes hold long runs of zeros: each such id would move the
/// estimate by a factor, and a few hundred would inflate it by orders of magnitude.
/// Fleet-wide (kept in Redis) in fleet mode, per process on a single node.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HashKey {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for HashKey {
    /// Never prints the key itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HashKey({})", self.id())
    }
}

impl HashKey {
    /// A key from the OS's random source (ring's `SystemRandom`; std's `RandomState` only if
    /// that fails, which on Linux it does not).
    pub fn random() -> Self {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 16];
        if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
            use std::hash::BuildHasher;
            let state = std::collections::hash_map::RandomState::new();
            bytes[..8].copy_from_slice(&state.hash_one(0x6b30_u64).to_le_bytes());
            bytes[8..].copy_from_slice(&state.hash_one(0x6b31_u64).to_le_bytes());
        }
        let (k0, k1) = bytes.split_at(8);
        Self {
            k0: u64::from_le_bytes(k0.try_into().unwrap_or_default()),
            k1: u64::from_le_bytes(k1.try_into().unwrap_or_default()),
        }
    }

    /// The key derived from a configured secret (`--hash-key`): the first 128 bits of
    /// SHA-256 over a label and the secret, so every instance given it hashes alike.
    pub fn derive(secret: &str) -> Self {
        let mut input = b"verve hash key\0".to_vec();
        input.extend_from_slice(secret.as_bytes());
        let digest = ring::digest::digest(&ring::digest::SHA256, &input);
        let bytes = digest.as_ref();
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(w)
        };
        Self {
            k0: word(0),
            k1: word(8),
        }
    }

    /// The key as stored in Redis: 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        format!("{:016x}{:016x}", self.k0, self.k1)
    }

    /// Parses [`HashKey::to_hex`]'s form.
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(Self {
            k0: u64::from_str_radix(&text[..16], 16).ok()?,
            k1: u64::from_str_radix(&text[16..], 16).ok()?,
        })
    }

    /// A short name of the key that gives nothing of it away (the instances of a fleet
    /// compare it in their settings announcement): 8 hex digits of its own keyed hash.
    pub fn id(&self) -> String {
        format!("{:08x}", self.hash(b"verve key id") >> 32)
    }

    /// The bytes an id is counted as: SipHash-1-3 of the id's canonical decimal form
    /// (`007` and `7` are one id), little-endian. These are what Redis's `PFADD` of the same
    /// id would be given.
    pub fn keyed(&self, id: i64) -> [u8; 8] {
        let mut digits = [0u8; 20];
        self.hash(decimal(id, &mut digits)).to_le_bytes()
    }

    fn hash(&self, bytes: &[u8]) -> u64 {
        use std::hash::Hasher;
        let mut h = siphasher::sip::SipHasher13::new_with_keys(self.k0, self.k1);
        h.write(bytes);
        h.finish()
    }
}

/// The canonical decimal form of `id` (no leading zeros, `-` for negatives), written into
/// `buf`, without allocating.
fn decimal(id: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut n = id.unsigned_abs();
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if id < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

/// Redis's `MurmurHash64A` (Austin Appleby's, reading 8-byte blocks little-endian).
pub fn murmur64a(data: &[u8], seed: u64) -> u64 {
    const M: u64 = 0xc6a4_a793_5bd1_e995;
    const R: u32 = 47;
    let mut h = seed ^ (data.len() as u64).wrapping_mul(M);
    let mut blocks = data.chunks_exact(8);
    for block in &mut blocks {
        let mut k = u64::from_le_bytes(block.try_into().unwrap_or([0; 8]));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h ^= k;
        h = h.wrapping_mul(M);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        for (i, &b) in tail.iter().enumerate() {
            h ^= u64::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> R;
    h = h.wrapping_mul(M);
    h ^= h >> R;
    h
}

/// Redis's `hllPatLen`: the register an element updates and the value it offers (the run of
/// zeros above the index bits, plus one; at most `Q + 1` = 51).
pub fn pattern(element: &[u8]) -> (usize, u8) {
    let hash = murmur64a(element, 0xadc8_3b19);
    let index = (hash & (REGISTERS as u64 - 1)) as usize;
    let rest = (hash >> PRECISION) | (1 << Q);
    (index, rest.trailing_zeros() as u8 + 1)
}

/// One window's sketch: 16 384 registers, each updated lock-free (`fetch_max`).
pub struct Sketch {
    registers: Box<[AtomicU8]>,
    /// Set when a register grew since [`Sketch::take_changed`] last cleared it: the fleet
    /// only writes a sketch to Redis when it changed.
    changed: AtomicBool,
}

impl Default for Sketch {
    fn default() -> Self {
        Self::new()
    }
}

impl Sketch {
    pub fn new() -> Self {
        Self {
            registers: (0..REGISTERS).map(|_| AtomicU8::new(0)).collect(),
            changed: AtomicBool::new(false),
        }
    }

    /// Counts `id`, keyed with `key`.
    pub fn insert(&self, key: &HashKey, id: i64) {
        self.add(&key.keyed(id));
    }

    /// Counts an element as Redis's `PFADD` would; true when a register grew.
    pub fn add(&self, element: &[u8]) -> bool {
        let (index, value) = pattern(element);
        let register = &self.registers[index];
        // Read first: once a register holds its value, most updates only read it.
        if register.load(Ordering::Relaxed) >= value {
            return false;
        }
        if register.fetch_max(value, Ordering::Relaxed) >= value {
            return false;
        }
        if !self.changed.load(Ordering::Relaxed) {
            self.changed.store(true, Ordering::Release);
        }
        true
    }

    /// Whether a register grew since [`Sketch::take_changed`] last cleared the mark.
    pub fn changed(&self) -> bool {
        self.changed.load(Ordering::Acquire)
    }

    /// Whether a register grew since the last call; clears the mark. Cleared before the
    /// registers are read, so a growth racing with a write to Redis is written next time.
    pub fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::AcqRel)
    }

    /// Marks the sketch changed again (a write of it failed).
    pub fn mark_changed(&self) {
        self.changed.store(true, Ordering::Release);
    }

    /// The registers' values, one byte each.
    pub fn registers(&self) -> Vec<u8> {
        self.registers
            .iter()
            .map(|r| r.load(Ordering::Acquire))
            .collect()
    }

    /// The estimate, as `PFCOUNT` gives it for this sketch.
    pub fn estimate(&self) -> u64 {
        estimate(&self.registers())
    }

    /// Redis's dense encoding of the sketch, with the cached cardinality marked invalid, so
    /// that `PFCOUNT` computes it rather than trusting a value a writer chose.
    pub fn dense(&self) -> Vec<u8> {
        dense(&self.registers())
    }
}

/// Redis's dense encoding of one-byte-per-register `registers` (see [`Sketch::dense`]).
pub fn dense(registers: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; DENSE_BYTES];
    out[..4].copy_from_slice(b"HYLL");
    // out[4] = 0: the dense encoding; out[8..16]: the cache, marked invalid below.
    out[HEADER - 1] |= 0x80;
    let body = &mut out[HEADER..];
    for (i, &value) in registers.iter().enumerate().take(REGISTERS) {
        let bit = i * 6;
        let (byte, shift) = (bit / 8, bit % 8);
        let value = u16::from(value & 63) << shift;
        body[byte] |= value as u8;
        if shift > 2 {
            body[byte + 1] |= (value >> 8) as u8;
        }
    }
    out
}

/// The registers of Redis's dense encoding, one byte each; `None` if `bytes` is not one.
pub fn registers_of_dense(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() != DENSE_BYTES || &bytes[..4] != b"HYLL" || bytes[4] != 0 {
        return None;
    }
    let body = &bytes[HEADER..];
    Some(
        (0..REGISTERS)
            .map(|i| {
                let bit = i * 6;
                let (byte, shift) = (bit / 8, bit % 8);
                let next = body.get(byte + 1).copied().unwrap_or(0);
                let pair = u16::from(body[byte]) | (u16::from(next) << 8);
                ((pair >> shift) & 63) as u8
            })
            .collect(),
    )
}

/// Ertl's improved estimator over one-byte registers, as Redis's `hllCount` computes it.
pub fn estimate(registers: &[u8]) -> u64 {
    let m = REGISTERS as f64;
    let mut histogram = [0u32; 64];
    for &r in registers {
        histogram[usize::from(r & 63)] += 1;
    }
    let q = Q as usize;
    let mut z = m * tau((m - f64::from(histogram[q + 1])) / m);
    for j in (1..=q).rev() {
        z += f64::from(histogram[j]);
        z *= 0.5;
    }
    z += m * sigma(f64::from(histogram[0]) / m);
    (ALPHA_INF * m * m / z).round() as u64
}

/// Ertl's σ (arXiv:1702.01284), iterated to a fixed point as Redis does.
fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let mut y = 1.0;
    let mut z = x;
    loop {
        x *= x;
        let before = z;
        z += x * y;
        y += y;
        if before == z {
            return z;
        }
    }
}

/// Ertl's τ, likewise.
fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let mut y = 1.0;
    let mut z = 1.0 - x;
    loop {
        x = x.sqrt();
        let before = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if before == z {
            return z / 3.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_decimal() {
        let mut buf = [0u8; 20];
        for (id, text) in [
            (0, "0"),
            (7, "7"),
            (-1, "-1"),
            (1_234_567_890, "1234567890"),
            (i64::MAX, "9223372036854775807"),
            (i64::MIN, "-9223372036854775808"),
        ] {
            assert_eq!(decimal(id, &mut buf), text.as_bytes());
        }
    }

    #[test]
    fn murmur_matches_reference_values() {
        // MurmurHash64A of the empty input with seed 0 is 0; these pin the block and tail
        // paths (checked against Redis itself in tests/approx.rs).
        assert_eq!(murmur64a(b"", 0), 0);
        assert_ne!(murmur64a(b"a", 0xadc8_3b19), murmur64a(b"b", 0xadc8_3b19));
        assert_ne!(
            murmur64a(b"12345678", 0xadc8_3b19),
            murmur64a(b"123456789", 0xadc8_3b19)
        );
    }

    #[test]
    fn pattern_bounds() {
        for i in 0..10_000u32 {
            let (index, value) = pattern(&i.to_le_bytes());
            assert!(index < REGISTERS);
            assert!((1..=51).contains(&value));
        }
    }

    #[test]
    fn dense_round_trips_every_register() {
        let registers: Vec<u8> = (0..REGISTERS).map(|i| (i * 7 % 52) as u8).collect();
        let bytes = dense(&registers);
        assert_eq!(bytes.len(), DENSE_BYTES);
        assert_eq!(&bytes[..4], b"HYLL");
        assert_eq!(bytes[15] & 0x80, 0x80, "cached cardinality marked invalid");
        assert_eq!(registers_of_dense(&bytes).unwrap(), registers);
    }

    #[test]
    fn empty_and_small_estimates() {
        assert_eq!(Sketch::new().estimate(), 0);
        let key = HashKey::random();
        let sketch = Sketch::new();
        for id in 0..1000 {
            sketch.insert(&key, id);
            sketch.insert(&key, id); // repeats change nothing
        }
        let e = sketch.estimate() as f64;
        assert!((e - 1000.0).abs() / 1000.0 < 0.03, "estimate {e}");
    }

    #[test]
    fn keys_round_trip_and_differ() {
        let key = HashKey::random();
        assert_eq!(HashKey::from_hex(&key.to_hex()), Some(key));
        assert_ne!(HashKey::random(), key);
        assert_eq!(HashKey::from_hex("xyz"), None);
        let derived = HashKey::derive("a fleet's shared secret");
        assert_eq!(derived, HashKey::derive("a fleet's shared secret"));
        assert_ne!(derived, HashKey::derive("another fleet's secret"));
        assert_ne!(key.keyed(7), HashKey::random().keyed(7));
        assert!(!format!("{key:?}").contains(&key.to_hex()[..16]));
    }

    /// Ids chosen for long runs of zeros under Redis's unkeyed hash (what a caller who knows
    /// the hash can compute) inflate an unkeyed sketch by orders of magnitude; keyed, they
    /// count as what they are.
    #[test]
    fn crafted_ids_do_not_inflate_a_keyed_sketch() {
        let mut digits = [0u8; 20];
        let crafted: Vec<i64> = (0i64..)
            .filter(|&id| pattern(decimal(id, &mut digits)).1 >= 8)
            .take(100_000)
            .collect();
        let unkeyed = Sketch::new();
        let keyed = Sketch::new();
        let key = HashKey::random();
        for &id in &crafted {
            unkeyed.add(decimal(id, &mut digits));
            keyed.insert(&key, id);
        }
        let n = crafted.len() as f64;
        assert!(
            unkeyed.estimate() as f64 > 20.0 * n,
            "the attack works unkeyed: {}",
            unkeyed.estimate()
        );
        let e = keyed.estimate() as f64;
        assert!((e - n).abs() / n < 0.025, "keyed estimate {e} of {n}");
    }

    #[test]
    fn changed_is_set_by_growth_only() {
        let sketch = Sketch::new();
        assert!(!sketch.take_changed());
        assert!(sketch.add(b"x"));
        assert!(sketch.take_changed());
        assert!(!sketch.add(b"x"));
        assert!(!sketch.take_changed());
    }
}
