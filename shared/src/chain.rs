//! What a module runs: one filter, or filters chained in one module (the bundle).
//!
//! The adapter drives a [`Stages`]: [`Stage<F>`] is one [`Filter`] with its compiled routes
//! (a filter's own module), and a pair `(A, B)` runs `A`'s stages, then `B`'s (the bundle is
//! `(Stage<TraceId>, (Stage<Canary>, (Stage<RateLimit>, Stage<Breaker>)))`). A chain keeps
//! what Envoy does for separate modules:
//! - the request phase runs the stages in order; a local reply ([`Verdict::Reply`]) ends it,
//!   so later stages never see the request;
//! - a [`Verdict::Call`] holds the chain; the call's outcome goes to the stage that asked for
//!   it ([`Filter::on_call_done`]), and when that stage lets the request go on, the later
//!   stages run;
//! - the response and done phases run the stages that saw the request, in reverse order
//!   (Envoy's order for response filters; of the four filters only the breaker has a done
//!   phase), except a stage that answered the request itself (as the adapter never ran a
//!   filter's response or done phase for its own reply);
//! - every stage reads the route name the module read once, before any stage ran: a later
//!   module reads the same name (`xds.route_name` keeps the route chosen before a filter
//!   changed headers; `integration/tests/rematch.rs` shows it).
//!
//! Plugin JSON: a [`Stage`] alone takes its filter's envelope; a chain takes an object keyed by
//! filter name (`{"traceid": E, "canary": E, ...}`), each value the envelope the filter's own
//! module takes. A missing key disables that stage; an unknown key is an error, and every
//! error's path starts with the stage (`canary.routes["shop"].percent: ...`).

use std::rc::Rc;

use serde_json::value::RawValue;

use crate::config::{ConfigError, Entries, Envelope, FieldPath, Routes, parse_json};
use crate::filter::{CallOutcome, Filter, Plugin, Verdict};
use crate::host::{Host, RequestHost, ResponseHost, TrailersHost};

/// The stages of one module, as the adapter drives them.
pub trait Stages: Sized {
    /// The module's name in its own log lines (`config=rejected`).
    const NAME: &'static str;
    /// Whether any stage makes gRPC calls ([`Filter::MAKES_CALLS`]).
    const MAKES_CALLS: bool;
    /// Every stage's bound route for one Envoy route name.
    type Route;
    /// Every stage's per-request state.
    type Request;

    /// Reads and compiles the module's plugin JSON. A chain takes an object keyed by stage.
    fn configure(plugin: &Plugin, json: &[u8]) -> Result<Self, ConfigError> {
        let mut configs: StageConfigs = if json.iter().all(u8::is_ascii_whitespace) {
            Entries::default()
        } else {
            parse_json(json)?
        };
        let stages = Self::load(plugin, &mut configs)?;
        if let Some((name, _)) = configs.0.first() {
            let mut names = Vec::new();
            Self::stage_names(&mut names);
            return Err(ConfigError::Json {
                path: FieldPath::root().field(name),
                message: format!("unknown stage, expected one of {}", names.join(", ")),
            });
        }
        Ok(stages)
    }

    /// Takes each stage's envelope from its key of a chain's plugin JSON; what is left is
    /// not a stage of this chain.
    fn load(plugin: &Plugin, configs: &mut StageConfigs) -> Result<Self, ConfigError>;

