//! The `Host` traits over Envoy's dynamic-module callbacks ([`Native`]), and the host of the
//! load-time dry run that notes which metrics the stages define ([`Recorder`]).
//!
//! One type serves every phase (Envoy's callbacks take the header map's kind as an
//! argument); which phase may read what is the `Vm`'s business, through the traits it asks
//! for. Properties are Envoy's attributes, in proxy-wasm's encoding: strings as bytes,
//! integers as 8 little-endian bytes.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use mesh_policy::filter::{LocalReply, Plugin};
use mesh_policy::grpc::CONTENT_TYPE;
use mesh_policy::headers::HeaderPairs;
use mesh_policy::host::{
    Host, Metric, MetricKind, Nanos, RequestCalls, ResponseHost, Shared, SharedError, TrailersHost,
};

use crate::abi::{Attribute, FilterPtr, HeaderType, MetricType};
use crate::store;

/// Wall-clock nanoseconds since the Unix epoch (the same clock in every worker).
pub fn wall_clock() -> Nanos {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// An attribute by its proxy-wasm property path, and whether Envoy gives it as an integer.
fn attribute(path: &[&str]) -> Option<(Attribute, bool)> {
    Some(match path {
        ["xds", "route_name"] => (Attribute::XdsRouteName, false),
        ["xds", "cluster_name"] => (Attribute::XdsClusterName, false),
        ["xds", "virtual_host_name"] => (Attribute::XdsVirtualHostName, false),
        ["source", "address"] => (Attribute::SourceAddress, false),
        ["response", "code"] => (Attribute::ResponseCode, true),
        ["response", "code_details"] => (Attribute::ResponseCodeDetails, false),
        ["response", "flags"] => (Attribute::ResponseFlags, true),
        _ => return None,
    })
}

/// A metric name of `mesh_policy::stats` (`base;label=value;...`) as the ABI defines and
/// counts it: the family (`base` and the label names), and the label values.
pub struct MetricName<'n> {
    pub base: &'n str,
    pub labels: Vec<&'n str>,
    pub values: Vec<&'n str>,
}

impl<'n> MetricName<'n> {
    pub fn parse(name: &'n str) -> Self {
        let mut parts = name.split(';');
        let base = parts.next().unwrap_or_default();
        let (labels, values) = parts
            .map(|part| part.split_once('=').unwrap_or((part, "")))
            .unzip();
        Self {
            base,
            labels,
            values,
        }
    }

    /// The key of the family in the config's table: every metric of a family shares Envoy's
    /// id, told apart by its label values.
    pub fn family(&self) -> String {
        let mut key = self.base.to_owned();
        for label in &self.labels {
            key.push(';');
            key.push_str(label);
        }
        key
    }
}

/// A metric a worker's stages defined: its family's type and id in Envoy, its label values.
pub type Defined = (MetricType, usize, Vec<String>);

/// The host for one hook of one stream (`filter`: Envoy's handle for it; `None` once Envoy
/// has no stream to ask about).
pub struct Native<'a> {
    filter: Option<FilterPtr>,
    rng: &'a RefCell<fastrand::Rng>,
    metrics: &'a HashMap<String, (MetricType, usize)>,
    plugin: &'a Plugin,
    /// The metrics the worker defined, by the index `define_metric` gave.
    defined: &'a RefCell<Vec<Defined>>,
    /// The names of the response's headers, as [`name_bit`]s: those it came with (read by
    /// the hook's first response header write) and those the hook wrote since.
    response_names: Cell<Option<u128>>,
    /// The clock as the hook first read it: one hook is one instant (the done phase and the
    /// worker's tick after it share a read).
    now: OnceCell<Nanos>,
}

