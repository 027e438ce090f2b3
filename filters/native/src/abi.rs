//! Envoy 1.40's dynamic-module C ABI: the few callbacks this module calls and the event hooks
//! it exports, declared by hand from `source/extensions/dynamic_modules/abi/abi.h` (see
//! `ABI.md`). The only `unsafe` code of the crate (with `abi/fake.rs`, the tests' Envoy): every
//! other module calls the safe wrappers below, and the hooks hand Envoy's pointers on as
//! opaque handles.
//!
//! Calling convention and layout are the header's: a buffer is `{ptr, len}` passed by value,
//! enums are C `int`s, the module's filter is a `Box` whose pointer Envoy keeps until
//! `envoy_dynamic_module_on_http_filter_destroy`.
#![allow(unsafe_code)]

use mesh_policy::headers::HeaderPairs;
use std::ffi::{c_char, c_void};
use std::ptr;

#[cfg(test)]
pub mod fake;

/// The ABI version this module is built against: Envoy 1.40.0's
/// `ENVOY_DYNAMIC_MODULES_ABI_VERSION` (the string the Rust SDK compiled into that very
/// binary returns; see `ABI.md`).
pub const ABI_VERSION: &str = "v0.2.0";
const ABI_VERSION_C: &[u8] = b"v0.2.0\0";

/// `envoy_dynamic_module_type_envoy_buffer` (and `..._module_buffer`: the same layout).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Buffer {
    ptr: *const c_char,
    len: usize,
}

impl Buffer {
    const NULL: Self = Self {
        ptr: ptr::null(),
        len: 0,
    };

    fn of(bytes: &[u8]) -> Self {
        Self {
            ptr: bytes.as_ptr().cast(),
            len: bytes.len(),
        }
    }

    /// The bytes Envoy lent for the current hook.
    ///
    /// # Safety
    /// `ptr` must point to `len` readable bytes for `'a` (Envoy's buffers are valid until the
    /// hook returns), or be null.
    unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: the caller's contract: Envoy lends `len` bytes at `ptr` for this hook.
        unsafe { std::slice::from_raw_parts(self.ptr.cast(), self.len) }
    }
}

/// `envoy_dynamic_module_type_{envoy,module}_http_header`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HeaderPair {
    key_ptr: *const c_char,
    key_len: usize,
    value_ptr: *const c_char,
    value_len: usize,
}

impl HeaderPair {
    const EMPTY: Self = Self {
        key_ptr: ptr::null(),
        key_len: 0,
        value_ptr: ptr::null(),
        value_len: 0,
    };
}

/// How many header pairs [`FilterPtr::headers`] takes on the stack (a request's dozen and
/// then some; a larger map goes to the heap).
pub(crate) const STACK_PAIRS: usize = 32;

/// `envoy_dynamic_module_type_http_header_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub enum HeaderType {
    RequestHeader = 0,
    #[allow(dead_code)] // the ABI's value; the module reads no request trailers
    RequestTrailer = 1,
    ResponseHeader = 2,
    ResponseTrailer = 3,
}

/// `envoy_dynamic_module_type_log_level`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    /// Caught panics only (`lib.rs`).
    Critical = 5,
}

/// `envoy_dynamic_module_type_attribute_id`: the few this module reads, by their place in the
/// header's enum (the numbers are the ABI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub enum Attribute {
    ResponseCode = 15,
    ResponseCodeDetails = 16,
    ResponseFlags = 17,
    SourceAddress = 24,
    XdsClusterName = 57,
    XdsRouteName = 61,
    XdsVirtualHostName = 63,
}

/// `envoy_dynamic_module_type_metrics_result`: 0 is success.
type MetricsResult = i32;

/// `envoy_dynamic_module_type_http_callout_init_result`: 0 is success (then 1 missing required
/// headers, 2 cluster not found, 3 duplicate id, 4 cannot create request).
type CalloutInit = i32;

/// `DynamicModuleHttpFilterConfig*`: valid from `..._config_new` to `..._config_destroy`;
/// Envoy calls define callbacks on it only in `..._config_new` (later they are "frozen").
#[derive(Clone, Copy, Debug)]
pub struct ConfigPtr(*mut c_void);

/// `DynamicModuleHttpFilter*`: valid for the current hook of that stream.
#[derive(Clone, Copy, Debug)]
pub struct FilterPtr(*mut c_void);

