//! The harness: echo upstreams plus an Envoy with the real `.wasm` modules, from one builder.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::echo::EchoServer;
use crate::envoy::{self, Envoy, Harness, StartError};

/// A route in the generated Envoy config.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    pub prefix: String,
    /// Only requests with this header value match.
    pub header: Option<(String, String)>,
    pub upstream: String,
}

impl RouteSpec {
    pub fn new(name: &str, prefix: &str, upstream: &str) -> Self {
        Self {
            name: name.to_owned(),
            prefix: prefix.to_owned(),
            header: None,
            upstream: upstream.to_owned(),
        }
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
            "route": { "cluster": self.upstream, "timeout": "15s" }
        })
    }
}

/// The demo routes, as in `envoy/envoy.yaml` and `istio/`: first match wins.
pub fn demo_routes() -> Vec<RouteSpec> {
    vec![
        RouteSpec::new("checkout-canary", "/checkout", "v2").when_header("x-canary", "true"),
        RouteSpec::new("checkout", "/checkout", "v1"),
        RouteSpec::new("catalog", "/catalog", "v1"),
        RouteSpec::new("plain", "/plain", "v1"),
        RouteSpec::new("", "/unnamed", "v1"),
        RouteSpec::new("default", "/", "v1"),
    ]
}

#[derive(Debug)]
pub struct MeshBuilder {
    filters: Vec<(String, String)>,
    routes: Vec<RouteSpec>,
    upstreams: Vec<String>,
    concurrency: u32,
}

impl MeshBuilder {
    /// Adds the module `dist/<module>.wasm` with this plugin JSON (taken verbatim, so tests
    /// can pass invalid JSON). Filters run in the order they are added.
    pub fn filter(mut self, module: &str, plugin_json: &str) -> Self {
        self.filters
            .push((module.to_owned(), plugin_json.to_owned()));
        self
    }

    /// Replaces the demo routes.
    pub fn routes(mut self, routes: Vec<RouteSpec>) -> Self {
        self.routes = routes;
        self
    }

    /// Envoy worker threads (each runs its own VM of every module). Default 1.
    pub fn concurrency(mut self, workers: u32) -> Self {
        self.concurrency = workers;
        self
    }

    pub fn start(self) -> Result<Mesh, StartError> {
        let fail = |reason: String| StartError {
            reason,
            log: String::new(),
        };
        let harness = Harness::from_env().map_err(fail)?;
        let dist = envoy::dist_dir();
        let mut http_filters = Vec::new();
        for (module, plugin_json) in &self.filters {
            let wasm = dist.join(format!("{module}.wasm"));
            if !wasm.is_file() {
                return Err(fail(format!(
                    "{} is missing: run scripts/build.sh first",
                    wasm.display()
                )));
            }
            http_filters.push(envoy::wasm_filter(
                module,
                &harness.module_path(module),
                plugin_json,
            ));
        }
        let mut upstreams = Vec::new();
        for name in &self.upstreams {
            upstreams.push(EchoServer::start(name).map_err(|e| fail(format!("echo {name}: {e}")))?);
        }
        let clusters = upstreams
            .iter()
            .map(|u| envoy::cluster(&u.service, u.addr))
            .collect();
        let routes = self.routes.iter().map(RouteSpec::to_envoy).collect();
        let config = envoy::bootstrap(http_filters, routes, clusters);
        let envoy = Envoy::start(harness, &config.to_string(), "json", self.concurrency)?;
        Ok(Mesh {
            base: format!("http://{}", envoy.listener()),
            envoy,
            upstreams,
            agent: envoy::agent(Duration::from_secs(20)),
        })
    }
}

/// A running Envoy with its echo upstreams, on the backend `MESH_HARNESS` chooses. Everything
/// stops on drop; Envoy's log is printed if the test is failing.
pub struct Mesh {
    envoy: Envoy,
    upstreams: Vec<EchoServer>,
    agent: ureq::Agent,
    base: String,
}

impl Mesh {
    pub fn builder() -> MeshBuilder {
        MeshBuilder {
            filters: Vec::new(),
            routes: demo_routes(),
            upstreams: vec!["v1".to_owned(), "v2".to_owned()],
            concurrency: 1,
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
        }
    }

    /// Requests the upstream `service` has served.
    pub fn upstream_count(&self, service: &str) -> u64 {
        let upstream = self
            .upstreams
            .iter()
            .find(|u| u.service == service)
            .unwrap_or_else(|| panic!("no upstream {service}"));
        let mut reply = self
            .agent
            .get(format!("http://{}/__count", upstream.addr))
            .call()
            .unwrap();
        reply
            .body_mut()
            .read_to_string()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// The filters' stats by name as Envoy reports them (`wasmcustom.` prefix removed).
    pub fn stats(&self) -> BTreeMap<String, u64> {
        let text = self.admin("/stats?filter=mesh_");
        text.lines()
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(": ")?;
                let name = name.strip_prefix("wasmcustom.").unwrap_or(name);
                Some((name.to_owned(), value.trim().parse().ok()?))
            })
            .collect()
    }

    /// One stat, 0 if it was never defined.
    pub fn stat(&self, name: &str) -> u64 {
        self.stats().get(name).copied().unwrap_or(0)
    }

    pub fn admin(&self, path: &str) -> String {
        let mut reply = self
            .agent
            .get(format!("http://{}{path}", self.envoy.admin()))
            .call()
            .unwrap();
        reply.body_mut().read_to_string().unwrap()
    }

    pub fn envoy_log(&self) -> String {
        self.envoy.log()
    }

    pub fn envoy_running(&mut self) -> bool {
        self.envoy.is_running()
    }

    /// The Envoy itself (its process or container), for tests of the harness.
    pub fn envoy(&self) -> &Envoy {
        &self.envoy
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- envoy log ---\n{}", self.envoy.log());
        }
    }
}

/// A request being built.
pub struct Call<'a> {
    mesh: &'a Mesh,
    request: ureq::http::request::Builder,
}

impl Call<'_> {
    /// Adds a header (a second call with the same name adds a second header).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.request = self.request.header(name, value.as_ref());
        self
    }

    pub fn send(self) -> Reply {
        let request = self.request.body(()).unwrap();
        let mut response = self.mesh.agent.run(request).unwrap_or_else(|e| {
            panic!(
                "request failed: {e}\n--- envoy log ---\n{}",
                self.mesh.envoy.log()
            )
        });
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        let body = response.body_mut().read_to_vec().unwrap_or_default();
        Reply {
            status: response.status().as_u16(),
            headers,
            body,
        }
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
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The echo upstream's JSON answer.
    pub fn echo(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not an echo reply ({e}): {}", self.text()))
    }

    /// Which upstream answered (`v1`, `v2`); `None` for a reply that did not come from one.
    pub fn service(&self) -> Option<String> {
        let echo: Value = serde_json::from_slice(&self.body).ok()?;
        echo["service"].as_str().map(str::to_owned)
    }

    /// A request header as the upstream received it.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.echo()["headers"][name].as_str().map(str::to_owned)
    }
}