    /// The stages' names, in order.
    fn stage_names(names: &mut Vec<&'static str>);

    /// Logs one `config=loaded` line per configured stage.
    fn log_loaded(&self, plugin: &Plugin);

    /// Binds every stage to `route_name`; `None` when no stage has a policy for it.
    fn bind(&self, route_name: &str, host: &mut impl Host) -> Option<Self::Route>;

    fn on_request(
        &self,
        route: &Self::Route,
        host: &mut impl RequestHost,
    ) -> (Verdict, Self::Request);

    /// Whether a stage holds the request for a call.
    fn waiting(request: &Self::Request) -> bool;

    /// The outcome of the call a stage asked for; the stages after it run when it lets the
    /// request go on.
    fn on_call_done(
        &self,
        route: &Self::Route,
        request: &mut Self::Request,
        outcome: CallOutcome,
        host: &mut impl RequestHost,
    ) -> Verdict;

    fn on_response(
        &self,
        route: &Self::Route,
        request: &mut Self::Request,
        host: &mut impl ResponseHost,
    );

    fn on_response_trailers(
        &self,
        route: &Self::Route,
        request: &mut Self::Request,
        host: &mut impl TrailersHost,
    );

    fn on_done(&self, route: &Self::Route, request: &mut Self::Request, host: &mut impl Host);

    /// The root context's tick for one bound route: every stage's deferred work.
    fn on_tick(&self, route: &Self::Route, host: &mut impl Host);
}

/// A chain's plugin JSON: each stage's text by stage name, parsed when the stage takes it
/// (so its errors carry the stage's path and its duplicate keys stay errors).
pub type StageConfigs = Entries<Box<RawValue>>;

/// One filter and its compiled routes.
pub struct Stage<F: Filter> {
    filter: F,
    routes: Routes<F::Policy>,
    /// Configured (a chain's plugin JSON has its key); a disabled stage has no routes.
    enabled: bool,
}

impl<F: Filter> Stage<F> {
    #[cfg(test)]
    pub fn routes(&self) -> &Routes<F::Policy> {
        &self.routes
    }

    fn compile(
        plugin: &Plugin,
        envelope: Envelope<F::Config>,
        at: &FieldPath,
    ) -> Result<Self, ConfigError> {
        let filter = F::new(plugin);
        let routes = envelope.compile(at, |c, at| filter.compile(c, at))?;
        Ok(Self {
            filter,
            routes,
            enabled: true,
        })
    }
}

/// Where one stage is with a request.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Let the request go on.
    Passed,
    /// Holds the request for a call.
    Waiting,
    /// Answered the request itself: no response or done phase for it.
    Replied,
}

impl Step {
    fn of(verdict: &Verdict) -> Self {
        match verdict {
            Verdict::Continue => Self::Passed,
            Verdict::Call(_) => Self::Waiting,
            Verdict::Reply(_) => Self::Replied,
        }
    }
}

/// One stage's per-request state.
pub struct StageRequest<R> {
    request: R,
    step: Step,
}

impl<F: Filter> Stages for Stage<F> {
    const NAME: &'static str = F::NAME;
    const MAKES_CALLS: bool = F::MAKES_CALLS;
    type Route = F::Route;
    type Request = StageRequest<F::Request>;

    /// A filter's own module: the whole plugin JSON is its envelope.
    fn configure(plugin: &Plugin, json: &[u8]) -> Result<Self, ConfigError> {
        let filter = F::new(plugin);
        let routes = crate::filter::configure(&filter, json)?;
        Ok(Self {
            filter,
            routes,
            enabled: true,
        })
    }

    fn load(plugin: &Plugin, configs: &mut StageConfigs) -> Result<Self, ConfigError> {
        match configs.0.iter().position(|(name, _)| name == F::NAME) {
            Some(index) => {
                let (_, text) = configs.0.remove(index);
                let at = FieldPath::root().field(F::NAME);
                let envelope = Envelope::from_json_at(text.get().as_bytes(), &at)?;
                Self::compile(plugin, envelope, &at)
            }
            None => Ok(Self {
                filter: F::new(plugin),
                routes: Routes::default(),
                enabled: false,
            }),
        }
    }

    fn stage_names(names: &mut Vec<&'static str>) {
        names.push(F::NAME);
    }

    fn log_loaded(&self, plugin: &Plugin) {
        if !self.enabled {
            return;
        }
        // One line per load, key=value; a config without any policy is worth a warning.
        let level = if self.routes.is_empty() {
            log::Level::Warn
        } else {
            log::Level::Info
        };
        log::log!(
            level,
            "{} config=loaded plugin={} root_id={} default={} routes={}",
            F::NAME,
            plugin.name,
            plugin.root_id,
            self.routes.has_default(),
            self.routes.route_names().collect::<Vec<_>>().join(",")
        );
    }

