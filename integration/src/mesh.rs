//! The harness: echo upstreams plus an Envoy with the real `.wasm` modules, from one builder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::ecds::{Applied, Discovery};
use crate::echo::EchoServer;
use crate::envoy::{self, Envoy, Harness, Launch, StartError};

/// A route in the generated Envoy config.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    pub prefix: String,
    /// Only requests with this header value match.
    pub header: Option<(String, String)>,
    pub upstream: String,
    /// The route's upstream timeout; default 15 s.
    pub timeout_ms: Option<u64>,
}

impl RouteSpec {
    pub fn new(name: &str, prefix: &str, upstream: &str) -> Self {
        Self {
            name: name.to_owned(),
            prefix: prefix.to_owned(),
            header: None,
            upstream: upstream.to_owned(),
            timeout_ms: None,
        }
    }

    /// Envoy answers 504 itself when the upstream takes longer than this.
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    pub fn when_header(mut self, name: &str, value: &str) -> Self {
        self.header = Some((name.to_owned(), value.to_owned()));
        self
    }

    fn to_envoy(&self) -> Value {
        let mut matcher = json!({ "prefix": self.prefix });
        if let Some((name, value)) = &self.header {
            matcher["headers"] = json!([{ "name": name, "string_match": { "exact": value } }]);
        }
        json!({
            "name": self.name,
            "match": matcher,
            "route": {
                "cluster": self.upstream,
                "timeout": format!("{}s", self.timeout_ms.unwrap_or(15_000) as f64 / 1000.0)
            }
        })
    }
}

/// The tests' routes, first match wins: the demo's five named routes as in `envoy/envoy.yaml`
/// and `istio/demo.yaml` (`checkout-canary` .. `fragile`), then test-only ones: `plain` (no
/// policy), an unnamed route, and a catch-all pair named `default-canary`/`default` where the
/// demo has `shop-canary`/`shop` (`default` is the name Istio gives the route of a service
/// without a VirtualService).
pub fn demo_routes() -> Vec<RouteSpec> {
    demo_routes_with([
        RouteSpec::new("plain", "/plain", "v1"),
        RouteSpec::new("", "/unnamed", "v1"),
    ])
}

/// The demo's five named routes, then `extra`, then the catch-all pair
/// `default-canary`/`default` (see [`demo_routes`]).
pub fn demo_routes_with(extra: impl IntoIterator<Item = RouteSpec>) -> Vec<RouteSpec> {
    let mut routes = vec![
        RouteSpec::new("checkout-canary", "/checkout", "v2").when_header("x-canary", "true"),
        RouteSpec::new("checkout", "/checkout", "v1"),
        RouteSpec::new("catalog", "/catalog", "v1"),
        RouteSpec::new("limited", "/limited", "v1"),
        RouteSpec::new("fragile", "/fragile", "v1"),
    ];
    routes.extend(extra);
    routes.extend([
        RouteSpec::new("default-canary", "/", "v2").when_header("x-canary", "true"),
        RouteSpec::new("default", "/", "v1"),
    ]);
    routes
}

/// How the four filters are loaded: each from its own module (`MESH_MODULES` unset or
/// `separate`), all from `dist/bundle.wasm` (`MESH_MODULES=bundle`), or all from the native
/// dynamic module `dist/libmesh_bundle.so` (`MESH_MODULES=native`, same plugin JSON as the
/// bundle). Read here only, so every filter test runs against each without knowing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modules {
    Separate,
    Bundle,
    Native,
}

impl Modules {
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("MESH_MODULES").as_deref() {
            Err(_) | Ok("" | "separate") => Ok(Self::Separate),
            Ok("bundle") => Ok(Self::Bundle),
            Ok("native") => Ok(Self::Native),
            Ok(other) => Err(format!(
                "MESH_MODULES={other:?}: expected \"separate\", \"bundle\" or \"native\""
            )),
        }
    }

    /// The modules this run loads; panics on a bad `MESH_MODULES`.
    pub fn current() -> Self {
        Self::from_env().unwrap_or_else(|e| panic!("{e}"))
    }

    /// `(module, plugin JSON)` of each filter as these modules load them (the bundle's stages
    /// as one `bundle`), for a test that writes its own bootstrap.
    pub fn load(self, filters: &[(&str, &str)]) -> Vec<(String, String)> {
        let specs = filters
            .iter()
            .map(|(module, json)| FilterSpec {
                module: (*module).to_owned(),
                wasm: None,
                plugin_json: (*json).to_owned(),
                failure_policy: None,
            })
            .collect();
        load_as(self, specs)
            .into_iter()
            .map(|spec| (spec.module, spec.plugin_json))
            .collect()
    }

    /// The component of Envoy's log lines the modules write: `[wasm]`, or
    /// `[dynamic_modules]` for the native module.
    pub fn log_component(self) -> &'static str {
        match self {
            Self::Native => "[dynamic_modules]",
            Self::Separate | Self::Bundle => "[wasm]",
        }
    }

    /// The Envoy plugin name `filter` runs under (`mesh.<module>`): it prefixes shared-data
    /// keys, which the breaker's transition log line shows.
    pub fn plugin(self, filter: &str) -> String {
        match self {
            Self::Bundle | Self::Native if BUNDLE_STAGES.contains(&filter) => {
                "mesh.bundle".to_owned()
            }
            _ => format!("mesh.{filter}"),
        }
    }
}

