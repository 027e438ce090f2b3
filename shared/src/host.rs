//! What a filter may ask of the proxy.
//!
//! The split follows Envoy's phases: [`RequestHost`] can read and change request headers,
//! [`ResponseHost`] response headers. Reading request headers in the response phase aborts
//! the VM in Envoy, so the response phase gets no way to do it: keep what it needs on the
//! filter's per-request state.
//!
//! Header values are bytes: clients control them and they need not be UTF-8.

use crate::headers::HeaderPairs;

/// Nanoseconds since the Unix epoch: the same clock in every VM of every worker, so it
/// can be stored in shared data.
pub type Nanos = u64;

pub const NANOS_PER_MS: u64 = 1_000_000;
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A metric defined through the host; `None` when the host refused to define it (then
/// updates are dropped rather than failing the request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Metric(pub Option<u32>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    /// Each [`Host::record_metric`] is one observation (Envoy keeps the buckets).
    Histogram,
}

/// A shared-data value and the compare-and-swap token it was read with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shared {
    pub value: Vec<u8>,
    pub cas: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedError {
    /// Another VM wrote the key since it was read: read again and retry.
    CasMismatch,
    /// Any other host failure.
    Failed,
}

/// Available in every phase.
pub trait Host {
    /// Wall-clock time.
    fn now(&self) -> Nanos;
    /// Uniformly random bits.
    fn random_u64(&mut self) -> u64;
    /// An Envoy attribute such as `["xds", "route_name"]` or `["source", "address"]`.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// An integer attribute (`response.code`, `response.flags`): proxy-wasm gives it as 8
    /// little-endian bytes; a host that has the integer itself answers without them.
    fn property_u64(&self, path: &[&str]) -> Option<u64> {
        let [value] = crate::store::read_u64s::<1>(&self.property(path)?)?;
        Some(value)
    }

    /// Reads a shared-data key with its CAS token; `None` if it was never written.
    fn shared_get(&self, key: &str) -> Option<Shared>;
    /// Writes a shared-data key; with `cas` the write fails with
    /// [`SharedError::CasMismatch`] if the key changed since that token was read.
    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError>;

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Metric;
    fn increment_metric(&mut self, metric: Metric, delta: i64);
    fn record_metric(&mut self, metric: Metric, value: u64);
}

/// The request-headers phase.
pub trait RequestHost: Host {
    /// The first value of a header (as Envoy returns it), borrowed: reading copies nothing.
    fn request_header(&self, name: &str) -> Option<&[u8]>;
    /// How many times the header is repeated (Envoy's single-value read shows only the
    /// first): for where a second value changes the decision.
    fn request_header_count(&self, name: &str) -> usize;
    /// Every line's value of the header, in the order Envoy forwards them.
    fn request_header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]>;
    /// Whether a body follows the headers (Envoy says so with the headers: no host call).
    fn request_has_body(&self) -> bool;
    /// Replaces every value of the header with this one.
    fn set_request_header(&mut self, name: &str, value: &[u8]);
    fn remove_request_header(&mut self, name: &str);
    /// Makes Envoy choose the route again after a header changed.
    fn clear_route_cache(&mut self);
}

/// The request-headers phase as the host calls it offers, what the adapter implements over
/// proxy-wasm: the header map comes whole, in one call (each call that returns data enters
/// the module twice: the call, then an allocation for the answer). [`crate::vm`] serves the
/// filters' [`RequestHost`] reads from that one copy.
pub trait RequestCalls: Host {
    /// Every request header, in Envoy's order, repeats included (bytes: clients control them),
    /// as the host serializes them.
    fn get_http_request_headers(&self) -> HeaderPairs;
    /// Replaces every value of the header with this one.
    fn set_http_request_header(&mut self, name: &str, value: &[u8]);
    /// Adds a value, keeping any already there. For a header the request does not have it
    /// does what a set does, for a fraction of Envoy's work (a set first walks the map to
    /// remove the name).
    fn add_http_request_header(&mut self, name: &str, value: &[u8]);
    fn remove_http_request_header(&mut self, name: &str);
    /// Makes Envoy choose the route again.
    fn clear_http_route_cache(&mut self);
}

/// The response-headers phase. The response status is the `:status` header.
/// The response trailers' phase (HTTP/2: where a gRPC call's `grpc-status` usually is).
/// Envoy enters a module here only for a response that has trailers.
pub trait TrailersHost: Host {
    fn response_trailer(&self, name: &str) -> Option<Vec<u8>>;
}

pub trait ResponseHost: Host {
    fn response_header(&self, name: &str) -> Option<Vec<u8>>;
    /// Replaces every value of the header with this one.
    fn set_response_header(&mut self, name: &str, value: &[u8]);
    /// Adds a value, keeping those already there (`set-cookie` must not replace the
    /// upstream's cookies).
    fn add_response_header(&mut self, name: &str, value: &[u8]);