unsafe extern "C" {
    fn envoy_dynamic_module_callback_log(level: LogLevel, message: Buffer);
    fn envoy_dynamic_module_callback_log_enabled(level: LogLevel) -> bool;

    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: *mut c_void,
        name: Buffer,
        label_names: *const Buffer,
        label_names_len: usize,
        id: *mut usize,
    ) -> MetricsResult;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: *mut c_void,
        name: Buffer,
        label_names: *const Buffer,
        label_names_len: usize,
        id: *mut usize,
    ) -> MetricsResult;
    fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        config: *mut c_void,
        name: Buffer,
        label_names: *const Buffer,
        label_names_len: usize,
        id: *mut usize,
    ) -> MetricsResult;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: *mut c_void,
        id: usize,
        label_values: *const Buffer,
        label_values_len: usize,
        value: u64,
    ) -> MetricsResult;
    fn envoy_dynamic_module_callback_http_filter_increment_gauge(
        filter: *mut c_void,
        id: usize,
        label_values: *const Buffer,
        label_values_len: usize,
        value: u64,
    ) -> MetricsResult;
    fn envoy_dynamic_module_callback_http_filter_set_gauge(
        filter: *mut c_void,
        id: usize,
        label_values: *const Buffer,
        label_values_len: usize,
        value: u64,
    ) -> MetricsResult;
    fn envoy_dynamic_module_callback_http_filter_record_histogram_value(
        filter: *mut c_void,
        id: usize,
        label_values: *const Buffer,
        label_values_len: usize,
        value: u64,
    ) -> MetricsResult;

    fn envoy_dynamic_module_callback_http_get_header(
        filter: *mut c_void,
        header_type: HeaderType,
        key: Buffer,
        result: *mut Buffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: *mut c_void,
        header_type: HeaderType,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: *mut c_void,
        header_type: HeaderType,
        result: *mut HeaderPair,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: *mut c_void,
        header_type: HeaderType,
        key: Buffer,
        value: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        header_type: HeaderType,
        key: Buffer,
        value: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status_code: u32,
        headers: *const HeaderPair,
        headers_len: usize,
        body: Buffer,
        details: Buffer,
    );
    fn envoy_dynamic_module_callback_http_clear_route_cache(filter: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: *mut c_void,
        attribute: Attribute,
        result: *mut Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
        filter: *mut c_void,
        attribute: Attribute,
        result: *mut u64,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_start_http_stream(
        filter: *mut c_void,
        stream_id: *mut u64,
        cluster: Buffer,
        headers: *const HeaderPair,
        headers_len: usize,
        body: Buffer,
        end_stream: bool,
        timeout_ms: u64,
    ) -> CalloutInit;
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: *mut c_void);
}

/// Header pairs as the ABI takes them, pointing into `headers` (which must outlive them).
fn header_pairs(headers: &[(&str, &[u8])]) -> Vec<HeaderPair> {
    headers
        .iter()
        .map(|(name, value)| HeaderPair {
            key_ptr: name.as_ptr().cast(),
            key_len: name.len(),
            value_ptr: value.as_ptr().cast(),
            value_len: value.len(),
        })
        .collect()
}

/// Header pairs Envoy lent for the current hook, as byte slices (an iterator that can be
/// walked again: a map is serialized in one buffer of the size it measures first).
#[derive(Clone)]
pub struct LentHeaders<'a> {
    pairs: std::slice::Iter<'a, HeaderPair>,
}

impl<'a> Iterator for LentHeaders<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let pair = self.pairs.next()?;
        let key = Buffer {
            ptr: pair.key_ptr,
            len: pair.key_len,
        };
        let value = Buffer {
            ptr: pair.value_ptr,
            len: pair.value_len,
        };
        // SAFETY: each pair's buffers are Envoy's, lent for the hook (`lent_headers`'s
        // contract).
        Some(unsafe { (key.as_slice(), value.as_slice()) })
    }
}

/// # Safety
/// `pairs` must point to `len` pairs whose buffers are readable for `'a`, or be null.
unsafe fn lent_headers<'a>(pairs: *const HeaderPair, len: usize) -> LentHeaders<'a> {
    let pairs: &'a [HeaderPair] = if pairs.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts(pairs, len) }
    };
    LentHeaders {
        pairs: pairs.iter(),
    }
}