    fn bind(&self, route_name: &str, host: &mut impl Host) -> Option<F::Route> {
        self.routes
            .policy_for(route_name)
            .map(|policy| self.filter.bind(Rc::clone(policy), route_name, host))
    }

    fn on_request(
        &self,
        route: &F::Route,
        host: &mut impl RequestHost,
    ) -> (Verdict, Self::Request) {
        let (verdict, request) = self.filter.on_request(route, host);
        let step = Step::of(&verdict);
        (verdict, StageRequest { request, step })
    }

    fn waiting(request: &Self::Request) -> bool {
        request.step == Step::Waiting
    }

    fn on_call_done(
        &self,
        route: &F::Route,
        request: &mut Self::Request,
        outcome: CallOutcome,
        host: &mut impl RequestHost,
    ) -> Verdict {
        let verdict = self
            .filter
            .on_call_done(route, &mut request.request, outcome, host);
        request.step = Step::of(&verdict);
        verdict
    }

    fn on_response(
        &self,
        route: &F::Route,
        request: &mut Self::Request,
        host: &mut impl ResponseHost,
    ) {
        if request.step != Step::Replied {
            self.filter.on_response(route, &mut request.request, host);
        }
    }

    fn on_response_trailers(
        &self,
        route: &F::Route,
        request: &mut Self::Request,
        host: &mut impl TrailersHost,
    ) {
        if request.step != Step::Replied {
            self.filter
                .on_response_trailers(route, &mut request.request, host);
        }
    }

    fn on_done(&self, route: &F::Route, request: &mut Self::Request, host: &mut impl Host) {
        if request.step != Step::Replied {
            self.filter.on_done(route, &mut request.request, host);
        }
    }

    fn on_tick(&self, route: &F::Route, host: &mut impl Host) {
        self.filter.on_tick(route, host);
    }
}

/// A later phase of a pair `(A, B)` in reverse: `B`'s stages, then `A`'s, each only when it
/// saw the request (it has a request state).
macro_rules! in_reverse {
    ($pair:ident, $route:ident, $request:ident, $phase:ident($host:ident)) => {
        if let (Some(b), Some(state)) = (&$route.1, &mut $request.1) {
            $pair.1.$phase(b, state, $host);
        }
        if let (Some(a), Some(state)) = (&$route.0, &mut $request.0) {
            $pair.0.$phase(a, state, $host);
        }
    };
}

/// `A`'s stages, then `B`'s. A stage without a policy for the route is skipped.
impl<A: Stages, B: Stages> Stages for (A, B) {
    const NAME: &'static str = "bundle";
    const MAKES_CALLS: bool = A::MAKES_CALLS || B::MAKES_CALLS;
    type Route = (Option<A::Route>, Option<B::Route>);
    type Request = (Option<A::Request>, Option<B::Request>);

    fn load(plugin: &Plugin, configs: &mut StageConfigs) -> Result<Self, ConfigError> {
        Ok((A::load(plugin, configs)?, B::load(plugin, configs)?))
    }

    fn stage_names(names: &mut Vec<&'static str>) {
        A::stage_names(names);
        B::stage_names(names);
    }

    fn log_loaded(&self, plugin: &Plugin) {
        self.0.log_loaded(plugin);
        self.1.log_loaded(plugin);
    }

    fn bind(&self, route_name: &str, host: &mut impl Host) -> Option<Self::Route> {
        let a = self.0.bind(route_name, host);
        let b = self.1.bind(route_name, host);
        (a.is_some() || b.is_some()).then_some((a, b))
    }

    fn on_request(
        &self,
        route: &Self::Route,
        host: &mut impl RequestHost,
    ) -> (Verdict, Self::Request) {
        let mut request = (None, None);
        if let Some(a) = &route.0 {
            let (verdict, state) = self.0.on_request(a, host);
            request.0 = Some(state);
            if verdict != Verdict::Continue {
                return (verdict, request);
            }
        }
        let verdict = start_second(&self.1, &route.1, &mut request.1, host);
        (verdict, request)
    }

    fn waiting(request: &Self::Request) -> bool {
        request.0.as_ref().is_some_and(A::waiting) || request.1.as_ref().is_some_and(B::waiting)
    }

