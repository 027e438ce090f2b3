//! An in-memory [`Host`] for tests: headers, properties, a settable clock, seeded
//! randomness, shared data with real compare-and-swap (and injectable conflicts; shared with
//! [`FakeHost::another_vm`]), metrics.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use crate::filter::{Filter, configure};
use crate::headers::HeaderPairs;
use crate::host::{
    Host, Metric, MetricKind, Nanos, RequestCalls, RequestHost, ResponseHost, Shared, SharedError,
    TrailersHost,
};

#[derive(Debug)]
pub struct FakeHost {
    pub now: Nanos,
    pub request_headers: Vec<(String, Vec<u8>)>,
    pub response_headers: Vec<(String, Vec<u8>)>,
    pub response_trailers: Vec<(String, Vec<u8>)>,
    pub properties: HashMap<Vec<String>, Vec<u8>>,
    /// A body follows the request headers (a POST, a gRPC call).
    pub request_has_body: bool,
    /// The host calls made so far, by kind (a `Cell`: some are made through `&self`).
    calls: Cell<HostCalls>,
    rng: fastrand::Rng,
    scripted_random: Vec<u64>,
    /// Envoy's shared data, one for every VM of an Envoy: [`FakeHost::another_vm`] shares it.
    shared: Rc<RefCell<SharedData>>,
    /// The next this-many CAS writes fail as if another VM had written first.
    pub cas_conflicts: usize,
    /// Every shared-data write fails (as Envoy's when it cannot store the value).
    pub refuse_shared_writes: bool,
    metrics: Vec<(String, MetricKind, i64)>,
}

/// Host calls by kind: what a module pays Envoy for, each a crossing out of the VM, and
/// [`HostCalls::allocations`] the crossings back into it (Envoy allocates every answer that
/// carries data in the module's memory, by calling its `malloc`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HostCalls {
    /// Property reads (`xds.route_name`, `response.code`, ...).
    pub property_reads: usize,
    /// Request header maps fetched whole ([`RequestCalls::get_http_request_headers`]).
    pub header_map_reads: usize,
    /// Response headers read by name.
    pub response_header_reads: usize,
    /// Request header sets and removals: in Envoy each also makes the route be chosen again.
    pub request_header_writes: usize,
    /// Of those, the adds (a header the request did not have; Envoy's set costs more).
    pub request_header_adds: usize,
    pub response_header_writes: usize,
    pub route_cache_clears: usize,
    /// Metric increments and records.
    pub metric_updates: usize,
    pub shared_gets: usize,
    /// Shared-data writes, CAS or not, succeeded or not ([`FakeHost::shared_put`], another
    /// VM's write, is not one).
    pub shared_sets: usize,
    pub clock_reads: usize,
    /// Answers that carried data (a property, the header map, a shared-data record): each
    /// enters the VM once more, for its allocation.
    pub allocations: usize,
}

impl HostCalls {
    /// The calls made since `before` (an earlier reading of the same host).
    pub fn since(self, before: HostCalls) -> HostCalls {
        HostCalls {
            property_reads: self.property_reads - before.property_reads,
            header_map_reads: self.header_map_reads - before.header_map_reads,
            response_header_reads: self.response_header_reads - before.response_header_reads,
            request_header_writes: self.request_header_writes - before.request_header_writes,
            request_header_adds: self.request_header_adds - before.request_header_adds,
            response_header_writes: self.response_header_writes - before.response_header_writes,
            route_cache_clears: self.route_cache_clears - before.route_cache_clears,
            metric_updates: self.metric_updates - before.metric_updates,
            shared_gets: self.shared_gets - before.shared_gets,
            shared_sets: self.shared_sets - before.shared_sets,
            clock_reads: self.clock_reads - before.clock_reads,
            allocations: self.allocations - before.allocations,
        }
    }

    /// Every call out of the VM.
    pub fn total(&self) -> usize {
        self.property_reads
            + self.header_map_reads
            + self.response_header_reads
            + self.request_header_writes
            + self.response_header_writes
            + self.route_cache_clears
            + self.metric_updates
            + self.shared_gets
            + self.shared_sets
            + self.clock_reads
    }
}

impl Default for FakeHost {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeHost {
    /// 2026-01-01T00:00:00Z, so tests do not start at the epoch.
    pub const START: Nanos = 1_767_225_600 * crate::host::NANOS_PER_SEC;

    pub fn new() -> Self {
        Self {
            now: Self::START,
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            response_trailers: Vec::new(),
            properties: HashMap::new(),
            request_has_body: false,
            calls: Cell::new(HostCalls::default()),
            rng: fastrand::Rng::with_seed(7),
            scripted_random: Vec::new(),
            shared: Rc::default(),
            cas_conflicts: 0,
            refuse_shared_writes: false,
            metrics: Vec::new(),
        }
    }