// ---------------------------------------------------------------------------------------
// Safe wrappers. Each takes the handle Envoy gave the current hook; the hook's lifetime is
// what makes the pointer valid, and the module never keeps a `FilterPtr` past its hook.

/// Label buffers as the ABI takes them: null when there are none.
fn labels_ptr(labels: &[Buffer]) -> *const Buffer {
    if labels.is_empty() {
        ptr::null()
    } else {
        labels.as_ptr()
    }
}

pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the message is valid for the call; Envoy copies it.
    unsafe { envoy_dynamic_module_callback_log(level, Buffer::of(message.as_bytes())) }
}

pub fn log_enabled(level: LogLevel) -> bool {
    // SAFETY: no pointers.
    unsafe { envoy_dynamic_module_callback_log_enabled(level) }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl ConfigPtr {
    /// Defines a metric with these label names; `None` when Envoy refuses.
    pub fn define_metric(self, kind: MetricType, name: &str, labels: &[&str]) -> Option<usize> {
        let define = match kind {
            MetricType::Counter => envoy_dynamic_module_callback_http_filter_config_define_counter,
            MetricType::Gauge => envoy_dynamic_module_callback_http_filter_config_define_gauge,
            MetricType::Histogram => {
                envoy_dynamic_module_callback_http_filter_config_define_histogram
            }
        };
        let labels: Vec<Buffer> = labels.iter().map(|l| Buffer::of(l.as_bytes())).collect();
        let mut id = 0usize;
        // SAFETY: `self.0` is the config Envoy passed to the running `..._config_new`; the
        // name and labels are valid for the call (Envoy copies them); `id` is ours.
        let result = unsafe {
            define(
                self.0,
                Buffer::of(name.as_bytes()),
                labels_ptr(&labels),
                labels.len(),
                &raw mut id,
            )
        };
        (result == 0).then_some(id)
    }
}

impl FilterPtr {
    /// Adds to a counter or gauge, records a histogram value or sets a gauge, by the
    /// metric's type and `set`.
    pub fn metric(self, kind: MetricType, id: usize, labels: &[String], value: u64, set: bool) {
        let update = match (kind, set) {
            (MetricType::Counter, _) => envoy_dynamic_module_callback_http_filter_increment_counter,
            (MetricType::Gauge, false) => envoy_dynamic_module_callback_http_filter_increment_gauge,
            (MetricType::Gauge, true) => envoy_dynamic_module_callback_http_filter_set_gauge,
            (MetricType::Histogram, _) => {
                envoy_dynamic_module_callback_http_filter_record_histogram_value
            }
        };
        let labels: Vec<Buffer> = labels.iter().map(|l| Buffer::of(l.as_bytes())).collect();
        // SAFETY: `self.0` is the current hook's filter; the label values are valid for the
        // call and as many as the metric was defined with (the caller's table pairs them). An
        // id Envoy does not know is refused with MetricNotFound, not undefined behaviour.
        let _ = unsafe { update(self.0, id, labels_ptr(&labels), labels.len(), value) };
    }

    /// The first value of a header, copied.
    pub fn header(self, kind: HeaderType, name: &str) -> Option<Vec<u8>> {
        let mut value = Buffer::NULL;
        // SAFETY: `self.0` is the current hook's filter; `name` and `value` are valid for the
        // call; `optional_size` may be null (the header says so).
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_header(
                self.0,
                kind,
                Buffer::of(name.as_bytes()),
                &raw mut value,
                0,
                ptr::null_mut(),
            )
        };
        if !found || value.ptr.is_null() {
            return None;
        }
        // SAFETY: Envoy lends the value until the hook returns or a header is set; it is
        // copied at once.
        Some(unsafe { value.as_slice() }.to_vec())
    }

    /// The whole map, in Envoy's order, serialized as the host layout (copied once).
    pub fn headers(self, kind: HeaderType) -> HeaderPairs {
        self.with_headers(kind, |pairs| HeaderPairs::serialize(pairs))
    }

    /// `read` over the map's pairs in Envoy's order, lent by Envoy for the call. Up to
    /// [`STACK_PAIRS`] headers the pair table Envoy fills lives on the stack.
    pub fn with_headers<R>(
        self,
        kind: HeaderType,
        read: impl for<'p> FnOnce(LentHeaders<'p>) -> R,
    ) -> R {
        // SAFETY: `self.0` is the current hook's filter.
        let count = unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.0, kind) };
        let mut on_stack = [HeaderPair::EMPTY; STACK_PAIRS];
        let mut on_heap = Vec::new();
        let pairs: &mut [HeaderPair] = match on_stack.get_mut(..count) {
            Some(pairs) => pairs,
            None => {
                on_heap.resize(count, HeaderPair::EMPTY);
                &mut on_heap
            }
        };
        // SAFETY: `pairs` holds `count` entries, as many as Envoy just said the map has (the
        // map does not change between the two calls: same thread, same hook).
        let ok = count > 0
            && unsafe {
                envoy_dynamic_module_callback_http_get_headers(self.0, kind, pairs.as_mut_ptr())
            };
        let filled = if ok { &pairs[..] } else { &[] };
        // SAFETY: Envoy filled each pair with buffers it lends for the current hook.
        read(unsafe { lent_headers(filled.as_ptr(), filled.len()) })
    }

    /// Replaces every value of the header (`None`: removes it).
    pub fn set_header(self, kind: HeaderType, name: &str, value: Option<&[u8]>) {
        let value = value.map_or(Buffer::NULL, Buffer::of);
        // SAFETY: `self.0` is the current hook's filter; the buffers are valid for the call
        // (Envoy copies them); a null value removes the header (the header says so).
        let _ = unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                kind,
                Buffer::of(name.as_bytes()),
                value,
            )
        };
    }

    /// Adds a value, keeping those already there.
    pub fn add_header(self, kind: HeaderType, name: &str, value: &[u8]) {
        // SAFETY: as `set_header`.
        let _ = unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.0,
                kind,
                Buffer::of(name.as_bytes()),
                Buffer::of(value),
            )
        };
    }

    /// Answers the request locally (Envoy's `sendLocalReply`).
    pub fn send_response(self, status: u16, headers: &[(&str, &[u8])], body: &[u8], details: &str) {
        let pairs = header_pairs(headers);
        // SAFETY: `self.0` is the current hook's filter; `pairs` and the buffers they point
        // into live until the call returns (Envoy copies them).
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                u32::from(status),
                pairs.as_ptr(),
                pairs.len(),
                Buffer::of(body),
                Buffer::of(details.as_bytes()),
            );
        }
    }

    /// Starts an HTTP stream to `cluster` and ends the request with `body` (Envoy's
    /// `AsyncClient::start`); the answer comes to the `..._http_stream_*` hooks, possibly
    /// before this returns (a reply Envoy makes itself, such as no healthy upstream). `Err`
    /// with Envoy's reason (`..._callout_init_result`) when it does not start one.
    pub fn start_http_stream(
        self,
        cluster: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, i32> {
        let pairs = header_pairs(headers);
        let mut stream_id = 0u64;
        // SAFETY: `self.0` is the current hook's filter; the cluster, `pairs` (and the buffers
        // they point into) and the body live until the call returns (Envoy copies them into
        // its request); `stream_id` is ours.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_start_http_stream(
                self.0,
                &raw mut stream_id,
                Buffer::of(cluster.as_bytes()),
                pairs.as_ptr(),
                pairs.len(),
                Buffer::of(body),
                true,
                timeout_ms,
            )
        };
        if result == 0 {
            Ok(stream_id)
        } else {
            Err(result)
        }
    }

    /// Lets a request this module stopped in its request-headers hook go on.
    pub fn continue_decoding(self) {
        // SAFETY: `self.0` is the current hook's filter.
        unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(self.0) }
    }

    pub fn clear_route_cache(self) {
        // SAFETY: `self.0` is the current hook's filter.
        unsafe { envoy_dynamic_module_callback_http_clear_route_cache(self.0) }
    }

    pub fn attribute_string(self, attribute: Attribute) -> Option<Vec<u8>> {
        let mut value = Buffer::NULL;
        // SAFETY: `self.0` is the current hook's filter; `value` is ours.
        let found = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.0,
                attribute,
                &raw mut value,
            )
        };
        // SAFETY: Envoy lends the value for the current hook; copied at once.
        found.then(|| unsafe { value.as_slice() }.to_vec())
    }

    pub fn attribute_int(self, attribute: Attribute) -> Option<u64> {
        let mut value = 0u64;
        // SAFETY: `self.0` is the current hook's filter; `value` is ours.
        let found = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_int(
                self.0,
                attribute,
                &raw mut value,
            )
        };
        found.then_some(value)
    }
}