    /// The upstream's (or a local reply's) status code, if there is a valid one.
    fn response_status(&self) -> Option<u16> {
        let status = self.response_header(":status")?;
        std::str::from_utf8(&status).ok()?.parse().ok()
    }
}

/// Writes methods of the host traits that only call the same method on `self.$field`: what
/// a decorator host (one that wraps another and changes a few calls) passes through, inside
/// its `impl Host for ...` (or `RequestHost`, `ResponseHost`, `TrailersHost`) block, with
/// the methods it changes written out beside it. The traits must be in scope.
///
/// ```ignore
/// impl Host for Wrapper<'_> {
///     mesh_policy::forward_host!(inner => now, random_u64, property);
///     fn shared_get(&self, key: &str) -> Option<Shared> { ... }
/// }
/// ```
#[macro_export]
macro_rules! forward_host {
    ($field:ident => $($method:ident),+ $(,)?) => {
        $($crate::forward_host!(@ $field $method);)+
    };
    // Host
    (@ $f:ident now) => {
        fn now(&self) -> $crate::host::Nanos {
            self.$f.now()
        }
    };
    (@ $f:ident random_u64) => {
        fn random_u64(&mut self) -> u64 {
            self.$f.random_u64()
        }
    };
    (@ $f:ident property) => {
        fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
            self.$f.property(path)
        }
    };
    (@ $f:ident property_u64) => {
        fn property_u64(&self, path: &[&str]) -> Option<u64> {
            self.$f.property_u64(path)
        }
    };
    (@ $f:ident shared_get) => {
        fn shared_get(&self, key: &str) -> Option<$crate::host::Shared> {
            self.$f.shared_get(key)
        }
    };
    (@ $f:ident shared_set) => {
        fn shared_set(
            &mut self,
            key: &str,
            value: &[u8],
            cas: Option<u32>,
        ) -> Result<(), $crate::host::SharedError> {
            self.$f.shared_set(key, value, cas)
        }
    };
    (@ $f:ident define_metric) => {
        fn define_metric(
            &mut self,
            kind: $crate::host::MetricKind,
            name: &str,
        ) -> $crate::host::Metric {
            self.$f.define_metric(kind, name)
        }
    };
    (@ $f:ident increment_metric) => {
        fn increment_metric(&mut self, metric: $crate::host::Metric, delta: i64) {
            self.$f.increment_metric(metric, delta);
        }
    };
    (@ $f:ident record_metric) => {
        fn record_metric(&mut self, metric: $crate::host::Metric, value: u64) {
            self.$f.record_metric(metric, value);
        }
    };
    // RequestHost
    (@ $f:ident request_header) => {
        fn request_header(&self, name: &str) -> Option<&[u8]> {
            self.$f.request_header(name)
        }
    };
    (@ $f:ident request_header_count) => {
        fn request_header_count(&self, name: &str) -> usize {
            self.$f.request_header_count(name)
        }
    };
    (@ $f:ident request_header_values) => {
        fn request_header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> {
            self.$f.request_header_values(name)
        }
    };
    (@ $f:ident request_has_body) => {
        fn request_has_body(&self) -> bool {
            self.$f.request_has_body()
        }
    };
    (@ $f:ident set_request_header) => {
        fn set_request_header(&mut self, name: &str, value: &[u8]) {
            self.$f.set_request_header(name, value);
        }
    };
    (@ $f:ident remove_request_header) => {
        fn remove_request_header(&mut self, name: &str) {
            self.$f.remove_request_header(name);
        }
    };
    (@ $f:ident clear_route_cache) => {
        fn clear_route_cache(&mut self) {
            self.$f.clear_route_cache();
        }
    };
    // TrailersHost
    (@ $f:ident response_trailer) => {
        fn response_trailer(&self, name: &str) -> Option<Vec<u8>> {
            self.$f.response_trailer(name)
        }
    };
    // ResponseHost
    (@ $f:ident response_header) => {
        fn response_header(&self, name: &str) -> Option<Vec<u8>> {
            self.$f.response_header(name)
        }
    };
    (@ $f:ident set_response_header) => {
        fn set_response_header(&mut self, name: &str, value: &[u8]) {
            self.$f.set_response_header(name, value);
        }
    };
    (@ $f:ident add_response_header) => {
        fn add_response_header(&mut self, name: &str, value: &[u8]) {
            self.$f.add_response_header(name, value);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeHost;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn the_response_status_is_the_status_header_when_it_is_a_number() {
        let status = |value: &str| {
            FakeHost::new()
                .with_response_header(":status", value)
                .response_status()
        };
        assert_eq!(status("503"), Some(503));
        assert_eq!(status("200"), Some(200));
        assert_eq!(status("5xx"), None);
        assert_eq!(status("70000"), None);
        assert_eq!(FakeHost::new().response_status(), None);
    }
}