/// The native module's metrics from Envoy's Prometheus page, by the names the Wasm modules
/// give them (`base;label=value;...`). The native module defines each metric family with its
/// labels through the ABI (Envoy keeps them as tags: `/stats` shows
/// `dynamicmodulescustom.base.label.value...`, which a route name with dots makes ambiguous);
/// Prometheus shows them as labels, in the order defined, under the Wasm build's name (the
/// harness turns on [`envoy::native_metric_names`]): `base{label="value",...} 3`.
/// Histogram series (`_bucket`, `_sum`, `_count`) are left out, as `/stats` shows no count
/// for a Wasm histogram either.
fn native_stats(prometheus: &str) -> BTreeMap<String, u64> {
    let mut histograms = Vec::new();
    let mut stats = BTreeMap::new();
    for line in prometheus.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE mesh_") {
            if let Some(base) = rest.strip_suffix(" histogram") {
                histograms.push(format!("mesh_{base}"));
            }
            continue;
        }
        if !line.starts_with("mesh_") {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (base, labels) = series.split_once('{').unwrap_or((series, "}"));
        if histograms.iter().any(|h| base.starts_with(h.as_str())) {
            continue;
        }
        let mut name = base.to_owned();
        let mut labels = labels.strip_suffix('}').unwrap_or(labels);
        while let Some((label, after)) = labels.split_once("=\"") {
            let mut value = String::new();
            let mut chars = after.char_indices();
            let mut end = after.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, other)) => value.push(other),
                        None => {}
                    },
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            name.push_str(&format!(";{label}={value}"));
            labels = after[end..].trim_start_matches(',');
        }
        if let Ok(value) = value.trim().parse::<f64>() {
            // Counters and gauges are integers here; Prometheus prints them as numbers.
            stats.insert(name, value as u64);
        }
    }
    stats
}

/// The bundle's stages, in its fixed order: their plugin JSON goes under these keys.
pub const BUNDLE_STAGES: [&str; 4] = ["traceid", "canary", "ratelimit", "breaker"];

/// The filters as `modules` loads them: with the bundle, the stages the test asked for become
/// one `bundle` filter (at the place of the first), its plugin JSON an object keyed by stage
/// holding each filter's JSON verbatim (empty JSON as `{}`, which the filter reads alike), and
/// the failure policy of any of them. Other modules (the fixture) keep their places.
fn load_as(modules: Modules, filters: Vec<FilterSpec>) -> Vec<FilterSpec> {
    if modules == Modules::Separate
        || !filters
            .iter()
            .any(|f| f.wasm.is_none() && BUNDLE_STAGES.contains(&f.module.as_str()))
    {
        return filters;
    }
    let mut stages: Vec<(usize, String)> = Vec::new();
    let mut failure_policy = None;
    let mut out = Vec::new();
    for spec in filters {
        let stage = BUNDLE_STAGES.iter().position(|s| *s == spec.module);
        match stage {
            Some(index) if spec.wasm.is_none() => {
                if stages.is_empty() {
                    out.push(FilterSpec {
                        module: "bundle".to_owned(),
                        wasm: None,
                        plugin_json: String::new(),
                        failure_policy: None,
                    });
                }
                let json = if spec.plugin_json.trim().is_empty() {
                    "{}".to_owned()
                } else {
                    spec.plugin_json
                };
                stages.push((index, json));
                failure_policy = failure_policy.or(spec.failure_policy);
            }
            _ => out.push(spec),
        }
    }
    // JSON that does not parse (tests of config errors) goes last and the object stays open,
    // so the bundle's parser meets the mistake as written: a truncated config is truncated.
    let broken = |json: &str| serde_json::from_str::<Value>(json).is_err();
    stages.sort_by_key(|(index, json)| (broken(json), *index));
    let json = stages
        .iter()
        .map(|(index, json)| format!("\"{}\": {json}", BUNDLE_STAGES[*index]))
        .collect::<Vec<_>>()
        .join(", ");
    let close = if stages.iter().any(|(_, json)| broken(json)) {
        ""
    } else {
        "}"
    };
    if let Some(bundle) = out.iter_mut().find(|f| f.module == "bundle") {
        bundle.plugin_json = format!("{{{json}{close}");
        bundle.failure_policy = failure_policy;
    }
    out
}

