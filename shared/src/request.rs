//! Facts about a request that several filters key on.

/// The client's IP from Envoy's `source.address` (`1.2.3.4:5678`, `[::1]:5678`), without the
/// port, so one client is one key whatever connection it uses. This is the connection's
/// peer: never a header the client wrote.
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

#[cfg(test)]
mod tests {
    use super::*;
    // On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn strips_the_port() {
        assert_eq!(client_ip(b"10.0.0.7:51234"), b"10.0.0.7");
        assert_eq!(client_ip(b"[2001:db8::1]:443"), b"2001:db8::1");
        assert_eq!(client_ip(b"2001:db8::1"), b"2001:db8::1");
        assert_eq!(client_ip(b"10.0.0.7"), b"10.0.0.7");
        assert_eq!(client_ip(b"[broken"), b"[broken");
        assert_eq!(client_ip(b""), b"");
    }
}