    pub fn with_request_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.request_headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// A request whose headers a body follows.
    pub fn with_body(mut self) -> Self {
        self.request_has_body = true;
        self
    }

    /// A gRPC call: `content-type: application/grpc` and a body.
    pub fn grpc_call(self) -> Self {
        self.with_request_header("content-type", "application/grpc")
            .with_body()
    }

    pub fn with_response_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.response_headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    pub fn with_property(mut self, path: &[&str], value: impl AsRef<[u8]>) -> Self {
        self.set_property(path, value);
        self
    }

    pub fn set_property(&mut self, path: &[&str], value: impl AsRef<[u8]>) {
        let path = path.iter().map(|p| (*p).to_owned()).collect();
        self.properties.insert(path, value.as_ref().to_vec());
    }

    /// The host calls made so far.
    pub fn calls(&self) -> HostCalls {
        self.calls.get()
    }

    fn count(&self, call: impl FnOnce(&mut HostCalls)) {
        let mut calls = self.calls.get();
        call(&mut calls);
        self.calls.set(calls);
    }

    /// These values come out of `random_u64` first, in order; then seeded randomness.
    pub fn script_random(&mut self, values: &[u64]) {
        self.scripted_random = values.iter().rev().copied().collect();
    }

    pub fn advance_ms(&mut self, ms: u64) {
        self.now += ms * crate::host::NANOS_PER_MS;
    }

    /// Every value of a request header, as text (lossy), in order.
    pub fn request_values(&self, name: &str) -> Vec<String> {
        values(&self.request_headers, name)
    }

    pub fn response_values(&self, name: &str) -> Vec<String> {
        values(&self.response_headers, name)
    }

    /// A metric's current value by full name.
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.metrics
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, v)| *v)
    }

    /// Every metric defined so far, by name.
    pub fn metrics(&self) -> BTreeMap<String, i64> {
        self.metrics
            .iter()
            .map(|(n, _, v)| (n.clone(), *v))
            .collect()
    }

    /// Another VM of the same Envoy (another worker): its own headers, properties,
    /// randomness and metrics, the same clock reading, and this host's shared data.
    pub fn another_vm(&self) -> FakeHost {
        FakeHost {
            now: self.now,
            shared: Rc::clone(&self.shared),
            ..FakeHost::new()
        }
    }

    /// Writes shared data as another VM would, bumping the CAS token.
    pub fn shared_put(&mut self, key: &str, value: &[u8]) {
        self.shared.borrow_mut().put(key, value);
    }

    pub fn shared_keys(&self) -> usize {
        self.shared.borrow().records.len()
    }
}

#[derive(Debug)]
struct SharedData {
    records: HashMap<String, Shared>,
    next_cas: u32,
}

impl Default for SharedData {
    fn default() -> Self {
        Self {
            records: HashMap::new(),
            next_cas: 1,
        }
    }
}

impl SharedData {
    fn put(&mut self, key: &str, value: &[u8]) {
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        self.records.insert(
            key.to_owned(),
            Shared {
                value: value.to_vec(),
                cas,
            },
        );
    }
}