/// One wasm filter of the chain.
#[derive(Debug, Clone)]
struct FilterSpec {
    /// The stats and plugin name: `mesh.<module>`.
    module: String,
    /// `dist/<module>.wasm` unless set.
    wasm: Option<PathBuf>,
    plugin_json: String,
    /// Envoy's `failure_policy` (`FAIL_CLOSED`, `FAIL_OPEN`, `FAIL_RELOAD`); unset: Envoy's
    /// default.
    failure_policy: Option<String>,
}

impl FilterSpec {
    /// The module file: `dist/<module>.wasm` (the native bundle's `.so` for `native`)
    /// unless the spec names one.
    fn module_file(&self, native: bool) -> Result<PathBuf, String> {
        let wasm = match &self.wasm {
            Some(wasm) => wasm.clone(),
            None if native => envoy::native_module(),
            None => envoy::dist_dir().join(format!("{}.wasm", self.module)),
        };
        if wasm.is_file() {
            Ok(wasm)
        } else {
            Err(format!(
                "{} is missing: run scripts/build.sh (filters) or scripts/test.sh (the fixture) first",
                wasm.display()
            ))
        }
    }

    /// Envoy's filter entry, its code at `code` (a path as Envoy sees it).
    fn filter(&self, code: &Path) -> Value {
        let mut filter = envoy::wasm_filter(&self.module, code, &self.plugin_json);
        if let Some(policy) = &self.failure_policy {
            filter["typed_config"]["config"]["failure_policy"] = json!(policy);
        }
        filter
    }
}

/// What a mesh whose filters come through ECDS keeps to push new versions.
struct Discovered {
    discovery: Discovery,
    /// The filters as the test asked for them (before the bundle folded them).
    requested: Vec<FilterSpec>,
    modules: Modules,
    /// The bundle's module once a push replaced it.
    bundle_wasm: Option<PathBuf>,
}

#[derive(Debug)]
pub struct MeshBuilder {
    filters: Vec<FilterSpec>,
    routes: Vec<RouteSpec>,
    upstreams: Vec<String>,
    closed_upstreams: Vec<String>,
    /// HTTP/2 clusters for gRPC services; `None`: a cluster without endpoints.
    grpc_clusters: Vec<(String, Option<std::net::SocketAddr>)>,
    concurrency: u32,
    use_remote_address: bool,
    max_request_headers_kb: Option<u32>,
    /// Envoy's log level for the modules; `None`: debug (their per-request lines too).
    module_log_level: Option<String>,
    /// How the filters are loaded; `None`: as `MESH_MODULES` says.
    modules: Option<Modules>,
    /// The filters' configs come through ECDS (files Envoy watches) instead of the listener.
    discovered: bool,
}

impl MeshBuilder {
    /// Adds the module `dist/<module>.wasm` with this plugin JSON (taken verbatim, so tests
    /// can pass invalid JSON). Filters run in the order they are added.
    pub fn filter(mut self, module: &str, plugin_json: &str) -> Self {
        self.filters.push(FilterSpec {
            module: module.to_owned(),
            wasm: None,
            plugin_json: plugin_json.to_owned(),
            failure_policy: None,
        });
        self
    }

    /// Adds the test fixture module (`integration/fixture`, never shipped), named `fixture`:
    /// it panics on `x-fixture-panic` and shows what a filter reads of a request.
    pub fn fixture(mut self) -> Self {
        self.filters.push(FilterSpec {
            module: "fixture".to_owned(),
            wasm: Some(envoy::fixture_wasm()),
            plugin_json: r#"{"default": {}}"#.to_owned(),
            failure_policy: None,
        });
        self
    }

    /// Envoy's `failure_policy` for the filter added last: what Envoy does once its VM has
    /// failed (`FAIL_CLOSED`, `FAIL_OPEN`, `FAIL_RELOAD`; Istio's `failStrategy`).
    pub fn failure_policy(mut self, policy: &str) -> Self {
        if let Some(last) = self.filters.last_mut() {
            last.failure_policy = Some(policy.to_owned());
        }
        self
    }

    /// The connection manager's `max_request_headers_kb` (Envoy's default: 60).
    pub fn max_request_headers_kb(mut self, kb: u32) -> Self {
        self.max_request_headers_kb = Some(kb);
        self
    }