// ---------------------------------------------------------------------------------------
// Event hooks. Each turns Envoy's pointers into handles and calls the safe code in `crate`;
// the module's objects cross as `Box` pointers.

/// Envoy calls this once, when it loads the library: the ABI version this module speaks.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    crate::logger::install();
    ABI_VERSION_C.as_ptr().cast()
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: *mut c_void,
    name: Buffer,
    config: Buffer,
) -> *const c_void {
    // SAFETY: Envoy lends both buffers for this call; they are copied before it returns.
    let (name, config) = unsafe { (name.as_slice(), config.as_slice()) };
    match crate::config_new(ConfigPtr(config_envoy), name, config) {
        Some(config) => Box::into_raw(Box::new(config)).cast_const().cast(),
        None => ptr::null(),
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    if !config.is_null() {
        // SAFETY: the pointer is one `..._config_new` made with `Box::into_raw`, and Envoy
        // destroys each config once.
        drop(unsafe { Box::from_raw(config.cast_mut().cast::<crate::Config>()) });
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _filter_envoy: *mut c_void,
) -> *const c_void {
    // SAFETY: `config` is a live `Config` made by `..._config_new` (Envoy destroys the config
    // only after every filter made from it).
    let Some(config) = (unsafe { config.cast::<crate::Config>().as_ref() }) else {
        return ptr::null();
    };
    match crate::filter_new(config) {
        Some(filter) => Box::into_raw(Box::new(filter)).cast_const().cast(),
        None => ptr::null(),
    }
}

/// The module's filter behind Envoy's pointer, for the current hook. Shared, not unique:
/// Envoy may call a stream's hook from inside another (a local reply's response phase).
///
/// # Safety
/// `filter` must be a pointer `..._http_filter_new` made that `..._destroy` has not freed.
unsafe fn filter_ref<'a>(filter: *const c_void) -> Option<&'a crate::Filter> {
    // SAFETY: the caller's contract; the filter lives until `..._destroy`, which Envoy calls
    // after every other hook of the stream has returned, on the same worker thread.
    unsafe { filter.cast::<crate::Filter>().as_ref() }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: *mut c_void,
    filter: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: Envoy passes the pointer `..._http_filter_new` returned for this stream.
    match unsafe { filter_ref(filter) } {
        Some(filter) => crate::request_headers(filter, FilterPtr(filter_envoy), end_of_stream),
        None => 0,
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy: *mut c_void,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: as in `..._request_headers`.
    if let Some(filter) = unsafe { filter_ref(filter) } {
        crate::response_headers(filter, FilterPtr(filter_envoy));
    }
    0
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    filter_envoy: *mut c_void,
    filter: *const c_void,
) -> u32 {
    // SAFETY: as in `..._request_headers`.
    if let Some(filter) = unsafe { filter_ref(filter) } {
        crate::response_trailers(filter, FilterPtr(filter_envoy));
    }
    0
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    filter_envoy: *mut c_void,
    filter: *const c_void,
) {
    // SAFETY: as in `..._request_headers`.
    if let Some(filter) = unsafe { filter_ref(filter) } {
        crate::stream_complete(filter, FilterPtr(filter_envoy));
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: *const c_void) {
    if !filter.is_null() {
        // SAFETY: the pointer is one `..._http_filter_new` made with `Box::into_raw`; Envoy
        // destroys each filter once, on the worker that made it.
        let filter = unsafe { Box::from_raw(filter.cast_mut().cast::<crate::Filter>()) };
        crate::destroy(*filter);
    }
}

/// The request's body while its call is out: held (1, `StopIterationAndBuffer`), as a
/// `Continue` here would let the request go on before the call's answer; else 0.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter_envoy: *mut c_void,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: as in `..._request_headers`.
    let held = unsafe { filter_ref(filter) }.is_some_and(crate::waiting_for_call);
    u32::from(held)
}

/// The request's trailers while its call is out: held (1, `StopIteration`); else 0.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy: *mut c_void,
    filter: *const c_void,
) -> u32 {
    // SAFETY: as in `..._request_headers`.
    let held = unsafe { filter_ref(filter) }.is_some_and(crate::waiting_for_call);
    u32::from(held)
}

// The gRPC call's stream (`callout.rs`): Envoy calls these on the worker of the stream that
// started it, never after `..._http_filter_destroy`. The module makes one call at a time per
// stream, so the stream id is not needed to tell calls apart.

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy: *mut c_void,
    filter: *const c_void,
    _stream_id: u64,
    headers: *const HeaderPair,
    headers_len: usize,
    _end_stream: bool,
) {
    // SAFETY: as in `..._request_headers`; Envoy lends the headers for this hook.
    if let Some(filter) = unsafe { filter_ref(filter) } {
        let headers: Vec<_> = unsafe { lent_headers(headers, headers_len) }.collect();
        crate::call_headers(filter, &headers);
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy: *mut c_void,
    filter: *const c_void,
    _stream_id: u64,
    data: *const Buffer,
    data_len: usize,
    _end_stream: bool,
) {
    // SAFETY: as in `..._request_headers`.
    let Some(filter) = (unsafe { filter_ref(filter) }) else {
        return;
    };
    let buffers = if data.is_null() || data_len == 0 {
        &[][..]
    } else {
        // SAFETY: Envoy lends `data_len` buffers (the body's slices) for this hook.
        unsafe { std::slice::from_raw_parts(data, data_len) }
    };
    // SAFETY: each buffer is a slice of Envoy's body, lent for this hook.
    let chunks: Vec<&[u8]> = buffers.iter().map(|b| unsafe { b.as_slice() }).collect();
    crate::call_data(filter, &chunks);
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy: *mut c_void,
    filter: *const c_void,
    _stream_id: u64,
    trailers: *const HeaderPair,
    trailers_len: usize,
) {
    // SAFETY: as in `..._http_stream_headers`.
    if let Some(filter) = unsafe { filter_ref(filter) } {
        let trailers: Vec<_> = unsafe { lent_headers(trailers, trailers_len) }.collect();
        crate::call_trailers(filter, &trailers);
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    filter_envoy: *mut c_void,
    filter: *const c_void,
    _stream_id: u64,
) {
    // SAFETY: as in `..._request_headers`.
    if let Some(filter) = unsafe { filter_ref(filter) } {
        crate::call_ended(filter, FilterPtr(filter_envoy), false);
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    filter_envoy: *mut c_void,
    filter: *const c_void,
    _stream_id: u64,
    _reason: i32,
) {
    // SAFETY: as in `..._request_headers`.
    if let Some(filter) = unsafe { filter_ref(filter) } {
        crate::call_ended(filter, FilterPtr(filter_envoy), true);
    }
}

// Hooks the module has no use for. Envoy 1.40 resolves every HTTP filter hook by name when it
// loads the config and refuses a module that lacks one, so each is exported; they ignore
// their arguments (harmless under the C calling convention: the caller owns them) and answer
// "continue" (0) where Envoy expects a status.

macro_rules! continue_hooks {
    ($($name:ident),* $(,)?) => {$(
        #[unsafe(no_mangle)]
        pub extern "C" fn $name() -> u32 { 0 }
    )*};
}

continue_hooks!(
    envoy_dynamic_module_on_http_filter_response_body,
    envoy_dynamic_module_on_http_filter_local_reply,
    envoy_dynamic_module_on_http_filter_scheduled,
    envoy_dynamic_module_on_http_filter_http_callout_done,
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark,
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark,
    envoy_dynamic_module_on_http_filter_config_scheduled,
    envoy_dynamic_module_on_http_filter_config_http_callout_done,
    envoy_dynamic_module_on_http_filter_config_http_stream_headers,
    envoy_dynamic_module_on_http_filter_config_http_stream_data,
    envoy_dynamic_module_on_http_filter_config_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_config_http_stream_complete,
    envoy_dynamic_module_on_http_filter_config_http_stream_reset,
    envoy_dynamic_module_on_http_filter_per_route_config_destroy,
);

/// No per-route config: Envoy gets null, which refuses a per-route config (the plugin JSON
/// names routes itself).
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new() -> *const c_void {
    ptr::null()
}