/// A header name's bit in a 128-bit set of names, from its length and last eight bytes with
/// bit 0x20 set in each (a fold coarser than lower-casing, so case never matters). Two names
/// may share a bit: the set answers "maybe there", which only ever turns an add into a set.
fn name_bit(name: &[u8]) -> u128 {
    let tail = name.get(name.len().saturating_sub(8)..).unwrap_or(name);
    let mut word = [0u8; 8];
    for (w, b) in word.iter_mut().zip(tail) {
        *w = *b;
    }
    let folded = u64::from_le_bytes(word) | 0x2020_2020_2020_2020;
    let hash = (folded ^ name.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    1 << (hash >> 57)
}

impl<'a> Native<'a> {
    pub fn new(
        filter: Option<FilterPtr>,
        rng: &'a RefCell<fastrand::Rng>,
        metrics: &'a HashMap<String, (MetricType, usize)>,
        plugin: &'a Plugin,
        defined: &'a RefCell<Vec<Defined>>,
    ) -> Self {
        Self {
            filter,
            rng,
            metrics,
            plugin,
            defined,
            response_names: Cell::new(None),
            now: OnceCell::new(),
        }
    }

    /// Whether the response may have `name` (it came with it or this hook wrote it), and
    /// notes that it has it now. The map is read in place, nothing copied.
    fn response_had(&self, filter: FilterPtr, name: &str) -> bool {
        let names = self.response_names.get().unwrap_or_else(|| {
            filter.with_headers(HeaderType::ResponseHeader, |pairs| {
                pairs.fold(0, |names, (name, _)| names | name_bit(name))
            })
        });
        let bit = name_bit(name.as_bytes());
        self.response_names.set(Some(names | bit));
        names & bit != 0
    }

    /// Answers the request locally. A gRPC call's reply is trailers-only: HTTP 200 with
    /// `grpc-status` and `grpc-message` (Envoy writes `content-type` itself for a gRPC
    /// request), as proxy-wasm's `send_local_response` with a gRPC status makes it.
    pub fn send_reply(&mut self, reply: &LocalReply) {
        let Some(filter) = self.filter else {
            return;
        };
        let mut headers: Vec<(&str, &[u8])> = reply
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect();
        let code;
        match &reply.grpc {
            Some(status) => {
                code = status.code.0.to_string();
                headers.retain(|(name, _)| !name.eq_ignore_ascii_case(CONTENT_TYPE));
                headers.push(("grpc-status", code.as_bytes()));
                if !status.message.is_empty() {
                    headers.push(("grpc-message", status.message.as_bytes()));
                }
                filter.send_response(reply.status, &headers, &[], "mesh_local_reply");
            }
            None => filter.send_response(reply.status, &headers, &reply.body, "mesh_local_reply"),
        }
    }

    fn update(&mut self, metric: Metric, value: u64, set: bool) {
        let (Some(filter), Some(index)) = (self.filter, metric.0) else {
            return;
        };
        let Ok(defined) = self.defined.try_borrow() else {
            return;
        };
        if let Some((kind, id, labels)) = defined.get(index as usize) {
            filter.metric(*kind, *id, labels, value, set);
        }
    }
}

impl Host for Native<'_> {
    fn now(&self) -> Nanos {
        *self.now.get_or_init(wall_clock)
    }

    fn random_u64(&mut self) -> u64 {
        self.rng.borrow_mut().u64(..)
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        if path == ["plugin_name"] {
            return Some(self.plugin.name.as_bytes().to_vec());
        }
        let filter = self.filter?;
        let (attribute, integer) = attribute(path)?;
        if integer {
            filter
                .attribute_int(attribute)
                .map(|v| v.to_le_bytes().to_vec())
        } else {
            filter.attribute_string(attribute)
        }
    }

    /// Envoy's integer attributes as integers: no bytes made to be decoded again.
    fn property_u64(&self, path: &[&str]) -> Option<u64> {
        match attribute(path)? {
            (attribute, true) => self.filter?.attribute_int(attribute),
            (_, false) => None,
        }
    }

    fn shared_get(&self, key: &str) -> Option<Shared> {
        store::get(key)
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        store::set(key, value, cas)
    }

    /// The metric's family as the config defined it at load, with this name's label values
    /// (any route, any cluster); a family the load's dry run did not meet is not counted.
    fn define_metric(&mut self, _kind: MetricKind, name: &str) -> Metric {
        let name = MetricName::parse(name);
        let Some(&(kind, id)) = self.metrics.get(&name.family()) else {
            log::debug!(
                "metric family {} was not defined at load: not counted",
                name.family()
            );
            return Metric(None);
        };
        let Ok(mut defined) = self.defined.try_borrow_mut() else {
            return Metric(None);
        };
        let values: Vec<String> = name.values.iter().map(|v| (*v).to_owned()).collect();
        // A Wasm module's metric exists in Envoy from its definition (at 0); a labelled
        // series of the ABI from its first update: an update by 0 makes it now, as the Wasm
        // build shows it. (A histogram has no update that observes nothing.)
        if let Some(filter) = self.filter
            && kind != MetricType::Histogram
        {
            filter.metric(kind, id, &values, 0, false);
        }
        defined.push((kind, id, values));
        Metric(u32::try_from(defined.len() - 1).ok())
    }

    fn increment_metric(&mut self, metric: Metric, delta: i64) {
        // Counters only grow; gauges are set (`record_metric`), never moved down by a delta.
        if let Ok(delta) = u64::try_from(delta) {
            self.update(metric, delta, false);
        }
    }

    fn record_metric(&mut self, metric: Metric, value: u64) {
        self.update(metric, value, true);
    }
}

