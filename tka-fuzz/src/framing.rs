//! The HTTP/1.1 framing follower in front of the login API (`tka_server::framing`), which reads
//! raw bytes from the network to refuse requests whose body length is ambiguous.
//!
//! Input: a byte string; its first byte sets the head limit and the piece size. Properties:
//! - the verdicts (one per request head, in order) do not depend on how the bytes are split
//!   into reads: whole, in pieces of the chosen size, and one byte at a time agree;
//! - there are never more verdicts than request heads could fit in the bytes.

use tka_server::framing::{Framing, Verdict};

/// The target.
pub fn target(data: &[u8]) {
    let [setting, bytes @ ..] = data else {
        return;
    };
    let max_head = 64 + usize::from(*setting) * 4;
    let piece = usize::from(*setting % 17) + 1;
    let whole = verdicts(max_head, bytes, bytes.len().max(1));
    assert_eq!(
        whole,
        verdicts(max_head, bytes, piece),
        "split in pieces of {piece}"
    );
    assert_eq!(
        whole,
        verdicts(max_head, bytes, 1),
        "split into single bytes"
    );
    // The shortest head, `GET / HTTP/1.1\r\n\r\n`... is more than 16 bytes; `A / HTTP/1.1\n\n`
    // is 14.
    assert!(
        whole.len() <= bytes.len() / 14 + 1,
        "{} verdicts from {} bytes",
        whole.len(),
        bytes.len()
    );
}

fn verdicts(max_head: usize, bytes: &[u8], piece: usize) -> Vec<Verdict> {
    let mut framing = Framing::new(max_head);
    for part in bytes.chunks(piece) {
        framing.feed(part);
    }
    std::iter::from_fn(|| framing.next_verdict()).collect()
}
