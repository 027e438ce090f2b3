//! The request path and its query string, from the `:path` pseudo-header.
//!
//! Clients write `:path`: everything works on bytes, accepts anything and never panics.
//! Hand-written rather than `percent-encoding` (servo/rust-url) plus `+` handling: that took
//! the canary module over its 150 KB budget.
//! Query parameters are compared decoded (`+` is a space, `%41` is `A`); a `%` not followed
//! by two hex digits stays as written.

use std::borrow::Cow;

use crate::hex;

/// The path without its query string or fragment.
pub fn path_only(path: &[u8]) -> &[u8] {
    match path.iter().position(|c| *c == b'?' || *c == b'#') {
        Some(end) => path.get(..end).unwrap_or(path),
        None => path,
    }
}

/// The query string: after the first `?`, up to a `#`; empty when there is none.
pub fn query_of(path: &[u8]) -> &[u8] {
    let Some(start) = path.iter().position(|c| *c == b'?') else {
        return &[];
    };
    let query = path.get(start + 1..).unwrap_or_default();
    match query.iter().position(|c| *c == b'#') {
        Some(end) => query.get(..end).unwrap_or(query),
        None => query,
    }
}

/// The decoded value of the first parameter named `name` (compared decoded). A parameter
/// written without `=` is present with an empty value.
pub fn param<'a>(query: &'a [u8], name: &[u8]) -> Option<Cow<'a, [u8]>> {
    query
        .split(|c| *c == b'&')
        .filter(|pair| !pair.is_empty())
        .find_map(|pair| {
            let (key, value) = match pair.iter().position(|c| *c == b'=') {
                Some(at) => (pair.get(..at)?, pair.get(at + 1..)?),
                None => (pair, &[][..]),
            };
            (decode(key).as_ref() == name).then(|| decode(value))
        })
}

/// Percent-decoding as browsers encode forms: `+` is a space, `%XX` a byte.
pub fn decode(text: &[u8]) -> Cow<'_, [u8]> {
    if !text.iter().any(|c| *c == b'%' || *c == b'+') {
        return Cow::Borrowed(text);
    }
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some((&c, tail)) = rest.split_first() {
        rest = tail;
        match c {
            b'+' => out.push(b' '),
            b'%' => match (
                tail.first().and_then(|c| hex::digit_value(*c)),
                tail.get(1).and_then(|c| hex::digit_value(*c)),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    rest = tail.get(2..).unwrap_or_default();
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
    use super::*;
    use proptest::prelude::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn get(path: &str, name: &str) -> Option<String> {
        param(query_of(path.as_bytes()), name.as_bytes())
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    #[test]
    fn splits_path_query_and_fragment() {
        assert_eq!(path_only(b"/a/b?x=1#f"), b"/a/b");
        assert_eq!(path_only(b"/a#f?x"), b"/a");
        assert_eq!(path_only(b""), b"");
        assert_eq!(query_of(b"/a?x=1&y=2#frag"), b"x=1&y=2");
        assert_eq!(query_of(b"/a?"), b"");
        assert_eq!(query_of(b"/a"), b"");
        assert_eq!(query_of(b"/a?b?c"), b"b?c");
    }

    #[test]
    fn finds_the_first_parameter_decoded() {
        assert_eq!(get("/?canary=1&canary=2", "canary").as_deref(), Some("1"));
        assert_eq!(get("/?a=1&canary", "canary").as_deref(), Some(""));
        assert_eq!(get("/?a=1&canary=", "canary").as_deref(), Some(""));
        assert_eq!(get("/?q=a+b%20c", "q").as_deref(), Some("a b c"));
        assert_eq!(get("/?my%20key=v", "my key").as_deref(), Some("v"));
        assert_eq!(get("/?x=%zz%4", "x").as_deref(), Some("%zz%4"));
        assert_eq!(get("/?x=%41%42", "x").as_deref(), Some("AB"));
        assert_eq!(
            get("/?canary=1", "Canary"),
            None,
            "names are case-sensitive"
        );
        assert_eq!(get("/?canaryx=1", "canary"), None);
        assert_eq!(get("/canary=1", "canary"), None, "not in the query");
        assert_eq!(get("/?&&=1&canary=on", "canary").as_deref(), Some("on"));
    }

    #[test]
    fn huge_paths_are_read_in_one_pass() {
        let mut path = b"/x?".to_vec();
        path.extend("a=%41&".repeat(200_000).bytes());
        path.extend(b"k=");
        path.extend(std::iter::repeat_n(b'+', 1 << 20));
        let value = param(query_of(&path), b"k").unwrap();
        assert!(value.len() == 1 << 20 && value.iter().all(|c| *c == b' '));
        assert_eq!(param(&vec![b'&'; 1 << 20], b"k"), None);
        assert_eq!(decode(&vec![b'%'; 1 << 20]).len(), 1 << 20);
    }

    #[test]
    fn decode_keeps_invalid_escapes_and_any_bytes() {
        assert_eq!(decode(b"%"), &b"%"[..]);
        assert_eq!(decode(b"%f"), &b"%f"[..]);
        assert_eq!(decode(b"%ff%FE"), &b"\xff\xfe"[..]);
        assert_eq!(decode(b"\xc3\x28"), &b"\xc3\x28"[..]);
        assert!(matches!(decode(b"plain"), Cow::Borrowed(_)));
    }

    proptest! {
        #[test]
        fn never_panics_on_any_bytes(
            path in proptest::collection::vec(any::<u8>(), 0..512),
            name in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let query = query_of(&path);
            prop_assert!(query.len() < path.len() || query.is_empty());
            prop_assert!(path.starts_with(path_only(&path)));
            let _ = param(query, &name);
            prop_assert!(decode(&path).len() <= path.len());
        }

        #[test]
        fn percent_encoding_round_trips(value in proptest::collection::vec(any::<u8>(), 0..64)) {
            let encoded: String = value.iter().map(|b| format!("%{b:02X}")).collect();
            let decoded = decode(encoded.as_bytes());
            prop_assert_eq!(decoded.as_ref(), value.as_slice());
            let path = format!("/x?a=1&k={encoded}&k=2");
            let found = param(query_of(path.as_bytes()), b"k");
            prop_assert_eq!(found.as_deref(), Some(value.as_slice()));
        }
    }
}
