//! A fake Envoy for the crate's tests: every callback `abi.rs` declares, defined over one
//! stream's header maps and attributes in a thread-local (each test thread its own Envoy),
//! each call counted by name; and the hooks driven in the order Envoy calls them. Test builds
//! only: in the shared object these symbols are Envoy's.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::ptr::NonNull;

use super::{Attribute, Buffer, CalloutInit, HeaderPair, HeaderType, LogLevel, MetricsResult};

/// A header as the fake holds it.
pub type Header = (Vec<u8>, Vec<u8>);

/// One Envoy's state: the current stream's maps and attributes, and the calls made into it.
#[derive(Default)]
pub struct Envoy {
    pub request: Vec<Header>,
    pub response: Vec<Header>,
    pub strings: Vec<(Attribute, Vec<u8>)>,
    pub ints: Vec<(Attribute, u64)>,
    /// Calls into Envoy by callback name (without `envoy_dynamic_module_callback_`).
    pub calls: BTreeMap<&'static str, u64>,
    /// Local replies sent, by status.
    pub replies: Vec<u32>,
    metrics: usize,
}

thread_local! {
    static ENVOY: RefCell<Envoy> = RefCell::new(Envoy::default());
}

/// Runs `f` on this thread's Envoy (never from inside a hook: the hook's calls borrow it).
pub fn with<R>(f: impl FnOnce(&mut Envoy) -> R) -> R {
    ENVOY.with(|envoy| f(&mut envoy.borrow_mut()))
}

fn count(call: &'static str) {
    with(|envoy| *envoy.calls.entry(call).or_default() += 1);
}

/// Loads `json` as a filter config named `name`, as Envoy does: the config, or null when the
/// module refuses it.
pub fn load(name: &str, json: &str) -> *const c_void {
    super::envoy_dynamic_module_on_http_filter_config_new(
        NonNull::dangling().as_ptr(),
        Buffer::of(name.as_bytes()),
        Buffer::of(json.as_bytes()),
    )
}

pub fn unload(config: *const c_void) {
    super::envoy_dynamic_module_on_http_filter_config_destroy(config);
}

/// One stream of `config` as Envoy runs a request without a body: `request` in, `response`
/// back from the upstream unless the request hook stopped it; the request hook's status.
pub fn stream(config: *const c_void, request: Vec<Header>, response: Vec<Header>) -> u32 {
    with(|envoy| {
        envoy.request = request;
        envoy.response = response;
    });
    let envoy: *mut c_void = NonNull::dangling().as_ptr();
    let filter = super::envoy_dynamic_module_on_http_filter_new(config, envoy);
    let status = super::envoy_dynamic_module_on_http_filter_request_headers(envoy, filter, true);
    if status == 0 {
        super::envoy_dynamic_module_on_http_filter_response_headers(envoy, filter, false);
    }
    super::envoy_dynamic_module_on_http_filter_stream_complete(envoy, filter);
    super::envoy_dynamic_module_on_http_filter_destroy(filter);
    status
}

/// # Safety
/// A buffer the module passed: `len` readable bytes at `ptr`, or null.
unsafe fn bytes(buffer: Buffer) -> Vec<u8> {
    // SAFETY: the caller's contract.
    unsafe { buffer.as_slice() }.to_vec()
}

fn map(envoy: &mut Envoy, kind: HeaderType) -> Option<&mut Vec<Header>> {
    match kind {
        HeaderType::RequestHeader => Some(&mut envoy.request),
        HeaderType::ResponseHeader => Some(&mut envoy.response),
        HeaderType::RequestTrailer | HeaderType::ResponseTrailer => None,
    }
}

