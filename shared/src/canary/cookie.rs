//! The `cookie` request header (RFC 6265 §4.2) and `set-cookie` for the sticky cookie.
//!
//! Clients write the header: parsing works on bytes, accepts anything and never panics.
//! What does not look like `name=value` is skipped, as browsers and servers do.

use crate::request::{is_token_byte, trim_ows};

/// The value of the first cookie named `name` in a `cookie` header, without surrounding
/// double quotes. `Some(b"")` for a cookie that is present with an empty value.
pub fn find<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|c| *c == b';').find_map(|pair| {
        let (key, value) = split_once(pair, b'=')?;
        (trim_ows(key) == name).then(|| unquote(trim_ows(value)))
    })
}

fn split_once(bytes: &[u8], separator: u8) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|c| *c == separator)?;
    Some((bytes.get(..at)?, bytes.get(at + 1..)?))
}

/// `"value"` → `value` (RFC 6265 allows a quoted cookie-value).
fn unquote(value: &[u8]) -> &[u8] {
    match value {
        [b'"', inner @ .., b'"'] => inner,
        _ => value,
    }
}

/// A cookie name must be an RFC 9110 token.
pub fn is_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(is_token_byte)
}

/// The `set-cookie` value that stores `value` (cookie-safe: the caller mints it as hex) for
/// every path of the host: a cohort holds for the whole site.
pub fn set_cookie(name: &str, value: &str, max_age_s: u64, secure: bool) -> String {
    let mut out = format!("{name}={value}; Max-Age={max_age_s}; Path=/; HttpOnly; SameSite=Lax");
    if secure {
        out.push_str("; Secure");
    }
    out
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
    use super::*;
    use proptest::prelude::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn finds_the_first_cookie_by_exact_name() {
        let header = b"a=1; session=abc; b=; session=second";
        assert_eq!(find(header, b"session"), Some(&b"abc"[..]));
        assert_eq!(find(header, b"a"), Some(&b"1"[..]));
        assert_eq!(find(header, b"b"), Some(&b""[..]));
        assert_eq!(find(header, b"Session"), None, "names are case-sensitive");
        assert_eq!(find(header, b"sess"), None);
        assert_eq!(find(b"", b"a"), None);
    }

    #[test]
    fn tolerates_spacing_quotes_and_junk() {
        assert_eq!(find(b"  a = 1 ;b=2", b"a"), Some(&b"1"[..]));
        assert_eq!(find(b"a=\"quoted\"", b"a"), Some(&b"quoted"[..]));
        assert_eq!(find(b"a=\"", b"a"), Some(&b"\""[..]));
        assert_eq!(find(b"junk; ;;=x; a=1", b"a"), Some(&b"1"[..]));
        assert_eq!(find(b"a=x=y", b"a"), Some(&b"x=y"[..]));
        assert_eq!(
            find(b"\xff\xfe=1; a=\xc3\x28", b"a"),
            Some(&b"\xc3\x28"[..])
        );
        assert_eq!(
            find(b"novalue; a", b"a"),
            None,
            "a name without = is no cookie"
        );
    }

    #[test]
    fn huge_headers_are_read_in_one_pass() {
        let mut header = "x=1; ".repeat(200_000).into_bytes();
        header.extend_from_slice(b"wanted=");
        header.extend(std::iter::repeat_n(b'v', 1 << 20));
        assert_eq!(find(&header, b"wanted").map(<[u8]>::len), Some(1 << 20));
        assert_eq!(find(&vec![b';'; 1 << 20], b"a"), None);
        assert_eq!(
            find(&vec![b'='; 1 << 20], b""),
            Some(&vec![b'='; (1 << 20) - 1][..])
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(is_name("mesh-canary"));
        assert!(!is_name(""));
        assert!(!is_name("a b"));
        assert!(!is_name("a=b"));
        assert!(!is_name("a;b"));
    }

    #[test]
    fn set_cookie_has_the_attributes() {
        assert_eq!(
            set_cookie("c", "00ff", 60, true),
            "c=00ff; Max-Age=60; Path=/; HttpOnly; SameSite=Lax; Secure"
        );
        assert_eq!(
            set_cookie("c", "1", 1, false),
            "c=1; Max-Age=1; Path=/; HttpOnly; SameSite=Lax"
        );
    }

    fn cookie_name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_-]{1,12}"
    }

    fn cookie_value() -> impl Strategy<Value = String> {
        // RFC 6265 cookie-octets, without the double quote.
        "[!#-+\\--:<-\\[\\]-~]{0,20}"
    }

    proptest! {
        #[test]
        fn never_panics_on_any_bytes(
            header in proptest::collection::vec(any::<u8>(), 0..512),
            name in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            if find(&header, &name).is_some() {
                // Only a cookie of that name is found.
                prop_assert!(name.is_empty() || header.windows(name.len()).any(|w| w == name.as_slice()));
            }
        }

        #[test]
        fn finds_what_was_written(
            pairs in proptest::collection::vec((cookie_name(), cookie_value()), 1..8),
            pick in any::<proptest::sample::Index>(),
        ) {
            let header = pairs
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            let (name, _) = pick.get(&pairs);
            let first = pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_bytes());
            prop_assert_eq!(find(header.as_bytes(), name.as_bytes()), first);
        }
    }
}