    /// Envoy's log level for the modules (`--component-log-level wasm:<level>`), e.g. `info`
    /// as in production, where per-request debug lines are not formatted. Default: debug.
    pub fn module_log_level(mut self, level: &str) -> Self {
        self.module_log_level = Some(level.to_owned());
        self
    }

    /// Loads the filters this way whatever `MESH_MODULES` says (a test that compares them).
    pub fn modules(mut self, modules: Modules) -> Self {
        self.modules = Some(modules);
        self
    }

    /// Serves every wasm filter's config through Envoy's extension config discovery, from
    /// files ([`crate::ecds`]), so [`Mesh::push_config`] and [`Mesh::push_module`] can change
    /// them while Envoy runs, as istiod does.
    pub fn filters_by_discovery(mut self) -> Self {
        self.discovered = true;
        self
    }

    /// Replaces the demo routes.
    pub fn routes(mut self, routes: Vec<RouteSpec>) -> Self {
        self.routes = routes;
        self
    }

    /// Adds a cluster `name` whose endpoint is a 127.0.0.1 port nothing listens on: every
    /// connection is refused (Envoy answers 503, flag UF).
    pub fn closed_upstream(mut self, name: &str) -> Self {
        self.closed_upstreams.push(name.to_owned());
        self
    }

    /// Adds an HTTP/2 cluster `name` for a gRPC service at `addr` (e.g. a rate limit service:
    /// several Envoys given the same address share it).
    pub fn grpc_cluster(mut self, name: &str, addr: std::net::SocketAddr) -> Self {
        self.grpc_clusters.push((name.to_owned(), Some(addr)));
        self
    }

    /// Adds an HTTP/2 cluster `name` without any endpoint (a service scaled to zero).
    pub fn empty_grpc_cluster(mut self, name: &str) -> Self {
        self.grpc_clusters.push((name.to_owned(), None));
        self
    }

    /// Envoy worker threads (each runs its own VM of every module). Default 1.
    pub fn concurrency(mut self, workers: u32) -> Self {
        self.concurrency = workers;
        self
    }

    /// The connection manager's `use_remote_address`: with `true`, `source.address` is the TCP
    /// peer; with Envoy's default `false`, Envoy takes it from the last `x-forwarded-for` entry.
    pub fn use_remote_address(mut self, on: bool) -> Self {
        self.use_remote_address = on;
        self
    }

    /// Starts Envoy and expects it to refuse the config, the module logging
    /// `<module> config=rejected plugin=mesh.<module> error=<expected>`. An error at a field
    /// (`routes[...]`, `default...`) starts with the stage in the bundle (`canary.routes[...]`);
    /// one about the whole document (JSON that does not parse) only has to be on that line.
    pub fn assert_refused(self, expected: &str) {
        let what = format!("{:?}", self.filters);
        let modules = Modules::current();
        let stage = self
            .filters
            .iter()
            .find(|f| f.wasm.is_none())
            .map(|f| f.module.clone())
            .unwrap_or_default();
        let module = match modules {
            Modules::Bundle | Modules::Native if BUNDLE_STAGES.contains(&stage.as_str()) => {
                "bundle".to_owned()
            }
            _ => stage.clone(),
        };
        let at_field = expected.starts_with("routes[") || expected.starts_with("default");
        let error = match (module == "bundle", at_field) {
            (true, true) => format!("error={stage}.{expected}"),
            (false, true) => format!("error={expected}"),
            (_, false) => expected.to_owned(),
        };
        let rejected = format!("{module} config=rejected plugin=mesh.{module} ");
        match self.start() {
            Ok(_) => panic!("Envoy must refuse the config of {what}"),
            Err(err) => assert!(
                err.log
                    .lines()
                    .any(|line| line.contains(&rejected) && line.contains(&error)),
                "no line with {rejected:?} and {error:?} in:\n{}",
                err.log
            ),
        }
    }