impl RequestCalls for Native<'_> {
    fn get_http_request_headers(&self) -> HeaderPairs {
        self.filter
            .map(|filter| filter.headers(HeaderType::RequestHeader))
            .unwrap_or_default()
    }

    fn set_http_request_header(&mut self, name: &str, value: &[u8]) {
        if let Some(filter) = self.filter {
            filter.set_header(HeaderType::RequestHeader, name, Some(value));
        }
    }

    fn add_http_request_header(&mut self, name: &str, value: &[u8]) {
        if let Some(filter) = self.filter {
            filter.add_header(HeaderType::RequestHeader, name, value);
        }
    }

    fn remove_http_request_header(&mut self, name: &str) {
        if let Some(filter) = self.filter {
            filter.set_header(HeaderType::RequestHeader, name, None);
        }
    }

    fn clear_http_route_cache(&mut self) {
        if let Some(filter) = self.filter {
            filter.clear_route_cache();
        }
    }
}

impl ResponseHost for Native<'_> {
    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.filter?.header(HeaderType::ResponseHeader, name)
    }

    /// An add where the response has no such header (as the `Vm` does for request headers):
    /// Envoy's set first walks the map to remove the name, ~2,000 instructions against ~950
    /// for an add (and one read of the response's names per hook; `docs/native.md`).
    fn set_response_header(&mut self, name: &str, value: &[u8]) {
        let Some(filter) = self.filter else {
            return;
        };
        if self.response_had(filter, name) {
            filter.set_header(HeaderType::ResponseHeader, name, Some(value));
        } else {
            filter.add_header(HeaderType::ResponseHeader, name, value);
        }
    }

    fn add_response_header(&mut self, name: &str, value: &[u8]) {
        if let Some(filter) = self.filter {
            filter.add_header(HeaderType::ResponseHeader, name, value);
            // Not read yet: a later read finds the added header in the map.
            if let Some(names) = self.response_names.get() {
                self.response_names
                    .set(Some(names | name_bit(name.as_bytes())));
            }
        }
    }
}

impl TrailersHost for Native<'_> {
    fn response_trailer(&self, name: &str) -> Option<Vec<u8>> {
        self.filter?.header(HeaderType::ResponseTrailer, name)
    }
}

/// A local reply's response phase, before Envoy sends it: Envoy 1.40 does not run a dynamic
/// module's response hook for the reply the module itself sends, so the stages that saw the
/// request answer it here (the Wasm build's stages see their own module's local reply in its
/// response phase: the trace ID on a 429). The headers they set or add go out with the reply.
pub struct ReplyPhase<'h, 'a> {
    host: &'h mut Native<'a>,
    pub reply: LocalReply,
}

impl<'h, 'a> ReplyPhase<'h, 'a> {
    pub fn new(host: &'h mut Native<'a>, reply: LocalReply) -> Self {
        Self { host, reply }
    }
}

