//! Facts about a request that several filters key on.
//!
//! Envoy's `source.address` is not always the connection's peer: with the connection
//! manager's `use_remote_address: false` (Envoy's default, and an Istio sidecar's inbound
//! listener) Envoy replaces it with the last `x-forwarded-for` entry, which the client may
//! have written. Envoy gives an address it took from a header port `0` (measured with Envoy
//! 1.40: `192.0.2.7:0`); a connection's peer always has its real port. Wasm has no attribute
//! for the peer itself in that case (`source.*` is all there is).

/// The client's IP from Envoy's `source.address` (`1.2.3.4:5678`, `[::1]:5678`), without the
/// port, so one client is one key whatever connection it uses. This is whatever Envoy
/// reports: the connection's peer, or (see the module docs) an address from
/// `x-forwarded-for`. [`client_address`] tells the two apart.
pub fn client_ip(source_address: &[u8]) -> &[u8] {
    if let Some(rest) = source_address.strip_prefix(b"[") {
        // [v6]:port
        return match rest.iter().position(|c| *c == b']') {
            Some(end) => rest.get(..end).unwrap_or(rest),
            None => source_address,
        };
    }
    let colons = source_address.iter().filter(|c| **c == b':').count();
    match (colons, source_address.iter().rposition(|c| *c == b':')) {
        // v4:port
        (1, Some(at)) => source_address.get(..at).unwrap_or(source_address),
        // a bare v6 address, or no port at all
        _ => source_address,
    }
}

/// The IP of the downstream connection's peer, when `source.address` is that peer: `None`
/// when Envoy took the address from a header (port `0`: `1.2.3.4:0`, `[::1]:0`).
pub fn peer_ip(source_address: &[u8]) -> Option<&[u8]> {
    let ip = client_ip(source_address);
    // What follows the IP: `:port` (v4), `]:port` (v6), or nothing.
    let bracket = usize::from(source_address.first() == Some(&b'['));
    let port = source_address.get(ip.len() + bracket..).unwrap_or_default();
    (!matches!(port, b":0" | b"]:0")).then_some(ip)
}

/// Who a request comes from, for keys that must not be forgeable.
///
/// - `trusted_hops == 0`: the connection's peer ([`peer_ip`]); `x-forwarded-for` is never
///   read. `None` when Envoy reports an address it took from `x-forwarded-for` (the peer is
///   then unknown to a filter): callers put all such requests in one shared bucket, so a
///   forged header buys no fresh key.
/// - `trusted_hops == n`: the `n`-th address from the right of `forwarded_for` (entries
///   split at `,`, spaces trimmed), i.e. the address the first of the `n` trusted proxies in
///   front of this filter saw connect; the entries left of it are the client's to write and
///   are never read. Fewer entries than `n` (or an empty one there): the peer, as above.
pub fn client_address<'a>(
    source_address: &'a [u8],
    forwarded_for: Option<&'a [u8]>,
    trusted_hops: u32,
) -> Option<&'a [u8]> {
    let hop = usize::try_from(trusted_hops).unwrap_or(usize::MAX);
    let trusted = match (hop.checked_sub(1), forwarded_for) {
        (Some(index), Some(header)) => header.rsplit(|c| *c == b',').map(trim_ows).nth(index),
        _ => None,
    };
    match trusted {
        Some(entry) if !entry.is_empty() => Some(entry),
        _ => peer_ip(source_address),
    }
}

/// Without surrounding spaces and tabs: HTTP's optional white space (RFC 9110 §5.6.3) around
/// a field value or a list member.
pub(crate) fn trim_ows(bytes: &[u8]) -> &[u8] {
    let is_space = |c: &u8| *c == b' ' || *c == b'\t';
    let start = bytes
        .iter()
        .position(|c| !is_space(c))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|c| !is_space(c))
        .map_or(start, |at| at + 1);
    bytes.get(start..end).unwrap_or_default()
}