    pub fn start(self) -> Result<Mesh, StartError> {
        let fail = |reason: String| StartError {
            reason,
            log: String::new(),
        };
        let harness = Harness::from_env().map_err(fail)?;
        let loaded = match self.modules {
            Some(modules) => modules,
            None => Modules::from_env().map_err(fail)?,
        };
        let requested = self.filters.clone();
        let filters = load_as(loaded, self.filters);
        let mut discovery = match self.discovered {
            true if loaded == Modules::Native => {
                return Err(fail(
                    "filters_by_discovery pushes Wasm filter configs: not with MESH_MODULES=native"
                        .to_owned(),
                ));
            }
            true => Some(Discovery::new()?),
            false => None,
        };
        let mut http_filters = Vec::new();
        let mut mounted = Vec::new();
        for spec in &filters {
            // The native module takes the bundle's place (same plugin JSON); it has no
            // failure policy (a panic is caught in the module, the request passes).
            let native =
                loaded == Modules::Native && spec.module == "bundle" && spec.wasm.is_none();
            let file = spec.module_file(native).map_err(fail)?;
            if native {
                http_filters.push(envoy::native_filter(
                    &spec.module,
                    &harness.module_path(&file),
                    &spec.plugin_json,
                ));
                mounted.push(file);
                continue;
            }
            match &mut discovery {
                Some(discovery) => {
                    let filter =
                        spec.filter(&discovery.module(&file).map_err(|e| fail(e.to_string()))?);
                    let name = filter["name"].as_str().unwrap_or_default().to_owned();
                    discovery
                        .push(&name, &filter["typed_config"])
                        .map_err(|e| fail(format!("ECDS push: {e}")))?;
                    http_filters.push(discovery.filter(&name));
                }
                None => {
                    http_filters.push(spec.filter(&harness.module_path(&file)));
                    mounted.push(file);
                }
            }
        }
        if let Some(discovery) = &discovery {
            mounted.push(discovery.dir().to_path_buf());
        }
        let mut upstreams = Vec::new();
        for name in &self.upstreams {
            upstreams.push(EchoServer::start(name).map_err(|e| fail(format!("echo {name}: {e}")))?);
        }
        let mut clusters: Vec<Value> = upstreams
            .iter()
            .map(|u| envoy::cluster(&u.service, u.addr))
            .collect();
        for name in &self.closed_upstreams {
            // Bound, then released: nothing listens there afterwards.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| fail(format!("closed upstream {name}: {e}")))?;
            clusters.push(envoy::cluster(name, port));
        }
        for (name, addr) in &self.grpc_clusters {
            clusters.push(envoy::grpc_cluster(name, *addr));
        }
        let routes = self.routes.iter().map(RouteSpec::to_envoy).collect();
        let mut config = envoy::bootstrap(http_filters, routes, clusters);
        if discovery.is_some() {
            // Envoy subscribes to a config source only with a node id and cluster.
            config["node"] = mesh_deploy::ecds::node();
        }
        if loaded == Modules::Native {
            config["layered_runtime"] = envoy::native_metric_names();
        }
        let manager = &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
            [0]["typed_config"];
        if self.use_remote_address {
            manager["use_remote_address"] = json!(true);
        }
        if let Some(kb) = self.max_request_headers_kb {
            manager["max_request_headers_kb"] = json!(kb);
        }
        let log_level: Vec<String> = self
            .module_log_level
            .iter()
            .flat_map(|level| {
                [
                    "--component-log-level".to_owned(),
                    format!("wasm:{level},dynamic_modules:{level}"),
                ]
            })
            .collect();
        let launch = Launch::new(config.to_string())
            .concurrency(self.concurrency)
            .modules(mounted)
            .args(log_level);
        let envoy = Envoy::start(harness, &launch)?;
        Ok(Mesh {
            base: format!("http://{}", envoy.listener()),
            envoy,
            discovered: discovery.map(|discovery| Discovered {
                discovery,
                requested,
                modules: loaded,
                bundle_wasm: None,
            }),
            upstreams,
            agent: envoy::agent(Duration::from_secs(20)),
            unpooled: envoy::unpooled_agent(Duration::from_secs(20)),
        })
    }
}

/// A running Envoy with its echo upstreams, on the backend `MESH_HARNESS` chooses. Everything
/// stops on drop; Envoy's log is printed if the test is failing (see [`Envoy`]).
pub struct Mesh {
    envoy: Envoy,
    /// With [`MeshBuilder::filters_by_discovery`]: where pushes go.
    discovered: Option<Discovered>,
    upstreams: Vec<EchoServer>,
    agent: ureq::Agent,
    /// Opens a new connection per request (Envoy spreads connections over its workers).
    unpooled: ureq::Agent,
    base: String,
}

impl Mesh {
    pub fn builder() -> MeshBuilder {
        MeshBuilder {
            filters: Vec::new(),
            routes: demo_routes(),
            upstreams: vec!["v1".to_owned(), "v2".to_owned()],
            closed_upstreams: Vec::new(),
            grpc_clusters: Vec::new(),
            concurrency: 1,
            use_remote_address: false,
            max_request_headers_kb: None,
            module_log_level: None,
            modules: None,
            discovered: false,
        }
    }

