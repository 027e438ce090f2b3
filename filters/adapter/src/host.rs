//! [`Host`] over proxy-wasm host calls.
//!
//! One type per phase: `Proxy<RequestPhase>` implements [`RequestHost`], `Proxy<ResponsePhase>`
//! [`ResponseHost`]. Reading request headers in the response phase aborts the VM in Envoy,
//! so no value that could do it exists there.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::time::UNIX_EPOCH;

use mesh_policy::filter::{GrpcCall, LocalReply};
use mesh_policy::grpc::Code;
use mesh_policy::headers::HeaderPairs;
use mesh_policy::host::{
    Host, Metric, MetricKind, Nanos, RequestCalls, ResponseHost, Shared, SharedError, TrailersHost,
};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, MapType, MetricType, Status};

/// The level Envoy logs the `wasm` component at (`--component-log-level wasm:debug`, or
/// Istio's `sidecar.istio.io/componentLogLevel`), when it says. The SDK's `get_log_level`
/// reads the answer into its `LogLevel` enum, which has no value for spdlog's "off" (6):
/// read it as a number instead.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
fn envoy_log_level() -> Option<LogLevel> {
    unsafe extern "C" {
        fn proxy_get_log_level(return_level: *mut u32) -> u32;
    }
    let mut level = u32::MAX;
    // SAFETY: the host writes one u32 through the pointer it is given.
    let status = unsafe { proxy_get_log_level(&mut level) };
    if status != Status::Ok as u32 {
        return None;
    }
    Some(match level {
        0 => LogLevel::Trace,
        1 => LogLevel::Debug,
        2 => LogLevel::Info,
        3 => LogLevel::Warn,
        4 => LogLevel::Error,
        // 5 is critical, 6 off: our critical lines (panics) still print.
        _ => LogLevel::Critical,
    })
}

#[cfg(not(target_arch = "wasm32"))]
fn envoy_log_level() -> Option<LogLevel> {
    None
}

/// Makes the SDK's level (`log`'s max level) Envoy's for the `wasm` component, so a per-request
/// debug line Envoy would drop is not formatted. Run at configure and on each counter flush
/// (at least once a second), so a level changed on Envoy's admin page (`/logging`) takes effect
/// within a flush period.
pub(crate) fn follow_envoy_log_level() {
    if let Some(level) = envoy_log_level() {
        proxy_wasm::set_log_level(level);
    }
}

/// The root context: configure, tick, shutdown.
#[derive(Debug)]
pub struct RootPhase;
#[derive(Debug)]
pub struct RequestPhase;
#[derive(Debug)]
pub struct ResponsePhase;
/// The response trailers (only for a response that has them).
#[derive(Debug)]
pub struct TrailersPhase;
/// The stream is over (its context is being deleted): properties only.
#[derive(Debug)]
pub struct DonePhase;

/// The proxy, as seen from one phase of one VM: every method is one host call.
pub struct Proxy<'a, Phase> {
    rng: &'a RefCell<fastrand::Rng>,
    phase: PhantomData<Phase>,
}

impl<'a> Proxy<'a, RootPhase> {
    pub(crate) fn root(rng: &'a RefCell<fastrand::Rng>) -> Self {
        Self {
            rng,
            phase: PhantomData,
        }
    }
}

impl<'a> Proxy<'a, RequestPhase> {
    pub(crate) fn request(rng: &'a RefCell<fastrand::Rng>) -> Self {
        Self {
            rng,
            phase: PhantomData,
        }
    }

    /// Answers locally; the caller returns `Action::Pause` so the upstream is not contacted.
    /// A reply in gRPC form passes its gRPC status to Envoy, which sends it trailers-only.
    pub(crate) fn send_reply(&mut self, reply: &LocalReply) {
        let headers = HeaderPairs::serialize(
            reply
                .headers
                .iter()
                .map(|(name, value)| (name.as_bytes(), value.as_bytes())),
        );
        let (grpc_status, body): (i32, &[u8]) = match &reply.grpc {
            Some(status) => (
                i32::try_from(status.code.0).unwrap_or(Code::UNKNOWN.0 as i32),
                status.message.as_bytes(),
            ),
            None => (-1, &reply.body),
        };
        let status = send_local_response(reply.status, headers.as_bytes(), body, grpc_status);
        if status != Status::Ok as u32 {
            log::warn!("send_local_response failed: status {status}");
        }
    }
}

