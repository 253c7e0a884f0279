//! Finding JWT-shaped strings in text, for tests that assert no token reached a log or an
//! output. Kubernetes ServiceAccount tokens (and the fakes' tokens) are JWTs, and a JWT's
//! header always starts `eyJ` (base64url of `{"`), so `eyJ[A-Za-z0-9_-]+\.` finds one without
//! knowing it. It owns the search only; what a test does with a hit is the test's.

/// The first JWT-shaped string in `text` (`eyJ[A-Za-z0-9_-]+\.`: a base64url header and its
/// dot), or `None`.
///
/// ```
/// use tka_testkit::jwt::find_jwt;
/// assert!(find_jwt("token=eyJhbGciOiJSUzI1NiJ9.eyJzdWIi.sig").is_some());
/// assert_eq!(find_jwt("eyJ. eyJ eyJabc"), None);
/// ```
pub fn find_jwt(text: &str) -> Option<&str> {
    header_at(text).map(|(start, end)| &text[start..end])
}

/// `text` with every JWT-shaped string (header, claims and signature) replaced by `[JWT]`, so
/// a failure message can show where a token was without showing the token.
///
/// ```
/// use tka_testkit::jwt::redact_jwts;
/// assert_eq!(redact_jwts("a eyJhbGc.eyJz.sig b"), "a [JWT] b");
/// ```
pub fn redact_jwts(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((start, end)) = header_at(rest) {
        out.push_str(&rest[..start]);
        out.push_str("[JWT]");
        // The claims and the signature follow the header: skip them too.
        let tail = span(&rest[end..], |c| is_b64url(c) || c == '.');
        rest = &rest[end + tail..];
    }
    out.push_str(rest);
    out
}

/// Where the first JWT header (with its dot) in `text` starts and ends.
fn header_at(text: &str) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(found) = text[from..].find("eyJ") {
        let start = from + found;
        let body = span(&text[start + 3..], is_b64url);
        let end = start + 3 + body;
        if body > 0 && text[end..].starts_with('.') {
            return Some((start, end + 1));
        }
        from = start + 3;
    }
    None
}

/// The length in bytes of the prefix of `text` whose characters satisfy `keep`.
fn span(text: &str, keep: impl Fn(char) -> bool) -> usize {
    text.chars()
        .take_while(|c| keep(*c))
        .map(char::len_utf8)
        .sum()
}

fn is_b64url(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}