    pub fn get(&self, path: &str) -> Call<'_> {
        self.call("GET", path)
    }

    pub fn call(&self, method: &str, path: &str) -> Call<'_> {
        Call {
            mesh: self,
            request: ureq::http::Request::builder()
                .method(method)
                .uri(format!("{}{path}", self.base)),
            new_connection: false,
            agent: None,
        }
    }

    /// Connections each Envoy worker has accepted so far, by worker index.
    pub fn worker_connections(&self) -> Vec<u64> {
        // listener.<address>.worker_<n>.downstream_cx_total
        let text = self.admin("/stats?filter=downstream_cx_total");
        let mut workers: Vec<(u32, u64)> = text
            .lines()
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(": ")?;
                let worker = name.strip_prefix("listener.")?.split(".worker_").nth(1)?;
                let worker = worker.strip_suffix(".downstream_cx_total")?;
                Some((worker.parse().ok()?, value.trim().parse().ok()?))
            })
            .collect();
        workers.sort_unstable();
        workers.into_iter().map(|(_, count)| count).collect()
    }

    /// Requests the upstream `service` has served.
    pub fn upstream_count(&self, service: &str) -> u64 {
        self.upstream_admin(service, "/__count")
            .trim()
            .parse()
            .unwrap()
    }

    /// Lets one answer the upstream `service` holds (`x-echo-hold: 1`) go.
    pub fn release_held(&self, service: &str) {
        self.upstream_admin(service, "/__release");
    }

    fn upstream_admin(&self, service: &str, path: &str) -> String {
        let upstream = self
            .upstreams
            .iter()
            .find(|u| u.service == service)
            .unwrap_or_else(|| panic!("no upstream {service}"));
        let mut reply = self
            .agent
            .get(format!("http://{}{path}", upstream.addr))
            .call()
            .unwrap();
        reply.body_mut().read_to_string().unwrap()
    }

    /// Pushes `plugin_json` as the config of `module` (one of the filters the mesh was built
    /// with, [`MeshBuilder::filters_by_discovery`]; under the bundle, its stage) and waits
    /// until Envoy applied it (`Ok`) or rejected it (`Err` with Envoy's log), bounded.
    pub fn push_config(&mut self, module: &str, plugin_json: &str) -> Result<(), String> {
        self.push(module, |spec| spec.plugin_json = plugin_json.to_owned())
    }

    /// Pushes the same config of `module` with its code from `wasm` (another build; under
    /// the bundle, of the bundle that runs `module`).
    pub fn push_module(&mut self, module: &str, wasm: &Path) -> Result<(), String> {
        let discovered = self
            .discovered
            .as_mut()
            .unwrap_or_else(|| panic!("built without filters_by_discovery"));
        if discovered.modules == Modules::Bundle && BUNDLE_STAGES.contains(&module) {
            let before = discovered.bundle_wasm.replace(wasm.to_path_buf());
            let result = self.push(module, |_| {});
            if let (Err(_), Some(discovered)) = (&result, self.discovered.as_mut()) {
                discovered.bundle_wasm = before;
            }
            result
        } else {
            self.push(module, |spec| spec.wasm = Some(wasm.to_path_buf()))
        }
    }

    /// Applies `change` to `module`'s spec and pushes; a rejected push leaves the specs as
    /// they were (Envoy keeps serving the previous config, and so does the next push).
    fn push(&mut self, module: &str, change: impl FnOnce(&mut FilterSpec)) -> Result<(), String> {
        let saved = self
            .discovered
            .as_ref()
            .map(|d| (d.requested.clone(), d.bundle_wasm.clone()));
        let result = self.push_changed(module, change);
        if let (Err(_), Some(discovered), Some((requested, bundle_wasm))) =
            (&result, self.discovered.as_mut(), saved)
        {
            discovered.requested = requested;
            discovered.bundle_wasm = bundle_wasm;
        }
        result
    }

    fn push_changed(
        &mut self,
        module: &str,
        change: impl FnOnce(&mut FilterSpec),
    ) -> Result<(), String> {
        let discovered = self
            .discovered
            .as_mut()
            .unwrap_or_else(|| panic!("built without filters_by_discovery"));
        let spec = discovered
            .requested
            .iter_mut()
            .find(|spec| spec.module == module)
            .unwrap_or_else(|| panic!("no filter {module}"));
        change(spec);
        let stage = BUNDLE_STAGES.contains(&module) && spec.wasm.is_none();
        let loaded = load_as(discovered.modules, discovered.requested.clone());
        let target = match discovered.modules {
            Modules::Bundle if stage => "bundle",
            _ => module,
        };
        let mut spec = loaded
            .into_iter()
            .find(|spec| spec.module == target)
            .unwrap_or_else(|| panic!("no filter {target} loaded"));
        if target == "bundle" {
            spec.wasm.clone_from(&discovered.bundle_wasm);
        }
        let wasm = spec.module_file(false)?;
        let code = discovered
            .discovery
            .module(&wasm)
            .map_err(|e| e.to_string())?;
        let filter = spec.filter(&code);
        let name = filter["name"].as_str().unwrap_or_default().to_owned();
        let before = self.applied(&name);
        let Some(discovered) = self.discovered.as_mut() else {
            return Err("built without filters_by_discovery".to_owned());
        };
        discovered
            .discovery
            .push(&name, &filter["typed_config"])
            .map_err(|e| e.to_string())?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.applied(&name);
            if now.failures > before.failures {
                return Err(self.envoy_log());
            }
            if now.reloads > before.reloads {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "Envoy neither applied nor rejected the push of {name}: {now:?}\n{}",
                    self.envoy_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pooled HTTP client, for a thread of the test's own (a load loop).
    pub fn client(&self) -> ureq::Agent {
        self.agent.clone()
    }

    /// `http://<listener>`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Envoy's ECDS counts for the discovered config `name` (`mesh.<module>`).
    pub fn applied(&self, name: &str) -> Applied {
        Applied::read(
            &self.admin("/stats?filter=extension_config_discovery"),
            name,
        )
    }

    /// The filters' stats by name as Envoy reports them (`wasmcustom.` prefix removed), once
    /// the modules have handed Envoy the counts of the requests before (they do every
    /// [`envoy::TEST_STATS_FLUSH_MS`]).
    pub fn stats(&self) -> BTreeMap<String, u64> {
        if Modules::current() == Modules::Native {
            return native_stats(&self.stats_page("/stats/prometheus"));
        }
        let text = self.stats_page("/stats?filter=mesh_");
        text.lines()
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(": ")?;
                let name = name
                    .strip_prefix("wasmcustom.")
                    .or_else(|| name.strip_prefix("dynamicmodulescustom."))
                    .unwrap_or(name);
                Some((name.to_owned(), value.trim().parse().ok()?))
            })
            .collect()
    }

    /// One stat. A name Envoy does not report (misspelled, or its route never bound) fails
    /// the test rather than reading as 0.
    pub fn stat(&self, name: &str) -> u64 {
        let stats = self.stats();
        match stats.get(name) {
            Some(value) => *value,
            None => panic!(
                "no stat {name}; Envoy has: {:?}",
                stats.keys().collect::<Vec<_>>()
            ),
        }
    }

    /// The stats that counted something: proof that a module is loaded and what it saw.
    pub fn nonzero_stats(&self) -> BTreeMap<String, u64> {
        let mut stats = self.stats();
        stats.retain(|_, value| *value != 0);
        stats
    }

    /// An admin page of stats once the modules have flushed the counts of the requests
    /// before ([`wait_for_stats_flush`]).
    pub fn stats_page(&self, path: &str) -> String {
        wait_for_stats_flush();
        self.admin(path)
    }

    pub fn admin(&self, path: &str) -> String {
        let mut reply = self
            .agent
            .get(format!("http://{}{path}", self.envoy.admin()))
            .call()
            .unwrap();
        reply.body_mut().read_to_string().unwrap()
    }

    /// Sets Envoy's log level for the modules while it runs (admin `POST /logging`), both
    /// components, as [`MeshBuilder::module_log_level`] does at start.
    pub fn set_module_log_level(&self, level: &str) {
        for component in ["wasm", "dynamic_modules"] {
            let url = format!("http://{}/logging?{component}={level}", self.envoy.admin());
            let reply = (self.agent.post(url).send_empty())
                .unwrap_or_else(|e| panic!("POST /logging?{component}={level}: {e}"));
            assert_eq!(reply.status(), 200, "POST /logging?{component}={level}");
        }
    }

    /// Envoy's admin address (what Prometheus scrapes at `/stats/prometheus`).
    pub fn admin_address(&self) -> std::net::SocketAddr {
        self.envoy.admin()
    }

    /// Envoy's listener, for clients the harness does not provide (raw TCP).
    pub fn listener(&self) -> std::net::SocketAddr {
        self.envoy.listener()
    }

    pub fn envoy_log(&self) -> String {
        self.envoy.log()
    }

    /// Envoy's process id (for its memory in `/proc`).
    pub fn envoy_pid(&self) -> u32 {
        self.envoy.pid()
    }

    /// Sends a request given as bytes ([`crate::raw::request`]) on a new connection.
    pub fn raw(&self, request: &[u8]) -> std::io::Result<Reply> {
        crate::raw::send(self.envoy.listener(), request, Duration::from_secs(20))
    }

    /// Envoy's wasm VMs: counters from `/stats` and failures from the log.
    pub fn wasm_health(&self) -> crate::raw::WasmHealth {
        crate::raw::WasmHealth::read(&self.admin("/stats?filter=wasm"), &self.envoy.log())
    }

    /// Whether Envoy's admin answers `/ready` with 200.
    pub fn ready(&self) -> bool {
        self.agent
            .get(format!("http://{}/ready", self.envoy.admin()))
            .call()
            .is_ok_and(|r| r.status() == 200)
    }

    pub fn envoy_running(&mut self) -> bool {
        self.envoy.is_running()
    }

    /// The Envoy itself (its process or container), for tests of the harness.
    pub fn envoy(&self) -> &Envoy {
        &self.envoy
    }
}

