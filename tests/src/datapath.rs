//! The messages of the data-path tests: numbered per producer, of
//! pseudo-random sizes, with content a consumer can check.

/// Bytes of a message's header: producer id (`u32`), length (`u32`) and
/// sequence number (`u64`), little-endian.
pub const HEADER: usize = 16;

/// The length of message `seq` of producer `id`: from [`HEADER`] to `max`,
/// spread by a hash of both.
pub fn length(id: u32, seq: u64, max: usize) -> usize {
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(id).rotate_left(32);
    x ^= x >> 29;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 32;
    let span = (max - HEADER + 1) as u64;
    // Below `span`, which came from a `usize`.
    #[allow(clippy::cast_possible_truncation)]
    let extra = (x % span) as usize;
    HEADER + extra
}

/// Fills `out` with message `seq` of producer `id`: the header, then a byte
/// pattern of both, with `seq` again in the last 8 bytes when there is room.
pub fn message(id: u32, seq: u64, max: usize, out: &mut Vec<u8>) {
    let len = length(id, seq, max);
    out.clear();
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&u32::try_from(len).expect("lengths fit u32").to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.resize(len, pattern(id, seq));
    if len >= HEADER + 8 {
        out[len - 8..].copy_from_slice(&seq.to_le_bytes());
    }
}

/// The filler byte of message `seq` of producer `id`.
fn pattern(id: u32, seq: u64) -> u8 {
    (u64::from(id) * 31 + seq).to_le_bytes()[0]
}

/// Checks a received message's bytes (`read(offset, buf)` copies them out)
/// and returns its producer id and sequence number.
///
/// # Panics
/// If the message is not one [`message`] makes.
pub fn check(len: usize, mut read: impl FnMut(usize, &mut [u8])) -> (u32, u64) {
    assert!(
        len >= HEADER,
        "a {len}-byte message is shorter than its header"
    );
    let mut header = [0; HEADER];
    read(0, &mut header);
    let word = |range: std::ops::Range<usize>| {
        let mut bytes = [0; 8];
        bytes[..range.len()].copy_from_slice(&header[range]);
        u64::from_le_bytes(bytes)
    };
    let id = u32::try_from(word(0..4)).expect("4 bytes");
    let seq = word(8..16);
    assert_eq!(word(4..8), len as u64, "length field of {id}/{seq}");
    let mut tail = [0; 8];
    if len >= HEADER + 8 {
        read(len - 8, &mut tail);
        assert_eq!(u64::from_le_bytes(tail), seq, "trailer of {id}/{seq}");
    }
    if len > HEADER + 8 {
        let mut middle = [0];
        read(HEADER + (len - HEADER - 8) / 2, &mut middle);
        assert_eq!(middle[0], pattern(id, seq), "filler of {id}/{seq}");
    }
    (id, seq)
}