fn values(headers: &[(String, Vec<u8>)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn first<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a Vec<u8>> {
    // Envoy returns the first value of a repeated header.
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

fn replace(headers: &mut Vec<(String, Vec<u8>)>, name: &str, value: &[u8]) {
    headers.retain(|(n, _)| n != name);
    headers.push((name.to_owned(), value.to_vec()));
}

impl Host for FakeHost {
    fn now(&self) -> Nanos {
        self.count(|c| c.clock_reads += 1);
        self.now
    }

    fn random_u64(&mut self) -> u64 {
        self.scripted_random
            .pop()
            .unwrap_or_else(|| self.rng.u64(..))
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        let value = self
            .properties
            .iter()
            .find(|(p, _)| p.iter().map(String::as_str).eq(path.iter().copied()))
            .map(|(_, v)| v.clone());
        self.count(|c| {
            c.property_reads += 1;
            c.allocations += usize::from(value.is_some());
        });
        value
    }

    fn shared_get(&self, key: &str) -> Option<Shared> {
        let record = self.shared.borrow().records.get(key).cloned();
        self.count(|c| {
            c.shared_gets += 1;
            c.allocations += usize::from(record.is_some());
        });
        record
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        self.count(|c| c.shared_sets += 1);
        if self.refuse_shared_writes {
            return Err(SharedError::Failed);
        }
        if cas.is_some() && self.cas_conflicts > 0 {
            self.cas_conflicts -= 1;
            // Another VM wrote the same key in between (not a read of this VM's).
            let current = self.shared.borrow().records.get(key).cloned();
            if let Some(entry) = current {
                self.shared_put(key, &entry.value);
            }
            return Err(SharedError::CasMismatch);
        }
        // Envoy checks the token only when the key exists.
        let current = self.shared.borrow().records.get(key).cloned();
        if let (Some(cas), Some(current)) = (cas, current)
            && current.cas != cas
        {
            return Err(SharedError::CasMismatch);
        }
        self.shared_put(key, value);
        Ok(())
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Metric {
        // Like Envoy: defining a name again returns the same metric.
        if let Some(id) = self.metrics.iter().position(|(n, _, _)| n == name) {
            return Metric(u32::try_from(id).ok());
        }
        self.metrics.push((name.to_owned(), kind, 0));
        Metric(u32::try_from(self.metrics.len() - 1).ok())
    }

    fn increment_metric(&mut self, metric: Metric, delta: i64) {
        self.count(|c| c.metric_updates += 1);
        if let Some(entry) = metric.0.and_then(|id| self.metrics.get_mut(id as usize)) {
            entry.2 += delta;
        }
    }

    fn record_metric(&mut self, metric: Metric, value: u64) {
        self.count(|c| c.metric_updates += 1);
        if let Some(entry) = metric.0.and_then(|id| self.metrics.get_mut(id as usize)) {
            entry.2 = i64::try_from(value).unwrap_or(i64::MAX);
        }
    }
}

impl RequestHost for FakeHost {
    fn request_header(&self, name: &str) -> Option<&[u8]> {
        first(&self.request_headers, name).map(Vec::as_slice)
    }

    fn request_header_count(&self, name: &str) -> usize {
        self.request_headers
            .iter()
            .filter(|(n, _)| n == name)
            .count()
    }

    fn request_header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> {
        self.request_headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    fn request_has_body(&self) -> bool {
        self.request_has_body
    }

    fn set_request_header(&mut self, name: &str, value: &[u8]) {
        self.set_http_request_header(name, value);
    }

    fn remove_request_header(&mut self, name: &str) {
        self.remove_http_request_header(name);
    }

    fn clear_route_cache(&mut self) {
        self.clear_http_route_cache();
    }
}

/// What [`crate::vm`] asks of the proxy: reads of the map come at a header-map fetch each.
impl RequestCalls for FakeHost {
    fn get_http_request_headers(&self) -> HeaderPairs {
        self.count(|c| {
            c.header_map_reads += 1;
            c.allocations += usize::from(!self.request_headers.is_empty());
        });
        HeaderPairs::serialize(
            self.request_headers
                .iter()
                .map(|(name, value)| (name.as_bytes(), value.as_slice())),
        )
    }

    fn set_http_request_header(&mut self, name: &str, value: &[u8]) {
        self.count(|c| c.request_header_writes += 1);
        replace(&mut self.request_headers, name, value);
    }

    fn add_http_request_header(&mut self, name: &str, value: &[u8]) {
        self.count(|c| {
            c.request_header_writes += 1;
            c.request_header_adds += 1;
        });
        self.request_headers.push((name.to_owned(), value.to_vec()));
    }

    fn remove_http_request_header(&mut self, name: &str) {
        self.count(|c| c.request_header_writes += 1);
        self.request_headers.retain(|(n, _)| n != name);
    }

    fn clear_http_route_cache(&mut self) {
        self.count(|c| c.route_cache_clears += 1);
    }
}

impl TrailersHost for FakeHost {
    fn response_trailer(&self, name: &str) -> Option<Vec<u8>> {
        let value = first(&self.response_trailers, name).cloned();
        self.count(|c| c.response_header_reads += 1);
        value
    }
}

impl ResponseHost for FakeHost {
    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        let value = first(&self.response_headers, name).cloned();
        self.count(|c| {
            c.response_header_reads += 1;
            c.allocations += usize::from(value.is_some());
        });
        value
    }

    fn set_response_header(&mut self, name: &str, value: &[u8]) {
        self.count(|c| c.response_header_writes += 1);
        replace(&mut self.response_headers, name, value);
    }

    fn add_response_header(&mut self, name: &str, value: &[u8]) {
        self.count(|c| c.response_header_writes += 1);
        self.response_headers
            .push((name.to_owned(), value.to_vec()));
    }
}

/// A [`FakeHost`] whose next shared-data write waits until `before` has run on it: another
/// VM's write (`shared_put`, or a whole update through [`FakeHost::another_vm`]) lands
/// between this VM's read and its write.
pub struct WriteRace<'a> {
    pub host: &'a mut FakeHost,
    before: Option<OtherWrite<'a>>,
}

/// What another VM does between this VM's read and its write.
type OtherWrite<'a> = Box<dyn FnOnce(&mut FakeHost) + 'a>;

impl<'a> WriteRace<'a> {
    pub fn new(host: &'a mut FakeHost, before: impl FnOnce(&mut FakeHost) + 'a) -> Self {
        Self {
            host,
            before: Some(Box::new(before)),
        }
    }

    /// Whether the other VM's write has happened.
    pub fn raced(&self) -> bool {
        self.before.is_none()
    }
}

impl Host for WriteRace<'_> {
    crate::forward_host!(host => now, random_u64, property, shared_get);
    crate::forward_host!(host => define_metric, increment_metric, record_metric);

    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        if let Some(before) = self.before.take() {
            before(self.host);
        }
        self.host.shared_set(key, value, cas)
    }
}

impl RequestHost for WriteRace<'_> {
    crate::forward_host!(host => request_header, request_header_count, request_header_values);
    crate::forward_host!(host => request_has_body, set_request_header, remove_request_header);
    crate::forward_host!(host => clear_route_cache);
}