/// A request being built.
pub struct Call<'a> {
    mesh: &'a Mesh,
    request: ureq::http::request::Builder,
    new_connection: bool,
    agent: Option<&'a ureq::Agent>,
}

impl<'a> Call<'a> {
    /// Adds a header (a second call with the same name adds a second header).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.request = self.request.header(name, value.as_ref());
        self
    }

    /// Sends the request on a connection of its own, which Envoy may give to any worker.
    pub fn new_connection(mut self) -> Self {
        self.new_connection = true;
        self
    }

    /// Sends the request with this client (e.g. `envoy::agent`): a thread with a client of its
    /// own keeps its keep-alive connection, so one Envoy worker handles its requests in order.
    pub fn via(mut self, agent: &'a ureq::Agent) -> Self {
        self.agent = Some(agent);
        self
    }

    /// Sends the request; panics (with Envoy's log) when no response comes.
    pub fn send(self) -> Reply {
        let mesh = self.mesh;
        self.try_send().unwrap_or_else(|e| {
            panic!(
                "request failed: {e}\n--- envoy log ---\n{}",
                mesh.envoy.log()
            )
        })
    }

    /// Sends the request; an error when no response comes.
    pub fn try_send(self) -> Result<Reply, String> {
        let request = self.request.body(()).map_err(|e| e.to_string())?;
        let agent = match (self.agent, self.new_connection) {
            (Some(agent), _) => agent,
            (None, true) => &self.mesh.unpooled,
            (None, false) => &self.mesh.agent,
        };
        let mut response = agent.run(request).map_err(|e| e.to_string())?;
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        let body = response.body_mut().read_to_vec().unwrap_or_default();
        Ok(Reply {
            status: response.status().as_u16(),
            headers,
            body,
        })
    }
}

