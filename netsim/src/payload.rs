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

/// Fills `buf` with bytes `offset..offset + buf.len()` of transfer `id`.
pub fn fill(id: u64, offset: u64, buf: &mut [u8]) {
    let key = mix(id);
    let mut o = offset;
    let mut i = 0;
    while i < buf.len() {
        let w = mix(key ^ (o / 8)).to_le_bytes();
        let start = (o % 8) as usize;
        let n = (8 - start).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&w[start..start + n]);
        i += n;
        o += n as u64;
    }
}

/// Whether `data` equals bytes `offset..` of transfer `id`.
pub fn check(id: u64, offset: u64, data: &[u8], scratch: &mut Vec<u8>) -> bool {
    scratch.resize(data.len(), 0);
    fill(id, offset, scratch);
    scratch[..] == *data
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
        let mut scratch = Vec::new();
        assert!(check(42, 101, &part, &mut scratch));
        part[5] ^= 1;
        assert!(!check(42, 101, &part, &mut scratch));
        let mut other = vec![0u8; 1000];
        fill(43, 0, &mut other);
        assert_ne!(whole, other);
    }
}
