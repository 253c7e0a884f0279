//! Requests whose body length is ambiguous are refused: a request with both
//! `Transfer-Encoding` and `Content-Length` (the shape of request smuggling) gets 400.
//!
//! hyper follows RFC 9112 (Transfer-Encoding wins, the connection closes after the answer) and
//! drops `Content-Length` before a handler could see both, so the check reads the bytes as they
//! arrive: [`Framing`] follows each request head (parsed with `httparse`, hyper's own parser) and
//! its body framing (a length, or chunks) to the next head, and records one verdict per head in
//! order. [`crate::connections`] takes one verdict per request hyper hands over. On bytes it
//! cannot follow it stops judging (hyper refuses such bytes itself and closes), and requests
//! then pass unjudged: it can only ever add refusals for heads it parsed. This module knows no
//! routes and writes no responses.

use std::collections::VecDeque;

/// The most headers one head may have (hyper's default limit too).
const MAX_HEADERS: usize = 100;

/// The longest chunk-size line followed (hex digits and extensions).
const MAX_CHUNK_LINE: usize = 4096;

/// What one request head says about its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// One way to find the body's end (or no body).
    Clear,
    /// Both `Transfer-Encoding` and `Content-Length`.
    Ambiguous,
}

#[derive(Debug)]
enum State {
    Head(Vec<u8>),
    Fixed(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkDataEnd(u8),
    Trailers(Vec<u8>),
    Lost,
}

/// Follows the request framing of one connection's inbound bytes.
#[derive(Debug)]
pub struct Framing {
    state: State,
    max_head: usize,
    verdicts: VecDeque<Verdict>,
}

impl Framing {
    /// A connection whose heads are at most `max_head` bytes (larger ones hyper refuses).
    pub fn new(max_head: usize) -> Self {
        Self {
            state: State::Head(Vec::new()),
            max_head,
            verdicts: VecDeque::new(),
        }
    }

    /// The verdict on the next request, in order; `None` once the bytes could not be followed.
    pub fn next_verdict(&mut self) -> Option<Verdict> {
        self.verdicts.pop_front()
    }

    /// Feeds bytes as they arrive.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            bytes = match &mut self.state {
                State::Lost => return,
                State::Head(buf) => {
                    // A head is kept only until it is complete; bytes after it are re-fed.
                    let had = buf.len();
                    let take = bytes.len().min(self.max_head + 1 - had.min(self.max_head));
                    buf.extend_from_slice(&bytes[..take]);
                    match head(buf) {
                        Ok(Some((len, verdict, next))) => {
                            self.verdicts.push_back(verdict);
                            self.state = next;
                            &bytes[len.saturating_sub(had).min(bytes.len())..]
                        }
                        Ok(None) if buf.len() > self.max_head => {
                            self.state = State::Lost;
                            return;
                        }
                        Ok(None) => &bytes[take..],
                        Err(()) => {
                            self.state = State::Lost;
                            return;
                        }
                    }
                }
                State::Fixed(left) => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::Head(Vec::new());
                    }
                    &bytes[n..]
                }
                State::ChunkData(left) => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len());
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::ChunkDataEnd(0);
                    }
                    &bytes[n..]
                }
                State::ChunkDataEnd(seen) => {
                    let expected = b"\r\n"[usize::from(*seen)];
                    if bytes[0] != expected {
                        self.state = State::Lost;
                        return;
                    }
                    *seen += 1;
                    if *seen == 2 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                    &bytes[1..]
                }
                State::ChunkSize(line) => match bytes.iter().position(|b| *b == b'\n') {
                    None => {
                        line.extend_from_slice(bytes);
                        if line.len() > MAX_CHUNK_LINE {
                            self.state = State::Lost;
                        }
                        return;
                    }
                    Some(end) => {
                        line.extend_from_slice(&bytes[..end]);
                        // The same bound as above, so that a line is judged alike however
                        // its bytes were split into reads.
                        if line.len() > MAX_CHUNK_LINE {
                            self.state = State::Lost;
                            return;
                        }
                        self.state = match chunk_size(line) {
                            Some(0) => State::Trailers(Vec::new()),
                            Some(size) => State::ChunkData(size),
                            None => State::Lost,
                        };
                        &bytes[end + 1..]
                    }
                },
                State::Trailers(line) => match bytes.iter().position(|b| *b == b'\n') {
                    None => {
                        line.extend_from_slice(bytes);
                        if line.len() > self.max_head {
                            self.state = State::Lost;
                        }
                        return;
                    }
                    Some(end) => {
                        line.extend_from_slice(&bytes[..end]);
                        if line.len() > self.max_head {
                            self.state = State::Lost;
                            return;
                        }
                        let empty = line.is_empty() || line.as_slice() == b"\r";
                        line.clear();
                        if empty {
                            self.state = State::Head(Vec::new());
                        }
                        &bytes[end + 1..]
                    }
                },
            };
        }
    }
}