/// A response as the client saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_bytes(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The first value of a response header as it came (hostile replies are not UTF-8).
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.named(name).next()
    }

    /// Every line of a response header, in the order it came.
    pub fn header_lines(&self, name: &str) -> Vec<&[u8]> {
        self.named(name).collect()
    }

    fn named<'s, 'n>(&'s self, name: &'n str) -> impl Iterator<Item = &'s [u8]> + use<'s, 'n> {
        (self.headers.iter())
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The echo upstream's JSON answer.
    pub fn echo(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not an echo reply ({e}): {}", self.text()))
    }

    /// The echo upstream's JSON answer, if the body is one.
    pub fn try_echo(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// Which upstream answered (`v1`, `v2`); `None` for a reply that did not come from one.
    pub fn service(&self) -> Option<String> {
        self.try_echo()?["service"].as_str().map(str::to_owned)
    }

    /// A request header as the upstream received it.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.echo()["headers"][name].as_str().map(str::to_owned)
    }

    /// How many lines of a request header the echo upstream received (its values are
    /// joined with `,` in [`Reply::upstream_header`]).
    pub fn upstream_header_lines(&self, name: &str) -> u64 {
        self.echo()["header_lines"][name].as_u64().unwrap_or(0)
    }
}

/// Sleeps until every module's VM has flushed its counters at least once more: three flush
/// periods (ticks come on Envoy's workers' own timers, a little late under load).
pub fn wait_for_stats_flush() {
    std::thread::sleep(Duration::from_millis(3 * envoy::TEST_STATS_FLUSH_MS));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_stats_read_prometheus_labels_back_into_names() {
        let page = r#"# TYPE mesh_trace_requests_total counter
mesh_trace_requests_total{route="a.b",outcome="started"} 4
# TYPE mesh_breaker_state gauge
mesh_breaker_state{route="x",cluster="v\"1"} 2
# TYPE mesh_ratelimit_call_ms histogram
mesh_ratelimit_call_ms_bucket{route="x",le="0.5"} 0
mesh_ratelimit_call_ms_count{route="x"} 0
# TYPE envoy_cluster_upstream_rq counter
envoy_cluster_upstream_rq{envoy_cluster_name="v1"} 9
"#;
        let stats = native_stats(page);
        assert_eq!(
            stats.into_iter().collect::<Vec<_>>(),
            vec![
                ("mesh_breaker_state;route=x;cluster=v\"1".to_owned(), 2),
                (
                    "mesh_trace_requests_total;route=a.b;outcome=started".to_owned(),
                    4
                ),
            ]
        );
    }
}