impl Host for ReplyPhase<'_, '_> {
    mesh_policy::forward_host!(
        host => now, random_u64, property, property_u64, shared_get, shared_set
    );
    mesh_policy::forward_host!(host => define_metric, increment_metric, record_metric);
}

impl ResponseHost for ReplyPhase<'_, '_> {
    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        if name == ":status" {
            // A gRPC reply goes out as HTTP 200 (trailers-only).
            let status = if self.reply.grpc.is_some() {
                200
            } else {
                self.reply.status
            };
            return Some(status.to_string().into_bytes());
        }
        if name.eq_ignore_ascii_case("grpc-status")
            && let Some(grpc) = &self.reply.grpc
        {
            return Some(grpc.code.0.to_string().into_bytes());
        }
        self.reply
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes().to_vec())
    }

    fn set_response_header(&mut self, name: &str, value: &[u8]) {
        self.reply
            .headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.add_response_header(name, value);
    }

    fn add_response_header(&mut self, name: &str, value: &[u8]) {
        self.reply
            .headers
            .push((name.to_owned(), String::from_utf8_lossy(value).into_owned()));
    }
}

/// The dry run's host (main thread, inside `config_new`): notes every metric the stages
/// define; shared data is the real store (a bind creates the route's records, as a worker's
/// would); no stream, so no properties but the plugin's name.
pub struct Recorder {
    pub defined: Vec<(MetricKind, String)>,
    plugin: Plugin,
    rng: fastrand::Rng,
}

impl Recorder {
    pub fn new(plugin: Plugin) -> Self {
        Self {
            defined: Vec::new(),
            plugin,
            rng: fastrand::Rng::with_seed(wall_clock()),
        }
    }
}

impl Host for Recorder {
    fn now(&self) -> Nanos {
        wall_clock()
    }

    fn random_u64(&mut self) -> u64 {
        self.rng.u64(..)
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        (path == ["plugin_name"]).then(|| self.plugin.name.as_bytes().to_vec())
    }

    fn shared_get(&self, key: &str) -> Option<Shared> {
        store::get(key)
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        store::set(key, value, cas)
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Metric {
        self.defined.push((kind, name.to_owned()));
        Metric(None)
    }

    fn increment_metric(&mut self, _metric: Metric, _delta: i64) {}

    fn record_metric(&mut self, _metric: Metric, _value: u64) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_split_into_family_and_values() {
        let name = MetricName::parse("mesh_x_total;route=a.b;decision=allowed");
        assert_eq!(name.base, "mesh_x_total");
        assert_eq!(name.labels, ["route", "decision"]);
        assert_eq!(name.values, ["a.b", "allowed"]);
        assert_eq!(name.family(), "mesh_x_total;route;decision");
        assert_eq!(MetricName::parse("plain").family(), "plain");
    }

    #[test]
    fn a_header_names_bit_ignores_case() {
        assert_eq!(name_bit(b"X-Trace-Id"), name_bit(b"x-trace-id"));
        assert_eq!(name_bit(b"x-trace-id").count_ones(), 1);
    }

    /// Sharing a bit only costs a set where an add would do; the headers the stages write and
    /// those an upstream's answer usually has get bits of their own.
    #[test]
    fn the_usual_response_names_have_bits_of_their_own() {
        let names = [
            "x-trace-id",
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "retry-after",
            "set-cookie",
            ":status",
            "content-type",
            "content-length",
            "date",
            "server",
            "x-envoy-upstream-service-time",
        ];
        let all = names.iter().fold(0, |all, n| all | name_bit(n.as_bytes()));
        assert_eq!(all.count_ones() as usize, names.len());
    }

    #[test]
    fn properties_map_to_attributes() {
        assert_eq!(
            attribute(&["xds", "route_name"]),
            Some((Attribute::XdsRouteName, false))
        );
        assert_eq!(
            attribute(&["response", "flags"]),
            Some((Attribute::ResponseFlags, true))
        );
        assert_eq!(attribute(&["request", "path"]), None);
    }
}