/// `filter`'s route `route` as its module would bind it from the plugin JSON `json`: the
/// filter crates' unit tests start here. An error when the JSON is refused or gives `route`
/// no policy.
pub fn bind_route<F: Filter>(
    filter: &F,
    json: &str,
    route: &str,
    host: &mut FakeHost,
) -> Result<F::Route, String> {
    let routes = configure(filter, json.as_bytes()).map_err(|err| err.to_string())?;
    let policy = routes
        .policy_for(route)
        .ok_or_else(|| format!("no policy for route {route}"))?;
    Ok(filter.bind(Rc::clone(policy), route, host))
}

#[cfg(test)]
mod tests {
    use super::*;
    // On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn cas_detects_a_write_in_between() {
        let mut host = FakeHost::new();
        host.shared_set("k", b"1", None).unwrap();
        let read = host.shared_get("k").unwrap();
        host.shared_put("k", b"2");
        assert_eq!(
            host.shared_set("k", b"3", Some(read.cas)),
            Err(SharedError::CasMismatch)
        );
        let read = host.shared_get("k").unwrap();
        assert_eq!(read.value, b"2");
        host.shared_set("k", b"3", Some(read.cas)).unwrap();
        assert_eq!(host.shared_get("k").unwrap().value, b"3");
    }

    #[test]
    fn another_vm_shares_shared_data_and_its_tokens() {
        let mut host = FakeHost::new();
        let mut other = host.another_vm();
        host.shared_set("k", b"1", None).unwrap();
        let read = other.shared_get("k").unwrap();
        host.shared_put("k", b"2");
        assert_eq!(
            other.shared_set("k", b"3", Some(read.cas)),
            Err(SharedError::CasMismatch)
        );
        assert_eq!(other.shared_keys(), 1);
        assert_eq!(other.shared_get("k"), host.shared_get("k"));
    }

    #[test]
    fn injected_conflicts_fail_cas_writes_then_clear() {
        let mut host = FakeHost::new();
        host.shared_set("k", b"1", None).unwrap();
        host.cas_conflicts = 1;
        let read = host.shared_get("k").unwrap();
        assert_eq!(
            host.shared_set("k", b"2", Some(read.cas)),
            Err(SharedError::CasMismatch)
        );
        let read = host.shared_get("k").unwrap();
        assert!(host.shared_set("k", b"2", Some(read.cas)).is_ok());
    }

    #[test]
    fn metrics_defined_twice_are_one_metric() {
        let mut host = FakeHost::new();
        let a = host.define_metric(MetricKind::Counter, "c");
        let b = host.define_metric(MetricKind::Counter, "c");
        host.increment_metric(a, 2);
        host.increment_metric(b, 3);
        assert_eq!(host.metric("c"), Some(5));
    }

    #[test]
    fn added_response_headers_keep_the_values_there() {
        let mut host = FakeHost::new().with_response_header("set-cookie", "a=1");
        host.add_response_header("set-cookie", b"b=2");
        assert_eq!(host.response_values("set-cookie"), ["a=1", "b=2"]);
    }

    #[test]
    fn repeated_request_header_reads_first_value_like_envoy() {
        let mut host = FakeHost::new()
            .with_request_header("x-a", "1")
            .with_request_header("x-a", "2");
        assert_eq!(host.request_header("x-a").unwrap(), b"1");
        host.set_request_header("x-a", b"3");
        assert_eq!(host.request_values("x-a"), ["3"]);
    }
}