/// A pair lending `header`'s bytes (valid while the header is in its map).
fn lend(header: &Header) -> HeaderPair {
    HeaderPair {
        key_ptr: header.0.as_ptr().cast(),
        key_len: header.0.len(),
        value_ptr: header.1.as_ptr().cast(),
        value_len: header.1.len(),
    }
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_callback_log(_level: LogLevel, _message: Buffer) {}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_callback_log_enabled(_level: LogLevel) -> bool {
    false
}

/// The three metric definitions, alike: a fresh id each.
macro_rules! metric_definitions {
    ($($name:ident),*) => {$(
        #[unsafe(no_mangle)]
        unsafe extern "C" fn $name(
            _config: *mut c_void,
            _name: Buffer,
            _label_names: *const Buffer,
            _label_names_len: usize,
            id: *mut usize,
        ) -> MetricsResult {
            let next = with(|envoy| {
                envoy.metrics += 1;
                envoy.metrics
            });
            // SAFETY: the module passes its own `id`.
            unsafe { answer(id, Some(next)) };
            0
        }
    )*};
}

metric_definitions!(
    envoy_dynamic_module_callback_http_filter_config_define_counter,
    envoy_dynamic_module_callback_http_filter_config_define_gauge,
    envoy_dynamic_module_callback_http_filter_config_define_histogram
);

/// Writes `found` where the module asked for it; whether there was one.
///
/// # Safety
/// `result` must be writable (the module's own out-parameter).
unsafe fn answer<T>(result: *mut T, found: Option<T>) -> bool {
    match found {
        Some(value) => {
            // SAFETY: the caller's contract.
            unsafe { result.write(value) };
            true
        }
        None => false,
    }
}

/// The four metric updates, counted alike.
macro_rules! metric_updates {
    ($($name:ident),*) => {$(
        #[unsafe(no_mangle)]
        extern "C" fn $name(
            _filter: *mut c_void,
            _id: usize,
            _label_values: *const Buffer,
            _label_values_len: usize,
            _value: u64,
        ) -> MetricsResult {
            count("metric update");
            0
        }
    )*};
}

metric_updates!(
    envoy_dynamic_module_callback_http_filter_increment_counter,
    envoy_dynamic_module_callback_http_filter_increment_gauge,
    envoy_dynamic_module_callback_http_filter_set_gauge,
    envoy_dynamic_module_callback_http_filter_record_histogram_value
);

#[unsafe(no_mangle)]
unsafe extern "C" fn envoy_dynamic_module_callback_http_get_header(
    _filter: *mut c_void,
    header_type: HeaderType,
    key: Buffer,
    result: *mut Buffer,
    index: usize,
    _optional_size: *mut usize,
) -> bool {
    count("get_header");
    // SAFETY: the module's key, valid for the call.
    let key = unsafe { bytes(key) };
    let found = with(|envoy| {
        let map = map(envoy, header_type)?;
        let pair = map
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case(&key))
            .nth(index)?;
        Some(Buffer::of(&pair.1))
    });
    // SAFETY: the module passes its own `result`.
    unsafe { answer(result, found) }
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_callback_http_get_headers_size(
    _filter: *mut c_void,
    header_type: HeaderType,
) -> usize {
    count("get_headers_size");
    with(|envoy| map(envoy, header_type).map_or(0, |map| map.len()))
}

#[unsafe(no_mangle)]
unsafe extern "C" fn envoy_dynamic_module_callback_http_get_headers(
    _filter: *mut c_void,
    header_type: HeaderType,
    result: *mut HeaderPair,
) -> bool {
    count("get_headers");
    let pairs: Vec<HeaderPair> = with(|envoy| {
        map(envoy, header_type).map_or_else(Vec::new, |map| map.iter().map(lend).collect())
    });
    for (i, pair) in pairs.into_iter().enumerate() {
        // SAFETY: the module passes room for as many pairs as `get_headers_size` said.
        unsafe { result.add(i).write(pair) };
    }
    true
}

/// # Safety
/// The module's buffers, valid for the call.
unsafe fn write_header(kind: HeaderType, key: Buffer, value: Option<Buffer>, replace: bool) {
    // SAFETY: the caller's contract.
    let (key, value) = unsafe { (bytes(key), value.map(|v| bytes(v))) };
    with(|envoy| {
        let Some(map) = map(envoy, kind) else {
            return;
        };
        if replace {
            map.retain(|(name, _)| !name.eq_ignore_ascii_case(&key));
        }
        if let Some(value) = value {
            map.push((key.to_ascii_lowercase(), value));
        }
    });
}

#[unsafe(no_mangle)]
unsafe extern "C" fn envoy_dynamic_module_callback_http_add_header(
    _filter: *mut c_void,
    header_type: HeaderType,
    key: Buffer,
    value: Buffer,
) -> bool {
    count("add_header");
    // SAFETY: the module's buffers, valid for the call.
    unsafe { write_header(header_type, key, Some(value), false) };
    true
}

#[unsafe(no_mangle)]
unsafe extern "C" fn envoy_dynamic_module_callback_http_set_header(
    _filter: *mut c_void,
    header_type: HeaderType,
    key: Buffer,
    value: Buffer,
) -> bool {
    count("set_header");
    let value = (!value.ptr.is_null()).then_some(value);
    // SAFETY: the module's buffers, valid for the call.
    unsafe { write_header(header_type, key, value, true) };
    true
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_callback_http_send_response(
    _filter: *mut c_void,
    status_code: u32,
    _headers: *const HeaderPair,
    _headers_len: usize,
    _body: Buffer,
    _details: Buffer,
) {
    count("send_response");
    with(|envoy| envoy.replies.push(status_code));
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_callback_http_clear_route_cache(_filter: *mut c_void) {
    count("clear_route_cache");
}

#[unsafe(no_mangle)]
unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
    _filter: *mut c_void,
    attribute: Attribute,
    result: *mut Buffer,
) -> bool {
    count("get_attribute_string");
    let found = with(|envoy| {
        let (_, value) = envoy.strings.iter().find(|(a, _)| *a == attribute)?;
        Some(Buffer::of(value))
    });
    // SAFETY: the module passes its own `result`.
    unsafe { answer(result, found) }
}

#[unsafe(no_mangle)]
unsafe extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
    _filter: *mut c_void,
    attribute: Attribute,
    result: *mut u64,
) -> bool {
    count("get_attribute_int");
    let found = with(|envoy| {
        envoy
            .ints
            .iter()
            .find(|(a, _)| *a == attribute)
            .map(|p| p.1)
    });
    // SAFETY: the module passes its own `result`.
    unsafe { answer(result, found) }
}

/// No cluster: every call is refused (2, cluster not found), as Envoy refuses one to a
/// cluster it does not know.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_callback_http_filter_start_http_stream(
    _filter: *mut c_void,
    _stream_id: *mut u64,
    _cluster: Buffer,
    _headers: *const HeaderPair,
    _headers_len: usize,
    _body: Buffer,
    _end_stream: bool,
    _timeout_ms: u64,
) -> CalloutInit {
    count("start_http_stream");
    2
}

#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_callback_http_filter_continue_decoding(_filter: *mut c_void) {
    count("continue_decoding");
}

mod tests {
    use super::*;

    #[test]
    fn a_refused_config_is_null() {
        assert!(load("mesh.bundle", r#"{"nope": {}}"#).is_null());
        let config = load("mesh.bundle", r#"{"traceid": {"routes": {"r": {}}}}"#);
        assert!(!config.is_null());
        unload(config);
    }
}
