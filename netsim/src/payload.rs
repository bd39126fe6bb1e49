//! Transfer contents: a deterministic byte pattern per transfer, so the
//! server can generate any range and the client can check every byte it
//! receives without either side storing the payload.

/// SplitMix64 finalizer.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Word `i` of transfer `id` (bytes `8 i..8 i + 8`, little-endian).
fn word(key: u64, i: u64) -> [u8; 8] {
    mix(key ^ i).to_le_bytes()
}

/// Splits `len` bytes starting at `offset` into a head up to the next
/// word boundary, whole words, and a tail.
fn split(offset: u64, len: usize) -> (usize, usize) {
    let head = ((8 - offset % 8) % 8) as usize;
    let head = head.min(len);
    (head, (len - head) / 8 * 8)
}

/// Fills `buf` with bytes `offset..offset + buf.len()` of transfer `id`.
pub fn fill(id: u64, offset: u64, buf: &mut [u8]) {
    let key = mix(id);
    let (head, body) = split(offset, buf.len());
    let first = offset / 8;
    let start = (offset % 8) as usize;
    let (h, rest) = buf.split_at_mut(head);
    h.copy_from_slice(&word(key, first)[start..start + head]);
    let next = (offset + head as u64) / 8;
    let (b, tail) = rest.split_at_mut(body);
    for (i, chunk) in b.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&word(key, next + i as u64));
    }
    let last = next + (body / 8) as u64;
    let n = tail.len();
    tail.copy_from_slice(&word(key, last)[..n]);
}

/// Whether `data` equals bytes `offset..` of transfer `id` (compared word
/// by word, nothing generated into a buffer first).
pub fn check(id: u64, offset: u64, data: &[u8]) -> bool {
    let key = mix(id);
    let (head, body) = split(offset, data.len());
    let start = (offset % 8) as usize;
    let (h, rest) = data.split_at(head);
    if h != &word(key, offset / 8)[start..start + head] {
        return false;
    }
    let next = (offset + head as u64) / 8;
    let (b, tail) = rest.split_at(body);
    let words_match = b
        .chunks_exact(8)
        .enumerate()
        .all(|(i, chunk)| chunk == word(key, next + i as u64));
    words_match && tail == &word(key, next + (body / 8) as u64)[..tail.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_split_gives_the_same_bytes() {
        let mut whole = vec![0u8; 1000];
        fill(42, 0, &mut whole);
        let mut part = vec![0u8; 333];
        fill(42, 101, &mut part);
        assert_eq!(&whole[101..434], &part[..]);
        assert!(check(42, 101, &part));
        part[5] ^= 1;
        assert!(!check(42, 101, &part));
        let mut other = vec![0u8; 1000];
        fill(43, 0, &mut other);
        assert_ne!(whole, other);
    }

    /// Byte `o` of transfer `id`, one at a time: the definition.
    fn byte_at(id: u64, o: u64) -> u8 {
        mix(mix(id) ^ (o / 8)).to_le_bytes()[(o % 8) as usize]
    }

    #[test]
    fn every_offset_and_length_matches_the_bytewise_definition() {
        for offset in 0..24u64 {
            for len in 0..40usize {
                let mut buf = vec![0u8; len];
                fill(7, offset, &mut buf);
                let want: Vec<u8> = (0..len as u64).map(|i| byte_at(7, offset + i)).collect();
                assert_eq!(buf, want, "offset {offset} len {len}");
                assert!(check(7, offset, &want));
                for flip in 0..len {
                    let mut bad = want.clone();
                    bad[flip] ^= 0x80;
                    assert!(
                        !check(7, offset, &bad),
                        "offset {offset} len {len} flip {flip}"
                    );
                }
            }
        }
    }
}
