//! Checks shared by several targets.

use tka_core::Ttl;
use tka_core::duration;

/// Splits `data` at its first NUL byte: the part before and, if there is one, the part after.
pub(crate) fn split_nul(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    }
}

/// A duration string as a user or a policy writes it: whatever parses prints in a form that
/// parses back to the same whole seconds, and a TTL survives its own printing.
pub(crate) fn check_duration(text: &str) {
    if let Ok(d) = duration::parse(text) {
        let printed = duration::format(d);
        let again = duration::parse(&printed).unwrap_or_else(|e| {
            panic!("{text:?} parsed, but its printing {printed:?} does not: {e}")
        });
        assert_eq!(
            again.as_secs(),
            d.as_secs(),
            "{text:?} printed as {printed:?} reads back as another duration"
        );
    }
    match Ttl::parse(text) {
        Ok(ttl) => {
            assert!(
                ttl.as_secs() >= 1 && ttl <= Ttl::MAX,
                "{text:?} gave TTL {ttl}"
            );
            let printed = ttl.to_string();
            assert_eq!(
                Ttl::parse(&printed).ok(),
                Some(ttl),
                "TTL {text:?} printed as {printed:?} does not read back"
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Every string inside a JSON value, for [`check_duration`] and friends.
pub(crate) fn strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                out.push(k.clone());
                strings(v, out);
            }
        }
        _ => {}
    }
}