    fn on_call_done(
        &self,
        route: &Self::Route,
        request: &mut Self::Request,
        outcome: CallOutcome,
        host: &mut impl RequestHost,
    ) -> Verdict {
        if let (Some(a), Some(state)) = (&route.0, &mut request.0)
            && A::waiting(state)
        {
            let verdict = self.0.on_call_done(a, state, outcome, host);
            if verdict != Verdict::Continue {
                return verdict;
            }
            return start_second(&self.1, &route.1, &mut request.1, host);
        }
        match (&route.1, &mut request.1) {
            (Some(b), Some(state)) => self.1.on_call_done(b, state, outcome, host),
            _ => Verdict::Continue,
        }
    }

    fn on_response(
        &self,
        route: &Self::Route,
        request: &mut Self::Request,
        host: &mut impl ResponseHost,
    ) {
        in_reverse!(self, route, request, on_response(host));
    }

    fn on_response_trailers(
        &self,
        route: &Self::Route,
        request: &mut Self::Request,
        host: &mut impl TrailersHost,
    ) {
        in_reverse!(self, route, request, on_response_trailers(host));
    }

    fn on_done(&self, route: &Self::Route, request: &mut Self::Request, host: &mut impl Host) {
        in_reverse!(self, route, request, on_done(host));
    }

    fn on_tick(&self, route: &Self::Route, host: &mut impl Host) {
        if let Some(a) = &route.0 {
            self.0.on_tick(a, host);
        }
        if let Some(b) = &route.1 {
            self.1.on_tick(b, host);
        }
    }
}