/// Parses a complete head in `buf`: its length, its verdict and where its body's bytes go.
/// `Ok(None)` while incomplete; `Err` for what hyper would refuse too.
#[allow(clippy::type_complexity)]
fn head(buf: &[u8]) -> Result<Option<(usize, Verdict, State)>, ()> {
    // hyper tolerates empty lines before a request line.
    let start = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(&buf[start..]) {
        Ok(httparse::Status::Complete(len)) => start + len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    if request.method == Some("CONNECT") {
        return Err(());
    }
    let mut content_length = None;
    let mut chunked = None;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(header.value).map_err(|_| ())?;
            content_length = Some(text.trim().parse::<u64>().map_err(|_| ())?);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            let text = std::str::from_utf8(header.value).map_err(|_| ())?;
            let last = text.rsplit(',').next().unwrap_or_default().trim();
            chunked = Some(last.eq_ignore_ascii_case("chunked"));
        }
    }
    let (verdict, next) = match (chunked, content_length) {
        // hyper closes the connection after such a request: nothing after it is judged.
        (Some(_), Some(_)) => (Verdict::Ambiguous, State::Lost),
        (Some(true), None) => (Verdict::Clear, State::ChunkSize(Vec::new())),
        (Some(false), None) => return Err(()),
        (None, Some(0) | None) => (Verdict::Clear, State::Head(Vec::new())),
        (None, Some(n)) => (Verdict::Clear, State::Fixed(n)),
    };
    Ok(Some((len, verdict, next)))
}

/// The size of a chunk-size line (`1a;ext=v\r`), or `None`.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.split(|b| *b == b';').next()?;
    let digits = std::str::from_utf8(digits)
        .ok()?
        .trim_end_matches([' ', '\t']);
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(bytes: &[u8], piece: usize) -> Vec<Verdict> {
        let mut framing = Framing::new(16 * 1024);
        for part in bytes.chunks(piece) {
            framing.feed(part);
        }
        std::iter::from_fn(|| framing.next_verdict()).collect()
    }

    const PIPELINE: &[u8] = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nGET /\
POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\n\
\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n\
POST /d HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";

    #[test]
    fn each_head_gets_one_verdict_in_order_however_the_bytes_are_split() {
        use Verdict::{Ambiguous, Clear};
        for piece in [1, 2, 3, 7, 64, PIPELINE.len()] {
            assert_eq!(
                verdicts(PIPELINE, piece),
                vec![Clear, Clear, Clear, Ambiguous],
                "read {piece} bytes at a time"
            );
        }
    }

    #[test]
    fn either_order_of_the_two_headers_is_ambiguous() {
        let te_first =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 2\r\n\r\n";
        assert_eq!(verdicts(te_first, 5), vec![Verdict::Ambiguous]);
        let gzip_then_chunked =
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(verdicts(gzip_then_chunked, 5), vec![Verdict::Ambiguous]);
    }

    #[test]
    fn an_overlong_chunk_line_or_trailer_stops_the_verdicts_however_it_is_split() {
        // Caught by the `framing` fuzz target's split property (seeds `long-chunk-extension`,
        // `long-trailer`): a line over the limit was followed when its newline came in the same
        // read, and given up on when it did not.
        let after =
            b"GET /next HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let long_extension = [
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;".as_slice(),
            &[b'x'; MAX_CHUNK_LINE + 10],
            b"\r\na\r\n0\r\n\r\n",
            after,
        ]
        .concat();
        let long_trailer = [
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: ".as_slice(),
            &[b'y'; 20_000],
            b"\r\n\r\n",
            after,
        ]
        .concat();
        for bytes in [long_extension, long_trailer] {
            for piece in [1, 100, bytes.len()] {
                assert_eq!(
                    verdicts(&bytes, piece),
                    vec![Verdict::Clear],
                    "{piece} at a time"
                );
            }
        }
    }

    #[test]
    fn bytes_that_cannot_be_followed_stop_the_verdicts() {
        let bad_chunk =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(verdicts(bad_chunk, 4), vec![Verdict::Clear]);
        let huge = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 20_000]].concat();
        assert_eq!(verdicts(&huge, 1000), vec![]);
    }
}