/// `proxy_send_local_response` with its gRPC status, which the SDK (0.2.5) always passes as
/// -1 (none). For a gRPC request Envoy answers `:status 200`, `grpc-status` = `grpc_status`
/// (or one mapped from `status` when -1) and `grpc-message` = the body.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
fn send_local_response(status: u16, headers: &[u8], body: &[u8], grpc_status: i32) -> u32 {
    unsafe extern "C" {
        fn proxy_send_local_response(
            status_code: u32,
            status_code_details_data: *const u8,
            status_code_details_size: usize,
            body_data: *const u8,
            body_size: usize,
            headers_data: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
    }
    // SAFETY: each pointer and length describes a live slice the host only reads.
    unsafe {
        proxy_send_local_response(
            u32::from(status),
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            grpc_status,
        )
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn send_local_response(_status: u16, _headers: &[u8], _body: &[u8], _grpc_status: i32) -> u32 {
    Status::InternalFailure as u32
}

impl Proxy<'_, RequestPhase> {
    /// Starts a unary gRPC call with Envoy's timeout `timeout_ms`; `None` when Envoy refuses
    /// it (logged).
    pub(crate) fn dispatch_grpc(&mut self, call: &GrpcCall, timeout_ms: u32) -> Option<u32> {
        let timeout = std::time::Duration::from_millis(u64::from(timeout_ms));
        match hostcalls::dispatch_grpc_call(
            &call.cluster,
            call.service,
            call.method,
            Vec::new(),
            Some(&call.message),
            timeout,
        ) {
            Ok(token) => Some(token),
            Err(status) => {
                // Per request when the cluster has no endpoint: the filter logs the failure
                // once per burst (`global_error=not_sent`).
                log::debug!(
                    "grpc call to cluster {} not sent: status {}",
                    call.cluster,
                    status as u32
                );
                None
            }
        }
    }
}

impl<'a> Proxy<'a, ResponsePhase> {
    pub(crate) fn response(rng: &'a RefCell<fastrand::Rng>) -> Self {
        Self {
            rng,
            phase: PhantomData,
        }
    }
}

impl<'a> Proxy<'a, TrailersPhase> {
    pub(crate) fn trailers(rng: &'a RefCell<fastrand::Rng>) -> Self {
        Self {
            rng,
            phase: PhantomData,
        }
    }
}

impl TrailersHost for Proxy<'_, TrailersPhase> {
    fn response_trailer(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpResponseTrailers, name)
            .ok()
            .flatten()
    }
}

impl<'a> Proxy<'a, DonePhase> {
    pub(crate) fn done(rng: &'a RefCell<fastrand::Rng>) -> Self {
        Self {
            rng,
            phase: PhantomData,
        }
    }
}

impl<Phase> Proxy<'_, Phase> {
    /// A property as text; empty if absent.
    pub(crate) fn property_text(&self, path: &[&str]) -> String {
        String::from_utf8_lossy(&self.property(path).unwrap_or_default()).into_owned()
    }
}

impl<Phase> Host for Proxy<'_, Phase> {
    fn now(&self) -> Nanos {
        match hostcalls::get_current_time() {
            Ok(time) => time
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            Err(_) => 0,
        }
    }

    fn random_u64(&mut self) -> u64 {
        self.rng.borrow_mut().u64(..)
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    fn shared_get(&self, key: &str) -> Option<Shared> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), Some(cas))) => Some(Shared { value, cas }),
            _ => None,
        }
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(|status| match status {
            Status::CasMismatch => SharedError::CasMismatch,
            _ => SharedError::Failed,
        })
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Metric {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        match hostcalls::define_metric(kind, name) {
            Ok(id) => Metric(Some(id)),
            Err(status) => {
                log::warn!("define_metric {name} failed: status {}", status as u32);
                Metric(None)
            }
        }
    }

    fn increment_metric(&mut self, metric: Metric, delta: i64) {
        if let Some(id) = metric.0 {
            let _ = hostcalls::increment_metric(id, delta);
        }
    }

    fn record_metric(&mut self, metric: Metric, value: u64) {
        if let Some(id) = metric.0 {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

/// The host's serialized header map, as it lies in the buffer the host allocated in the
/// module: the SDK's `get_map_bytes` copies every name and value into allocations of their own
/// (and panics on a status it does not expect; this reads as empty).
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
fn header_pairs(map_type: MapType) -> HeaderPairs {
    // The SDK declares the same import with the same types.
    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        fn proxy_get_header_map_pairs(
            map_type: MapType,
            return_data: *mut *mut u8,
            return_size: *mut usize,
        ) -> Status;
    }
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a size through the two pointers it is given.
    let status = unsafe { proxy_get_header_map_pairs(map_type, &mut data, &mut size) };
    if status != Status::Ok || data.is_null() {
        return HeaderPairs::default();
    }
    // SAFETY: the host allocated `size` bytes at `data` through the module's allocator
    // (`proxy_on_memory_allocate`, a `Vec<u8>` of that capacity) and hands them over, as
    // the SDK's own getters take them back.
    HeaderPairs::from_bytes(unsafe { Vec::from_raw_parts(data, size, size) })
}

#[cfg(not(target_arch = "wasm32"))]
fn header_pairs(_map_type: MapType) -> HeaderPairs {
    HeaderPairs::default()
}

impl RequestCalls for Proxy<'_, RequestPhase> {
    /// Bytes, not text: the SDK's text getters panic on non-UTF-8 values, which clients
    /// control.
    fn get_http_request_headers(&self) -> HeaderPairs {
        header_pairs(MapType::HttpRequestHeaders)
    }

    fn set_http_request_header(&mut self, name: &str, value: &[u8]) {
        let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(value));
    }

    fn add_http_request_header(&mut self, name: &str, value: &[u8]) {
        let _ = hostcalls::add_map_value_bytes(MapType::HttpRequestHeaders, name, value);
    }

    fn remove_http_request_header(&mut self, name: &str) {
        let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
    }

    fn clear_http_route_cache(&mut self) {
        // Envoy re-matches the route after a header change for ABI 0.2.1 modules; newer ABIs
        // need this foreign function. Absent on older Envoys: nothing to do then.
        let _ = hostcalls::call_foreign_function("clear_route_cache", None);
    }
}

impl ResponseHost for Proxy<'_, ResponsePhase> {
    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
            .ok()
            .flatten()
    }

    fn set_response_header(&mut self, name: &str, value: &[u8]) {
        let _ = hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, name, Some(value));
    }

    fn add_response_header(&mut self, name: &str, value: &[u8]) {
        let _ = hostcalls::add_map_value_bytes(MapType::HttpResponseHeaders, name, value);
    }
}