/// Runs `B`'s stages once `A`'s let the request go on.
fn start_second<B: Stages>(
    second: &B,
    route: &Option<B::Route>,
    request: &mut Option<B::Request>,
    host: &mut impl RequestHost,
) -> Verdict {
    match route {
        Some(b) => {
            let (verdict, state) = second.on_request(b, host);
            *request = Some(state);
            verdict
        }
        None => Verdict::Continue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeHost;
    use crate::filter::{GrpcCall, LocalReply};
    use std::cell::RefCell;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    thread_local! {
        /// What the probes did, in order (each test runs on a thread of its own).
        static EVENTS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    fn note(event: String) {
        EVENTS.with(|events| events.borrow_mut().push(event));
    }

    fn events() -> Vec<String> {
        EVENTS.with(|events| events.take())
    }

    /// A filter that notes each hook it runs and answers with its configured verdict:
    /// `"continue"`, `"reply"`, or `"call"` (then continue once the call is done).
    struct Probe<const N: usize>;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ProbeConfig {
        verdict: String,
    }

    impl<const N: usize> Filter for Probe<N> {
        const NAME: &'static str = match N {
            0 => "first",
            1 => "second",
            2 => "third",
            _ => "caller",
        };
        /// `Probe<3>` says it makes calls (only its type is used).
        const MAKES_CALLS: bool = N == 3;
        type Config = ProbeConfig;
        type Policy = String;
        type Route = String;
        type Request = ();

        fn new(_plugin: &Plugin) -> Self {
            Self
        }

        fn compile(&self, config: ProbeConfig, at: &FieldPath) -> Result<String, ConfigError> {
            match config.verdict.as_str() {
                "continue" | "reply" | "call" => Ok(config.verdict),
                _ => Err(at.field("verdict").invalid("not a verdict")),
            }
        }

        fn bind(&self, policy: Rc<String>, route_name: &str, _host: &mut impl Host) -> String {
            note(format!("{}:bind:{route_name}", Self::NAME));
            policy.as_ref().clone()
        }

        fn on_request(&self, verdict: &String, _host: &mut impl RequestHost) -> (Verdict, ()) {
            note(format!("{}:request", Self::NAME));
            let verdict = match verdict.as_str() {
                "reply" => Verdict::Reply(LocalReply {
                    status: 429,
                    headers: Vec::new(),
                    body: Vec::new(),
                    grpc: None,
                }),
                "call" => Verdict::Call(GrpcCall {
                    cluster: "rls".to_owned(),
                    service: "s",
                    method: "m",
                    message: Vec::new(),
                    timeout_ms: 20,
                }),
                _ => Verdict::Continue,
            };
            (verdict, ())
        }

        fn on_call_done(
            &self,
            _route: &String,
            _request: &mut (),
            _outcome: CallOutcome,
            _host: &mut impl RequestHost,
        ) -> Verdict {
            note(format!("{}:call_done", Self::NAME));
            Verdict::Continue
        }

        fn on_response(&self, _route: &String, _request: &mut (), _host: &mut impl ResponseHost) {
            note(format!("{}:response", Self::NAME));
        }

        fn on_response_trailers(
            &self,
            _route: &String,
            _request: &mut (),
            _host: &mut impl TrailersHost,
        ) {
            note(format!("{}:trailers", Self::NAME));
        }

        fn on_done(&self, _route: &String, _request: &mut (), _host: &mut impl Host) {
            note(format!("{}:done", Self::NAME));
        }

        fn on_tick(&self, route: &String, _host: &mut impl Host) {
            note(format!("{}:tick:{route}", Self::NAME));
        }
    }

    type Three = (Stage<Probe<0>>, (Stage<Probe<1>>, Stage<Probe<2>>));

    fn configure(json: &str) -> Result<Three, ConfigError> {
        // Tests share one thread under wasm-bindgen-test: start from no events.
        events();
        Three::configure(&Plugin::default(), json.as_bytes())
    }

    fn chain(first: &str, second: &str, third: &str) -> Three {
        let stage = |verdict: &str| format!(r#"{{"default": {{"verdict": "{verdict}"}}}}"#);
        configure(&format!(
            r#"{{"first": {}, "second": {}, "third": {}}}"#,
            stage(first),
            stage(second),
            stage(third)
        ))
        .unwrap()
    }

    /// Request, response and done phases of one request through `chain` on route `r`.
    fn run(chain: &Three) -> Verdict {
        let mut host = FakeHost::new();
        let route = chain.bind("r", &mut host).unwrap();
        let (verdict, mut request) = chain.on_request(&route, &mut host);
        chain.on_response(&route, &mut request, &mut host);
        chain.on_done(&route, &mut request, &mut host);
        verdict
    }

    #[test]
    fn stages_run_in_order_and_answer_in_reverse() {
        let chain = chain("continue", "continue", "continue");
        assert_eq!(run(&chain), Verdict::Continue);
        assert_eq!(
            events(),
            [
                "first:bind:r",
                "second:bind:r",
                "third:bind:r",
                "first:request",
                "second:request",
                "third:request",
                "third:response",
                "second:response",
                "first:response",
                "third:done",
                "second:done",
                "first:done",
            ]
        );
    }

    #[test]
    fn a_local_reply_ends_the_request_phase_and_skips_its_own_response() {
        let chain = chain("continue", "reply", "continue");
        assert!(matches!(run(&chain), Verdict::Reply(reply) if reply.status == 429));
        let events = events();
        assert_eq!(
            events[3..],
            [
                "first:request",
                "second:request",
                "first:response",
                "first:done"
            ]
        );
    }

    #[test]
    fn a_call_holds_the_chain_and_the_stages_after_it_run_when_it_is_done() {
        let chain = chain("continue", "call", "continue");
        let mut host = FakeHost::new();
        let route = chain.bind("r", &mut host).unwrap();
        let (verdict, mut request) = chain.on_request(&route, &mut host);
        assert!(matches!(verdict, Verdict::Call(_)));
        assert!(Three::waiting(&request));
        assert_eq!(events()[3..], ["first:request", "second:request"]);

        let verdict = chain.on_call_done(&route, &mut request, CallOutcome::NotSent, &mut host);
        assert_eq!(verdict, Verdict::Continue);
        assert!(!Three::waiting(&request));
        chain.on_response(&route, &mut request, &mut host);
        assert_eq!(
            events(),
            [
                "second:call_done",
                "third:request",
                "third:response",
                "second:response",
                "first:response"
            ]
        );
    }

    #[test]
    fn trailers_go_in_reverse_to_the_stages_that_saw_the_request_but_a_replying_one() {
        let mut host = FakeHost::new();
        let mut request_then_trailers = |stages: Three| {
            let route = stages.bind("r", &mut host).unwrap();
            let (_, mut request) = stages.on_request(&route, &mut host);
            stages.on_response_trailers(&route, &mut request, &mut host);
        };
        request_then_trailers(chain("continue", "reply", "continue"));
        // The third never saw the request; the second answered it itself.
        assert_eq!(
            events()[3..],
            ["first:request", "second:request", "first:trailers"]
        );
        request_then_trailers(chain("continue", "continue", "continue"));
        assert_eq!(
            events()[6..],
            ["third:trailers", "second:trailers", "first:trailers"]
        );
    }

    #[test]
    fn the_tick_reaches_every_stage_with_a_policy_for_the_route() {
        let chain = configure(
            r#"{"first": {"default": {"verdict": "continue"}},
                "third": {"routes": {"r": {"verdict": "reply"}}}}"#,
        )
        .unwrap();
        let mut host = FakeHost::new();
        let route = chain.bind("r", &mut host).unwrap();
        events();
        chain.on_tick(&route, &mut host);
        assert_eq!(events(), ["first:tick:continue", "third:tick:reply"]);
    }

    #[test]
    fn a_chain_makes_calls_when_any_stage_does() {
        // Through a function: read at run time, so a wrong answer fails this test.
        fn makes_calls<S: Stages>() -> bool {
            S::MAKES_CALLS
        }
        assert!(!makes_calls::<(Stage<Probe<0>>, Stage<Probe<1>>)>());
        assert!(makes_calls::<(Stage<Probe<3>>, Stage<Probe<1>>)>());
        assert!(makes_calls::<(Stage<Probe<0>>, Stage<Probe<3>>)>());
    }

    #[test]
    fn a_missing_key_disables_its_stage_and_a_route_without_policies_binds_nothing() {
        let chain = configure(r#"{"second": {"routes": {"r": {"verdict": "continue"}}}}"#).unwrap();
        assert_eq!(run(&chain), Verdict::Continue);
        assert_eq!(
            events(),
            [
                "second:bind:r",
                "second:request",
                "second:response",
                "second:done"
            ]
        );
        assert!(chain.bind("other", &mut FakeHost::new()).is_none());
        assert!(
            configure("")
                .unwrap()
                .bind("r", &mut FakeHost::new())
                .is_none()
        );
    }

    #[test]
    fn errors_name_the_stage_route_and_field() {
        let error = |json: &str| configure(json).err().unwrap().to_string();
        assert_eq!(
            error(r#"{"second": {"routes": {"shop": {"verdict": "maybe"}}}}"#),
            r#"second.routes["shop"].verdict: not a verdict"#
        );
        assert_eq!(
            error(r#"{"third": {"default": {"verdict": "continue", "extra": 1}}}"#),
            "third.default.extra: unknown field `extra`, expected `verdict`"
        );
        assert_eq!(
            error(r#"{"fourth": {}}"#),
            "fourth: unknown stage, expected one of first, second, third"
        );
        assert_eq!(
            error(r#"{"first": {}, "first": {}}"#),
            r#"(config): key "first" written twice"#
        );
        assert_eq!(
            error(r#"{"second": {"routes": {"a": {"verdict": "call"}, "a": {}}}}"#),
            r#"second.routes: key "a" written twice"#
        );
        assert_eq!(
            error("[1]"),
            "(config): invalid type: sequence, expected an object"
        );
        assert!(error("{").starts_with("(config): EOF while parsing"));
    }

    #[test]
    fn a_stage_alone_takes_its_envelope_as_the_whole_plugin_json() {
        let stage = Stage::<Probe<0>>::configure(
            &Plugin::default(),
            br#"{"default": {"verdict": "call"}}"#,
        )
        .unwrap();
        assert!(stage.routes().has_default());
        let error = Stage::<Probe<0>>::configure(&Plugin::default(), br#"{"first": {}}"#)
            .err()
            .unwrap();
        assert_eq!(
            error.to_string(),
            "first: unknown field `first`, expected `default` or `routes`"
        );
    }
}