/// A byte HTTP allows in a token (RFC 9110 §5.6.2 `tchar`): a header name, a cookie name.
pub(crate) fn is_token_byte(c: u8) -> bool {
    // Bytes, not `str::contains`: its char search links core's str-slicing panic.
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;
    // On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn token_bytes_are_rfc_9110_tchar() {
        let tokens: Vec<u8> = (0..=u8::MAX).filter(|c| is_token_byte(*c)).collect();
        let mut expected: Vec<u8> = b"!#$%&'*+-.^_`|~0123456789".to_vec();
        expected.extend(b'A'..=b'Z');
        expected.extend(b'a'..=b'z');
        expected.sort_unstable();
        assert_eq!(tokens, expected);
    }

    #[test]
    fn strips_the_port() {
        assert_eq!(client_ip(b"10.0.0.7:51234"), b"10.0.0.7");
        assert_eq!(client_ip(b"[2001:db8::1]:443"), b"2001:db8::1");
        assert_eq!(client_ip(b"2001:db8::1"), b"2001:db8::1");
        assert_eq!(client_ip(b"10.0.0.7"), b"10.0.0.7");
        assert_eq!(client_ip(b"[broken"), b"[broken");
        assert_eq!(client_ip(b""), b"");
    }

    #[test]
    fn an_address_envoy_took_from_a_header_is_no_peer() {
        assert_eq!(peer_ip(b"10.0.0.7:51234"), Some(&b"10.0.0.7"[..]));
        assert_eq!(peer_ip(b"[::1]:443"), Some(&b"::1"[..]));
        // Envoy 1.40, use_remote_address false, `x-forwarded-for: 192.0.2.7`.
        assert_eq!(peer_ip(b"192.0.2.7:0"), None);
        assert_eq!(peer_ip(b"[2001:db8::7]:0"), None);
        // No port at all (a pipe): not a header's address.
        assert_eq!(peer_ip(b"/tmp/envoy.sock"), Some(&b"/tmp/envoy.sock"[..]));
    }

    #[test]
    fn without_trusted_hops_forwarded_for_is_never_read() {
        let forged = Some(&b"203.0.113.1, 203.0.113.2"[..]);
        assert_eq!(
            client_address(b"10.0.0.7:5000", forged, 0),
            Some(&b"10.0.0.7"[..])
        );
        assert_eq!(client_address(b"203.0.113.2:0", forged, 0), None);
    }

    #[test]
    fn trusted_hops_pick_the_address_the_first_trusted_proxy_saw() {
        let header = Some(&b"6.6.6.6, 198.51.100.4 ,10.0.0.2"[..]);
        assert_eq!(
            client_address(b"10.0.0.3:0", header, 1),
            Some(&b"10.0.0.2"[..])
        );
        assert_eq!(
            client_address(b"10.0.0.3:0", header, 2),
            Some(&b"198.51.100.4"[..])
        );
        // The client wrote 6.6.6.6: only read when three proxies are trusted.
        assert_eq!(
            client_address(b"10.0.0.3:0", header, 3),
            Some(&b"6.6.6.6"[..])
        );
        // Fewer entries than trusted hops: the peer, or no one.
        assert_eq!(
            client_address(b"10.0.0.3:4000", header, 4),
            Some(&b"10.0.0.3"[..])
        );
        assert_eq!(client_address(b"10.0.0.3:0", header, 4), None);
        assert_eq!(
            client_address(b"10.0.0.3:4000", None, 1),
            Some(&b"10.0.0.3"[..])
        );
        assert_eq!(
            client_address(b"10.0.0.3:4000", Some(b"a,,b"), 2),
            Some(&b"10.0.0.3"[..])
        );
        assert_eq!(
            client_address(b"10.0.0.3:4000", header, u32::MAX),
            Some(&b"10.0.0.3"[..])
        );
    }
}
