//! The only code that talks to the proxy-wasm SDK.
//!
//! [`export_filter!`] turns a [`Filter`] into a proxy-wasm module and [`export_stages!`] a
//! chain of them (the bundle, `filters/bundle`): a root context that compiles the plugin JSON
//! once in `on_configure` (refusing the config on error) into a [`Vm`], and an HTTP context
//! per request that hands each phase to the [`Vm`] over [`host::Proxy`] (the host calls) and
//! turns its [`Verdict`] into proxy-wasm actions. What a request costs in host calls is
//! decided in `mesh_policy::vm`, where tests count it; this crate adds the calls out.
//!
//! Invariants kept here:
//! - `on_configure` returns false on any config error, so Envoy refuses the config.
//! - Host calls never unwrap: a failed host call degrades to "absent" and is logged.
//! - A held request is released by its call's deadline even when Envoy's own timeout does not
//!   fire (Kuadrant wasm-shim#425: calls queued for a cluster without healthy endpoints): the
//!   root context ticks while calls are out and ends an overdue one as deadline exceeded.
//! - The root context ticks at least once a second ([`STATS_FLUSH`]) to hand the VM's
//!   counters to Envoy, and hands them over when Envoy deletes it.
//! - A stream's end is its context's deletion (`proxy_on_delete`, after Envoy's log phase):
//!   the done phase runs there, so modules export no `proxy_on_log`.
//! - No body, trailer, log or TCP callbacks: `scripts/build.sh` removes their exports, so
//!   Envoy does not enter the VM for them. Handle one here and take it off `DROP_EXPORTS`
//!   there.

#[cfg(any(test, target_arch = "wasm32"))]
mod alloc;
mod host;

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::time::Duration;

use mesh_policy::chain::Stages;
use mesh_policy::filter::{CallOutcome, Plugin, Verdict};
use mesh_policy::host::{Host, NANOS_PER_MS, Nanos};
use mesh_policy::vm::{Stream, Vm};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel};

pub use host::{Proxy, RequestPhase};
pub use proxy_wasm;

/// Exports the filter `$filter` as this module's proxy-wasm entry point.
#[macro_export]
macro_rules! export_filter {
    ($filter:ty) => {
        $crate::export_stages!($crate::Stage<$filter>);
    };
}

/// Exports `$stages` (a [`Stages`]: a [`Stage`] or a chain of them) as this module's
/// proxy-wasm entry point.
#[macro_export]
macro_rules! export_stages {
    ($stages:ty) => {
        $crate::proxy_wasm::main! {{
            $crate::start::<$stages>();
        }}
    };
}

pub use mesh_policy::chain::Stage;
#[doc(no_inline)]
pub use mesh_policy::filter::Filter;

/// Installs the root context for `S`. Called from the module's entry point.
pub fn start<S: Stages + 'static>() {
    // Info until on_configure asks Envoy for its level (this also installs the panic hook).
    // Below the level a `log::debug!` line costs one comparison, no formatting.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root::<S> { state: None }));
}

/// How often the root context looks for overdue calls while any is out.
const TICK: Duration = Duration::from_millis(5);
/// Envoy's timeout for a call is ours plus this: the tick ends it first, Envoy's timer is the
/// backstop should ticks stop.
const ENVOY_GRACE_MS: u32 = 1000;
/// How often counters reach Envoy unless `MESH_STATS_FLUSH_MS` says otherwise.
const STATS_FLUSH: Duration = Duration::from_secs(1);
/// The shortest flush period the variable may ask for.
const MIN_STATS_FLUSH: Duration = Duration::from_millis(10);

/// Everything a VM keeps between requests, shared by its HTTP contexts.
struct State<S: Stages> {
    vm: Vm<S>,
    rng: RefCell<fastrand::Rng>,
    /// The calls out, with their deadlines (a handful: one per held request of this VM).
    calls: RefCell<Vec<OutCall<S>>>,
    /// How often counters reach Envoy, and when they last did.
    flush_every: Duration,
    flushed_at: Cell<Nanos>,
}

struct OutCall<S: Stages> {
    context_id: u32,
    token: u32,
    deadline: Nanos,
    /// The request's state; gone when its context was deleted.
    core: Weak<RefCell<Core<S>>>,
}

impl<S: Stages> State<S> {
    /// The tick period: short while calls are out (their deadlines), else the flush period.
    fn tick_period(&self) -> Duration {
        let calls_out = self.calls.try_borrow().is_ok_and(|calls| !calls.is_empty());
        if calls_out { TICK } else { self.flush_every }
    }
}

struct Root<S: Stages> {
    state: Option<Rc<State<S>>>,
}

impl<S: Stages> Context for Root<S> {}

impl<S: Stages> Drop for Root<S> {
    /// The VM is going away (Envoy deletes the root context when it drains the plugin): the
    /// counts of the last tick period go to Envoy now.
    fn drop(&mut self) {
        if let Some(state) = &self.state {
            state.vm.flush(&mut Proxy::root(&state.rng));
        }
    }
}

impl<S: Stages + 'static> RootContext for Root<S> {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        // Per-request lines are at debug: they print when Envoy logs wasm at debug.
        host::follow_envoy_log_level();
        let rng = RefCell::new(fastrand::Rng::with_seed(0));
        let probe = Proxy::root(&rng);
        rng.replace(fastrand::Rng::with_seed(random_seed(&probe)));
        let plugin = Plugin {
            name: probe.property_text(&["plugin_name"]),
            root_id: probe.property_text(&["plugin_root_id"]),
        };
        let json = proxy_wasm::hostcalls::get_buffer(
            BufferType::PluginConfiguration,
            0,
            plugin_configuration_size,
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        let stages = match S::configure(&plugin, &json) {
            Ok(stages) => stages,
            Err(err) => {
                // `error=` runs to the end of the line (it quotes route names).
                log::error!(
                    "{} config=rejected plugin={} error={err}",
                    S::NAME,
                    plugin.name
                );
                return false;
            }
        };
        stages.log_loaded(&plugin);
        let flushed_at = Cell::new(probe.now());
        let state = Rc::new(State {
            vm: Vm::new(stages),
            rng,
            calls: RefCell::new(Vec::new()),
            flush_every: stats_flush_period(),
            flushed_at,
        });
        let _ = proxy_wasm::hostcalls::set_tick_period(state.tick_period());
        // A configuration pushed again replaces the VM's state: hand over the old counts.
        if let Some(old) = self.state.replace(state) {
            old.vm.flush(&mut Proxy::root(&old.rng));
        }
        true
    }

    fn on_tick(&mut self) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let now = Proxy::root(&state.rng).now();
        if S::MAKES_CALLS {
            end_overdue_calls(&state, now);
        }
        let flush_every = u64::try_from(state.flush_every.as_nanos()).unwrap_or(u64::MAX);
        if now.saturating_sub(state.flushed_at.get()) >= flush_every / 8 * 7 {
            state.flushed_at.set(now);
            state.vm.on_tick(&mut Proxy::root(&state.rng));
            host::follow_envoy_log_level();
        }
        if S::MAKES_CALLS {
            let _ = proxy_wasm::hostcalls::set_tick_period(state.tick_period());
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Returning None makes the SDK panic: an unconfigured VM passes requests through.
        Some(Box::new(Http::<S> {
            state: self.state.clone(),
            context_id,
            core: Rc::new(RefCell::new(Core {
                stream: None,
                call: None,
            })),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The period `MESH_STATS_FLUSH_MS` asks for (the plugin's VM environment: Envoy's
/// `vm_config.environment_variables`, Istio's `vmConfig.env`), else [`STATS_FLUSH`].
fn stats_flush_period() -> Duration {
    std::env::var("MESH_STATS_FLUSH_MS")
        .ok()
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .map_or(STATS_FLUSH, |ms| {
            Duration::from_millis(ms).clamp(MIN_STATS_FLUSH, STATS_FLUSH)
        })
}

/// Ends the calls past their deadline as Envoy would on its own timer: deadline exceeded.
fn end_overdue_calls<S: Stages>(state: &State<S>, now: Nanos) {
    let overdue: Vec<OutCall<S>> = match state.calls.try_borrow_mut() {
        Ok(mut calls) => {
            let (overdue, waiting) = calls.drain(..).partition(|c| c.deadline <= now);
            *calls = waiting;
            overdue
        }
        Err(_) => return,
    };
    for call in overdue {
        let Some(core) = call.core.upgrade() else {
            continue;
        };
        if core
            .try_borrow()
            .map_or(true, |c| c.call != Some(call.token))
        {
            continue;
        }
        let _ = proxy_wasm::hostcalls::cancel_grpc_call(call.token);
        if proxy_wasm::hostcalls::set_effective_context(call.context_id).is_err() {
            continue;
        }
        let mut host = Proxy::request(&state.rng);
        // 4: deadline exceeded, as Envoy would say it were its timer the one that fired.
        let outcome = CallOutcome::Failed { grpc_status: 4 };
        call_done(
            state,
            &core,
            call.context_id,
            call.token,
            outcome,
            &mut host,
        );
    }
}

struct Http<S: Stages> {
    state: Option<Rc<State<S>>>,
    context_id: u32,
    /// Shared with the root context's list of calls out (weakly), which may end a call.
    core: Rc<RefCell<Core<S>>>,
}

/// One request's state.
struct Core<S: Stages> {
    stream: Option<Stream<S>>,
    /// The token of the gRPC call the request is held for.
    call: Option<u32>,
}

impl<S: Stages> Context for Http<S> {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if !S::MAKES_CALLS {
            return;
        }
        let Some(state) = self.state.clone() else {
            return;
        };
        if self
            .core
            .try_borrow()
            .map_or(true, |c| c.call != Some(token_id))
        {
            return;
        }
        let outcome = if status_code == 0 {
            let message =
                proxy_wasm::hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, response_size)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
            CallOutcome::Ok(message)
        } else {
            CallOutcome::Failed {
                grpc_status: status_code,
            }
        };
        let mut host = Proxy::request(&state.rng);
        call_done(
            &state,
            &self.core,
            self.context_id,
            token_id,
            outcome,
            &mut host,
        );
    }
}

impl<S: Stages> Drop for Http<S> {
    /// Envoy deletes the context when the stream is over (after its log phase): every stage
    /// that saw the request counts its end here, so the module needs no `proxy_on_log` and
    /// Envoy enters it once less per request.
    fn drop(&mut self) {
        let Some(state) = &self.state else {
            return;
        };
        let Ok(mut core) = self.core.try_borrow_mut() else {
            return;
        };
        // A stream that ended while its call was out: forget the call.
        if let Some(token) = core.call.take()
            && let Ok(mut calls) = state.calls.try_borrow_mut()
        {
            calls.retain(|c| c.token != token);
        }
        if let Some(stream) = core.stream.take() {
            state.vm.on_done(stream, &mut Proxy::done(&state.rng));
        }
    }
}

/// Hands a call's outcome to the filter and carries out its verdict; a request let go is
/// resumed.
fn call_done<S: Stages>(
    state: &State<S>,
    shared: &Rc<RefCell<Core<S>>>,
    context_id: u32,
    token: u32,
    outcome: CallOutcome,
    host: &mut Proxy<'_, RequestPhase>,
) {
    if let Ok(mut calls) = state.calls.try_borrow_mut() {
        calls.retain(|c| c.token != token);
    }
    let Ok(mut core) = shared.try_borrow_mut() else {
        return;
    };
    core.call = None;
    let verdict = match core.stream.as_mut() {
        Some(stream) => state.vm.on_call_done(stream, outcome, host),
        None => Verdict::Continue,
    };
    let weak = Rc::downgrade(shared);
    if let Settled::Continue = settle(state, &mut core, &weak, context_id, verdict, host)
        && let Err(status) = proxy_wasm::hostcalls::resume_http_request()
    {
        log::warn!(
            "{}: resume_http_request failed: status {}",
            S::NAME,
            status as u32
        );
    }
}

/// Where a verdict leaves the request.
enum Settled {
    /// Let it go on (upstream-ward).
    Continue,
    /// Held: answered locally, or waiting for a call.
    Held,
}

/// Carries out a verdict: a local reply is sent, a call is dispatched and its deadline noted
/// (a call Envoy refuses goes straight back to the filter as [`CallOutcome::NotSent`]).
fn settle<S: Stages>(
    state: &State<S>,
    core: &mut Core<S>,
    weak: &Weak<RefCell<Core<S>>>,
    context_id: u32,
    mut verdict: Verdict,
    host: &mut Proxy<'_, RequestPhase>,
) -> Settled {
    loop {
        match verdict {
            Verdict::Continue => return Settled::Continue,
            Verdict::Reply(reply) => {
                host.send_reply(&reply);
                return Settled::Held;
            }
            Verdict::Call(call) => {
                let token = if S::MAKES_CALLS {
                    host.dispatch_grpc(&call, call.timeout_ms.saturating_add(ENVOY_GRACE_MS))
                } else {
                    None
                };
                let Some(token) = token else {
                    verdict = match core.stream.as_mut() {
                        Some(stream) => state.vm.on_call_done(stream, CallOutcome::NotSent, host),
                        None => Verdict::Continue,
                    };
                    continue;
                };
                let deadline = host
                    .now()
                    .saturating_add(u64::from(call.timeout_ms) * NANOS_PER_MS);
                core.call = Some(token);
                if let Ok(mut calls) = state.calls.try_borrow_mut() {
                    if calls.is_empty() {
                        let _ = proxy_wasm::hostcalls::set_tick_period(TICK);
                    }
                    calls.push(OutCall {
                        context_id,
                        token,
                        deadline,
                        core: weak.clone(),
                    });
                }
                return Settled::Held;
            }
        }
    }
}

impl<S: Stages> HttpContext for Http<S> {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(state) = self.state.clone() else {
            return Action::Continue;
        };
        let mut host = Proxy::request(&state.rng);
        let Some((verdict, stream)) = state.vm.on_request(&mut host, !end_of_stream) else {
            return Action::Continue;
        };
        let weak = Rc::downgrade(&self.core);
        let Ok(mut core) = self.core.try_borrow_mut() else {
            return Action::Continue;
        };
        core.stream = Some(stream);
        match settle(
            &state,
            &mut core,
            &weak,
            self.context_id,
            verdict,
            &mut host,
        ) {
            Settled::Continue => Action::Continue,
            Settled::Held => Action::Pause,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (Some(state), Ok(mut core)) = (&self.state, self.core.try_borrow_mut()) else {
            return Action::Continue;
        };
        if let Some(stream) = core.stream.as_mut() {
            state
                .vm
                .on_response(stream, &mut Proxy::response(&state.rng));
        }
        Action::Continue
    }

    /// Only for a response with trailers: a gRPC call's `grpc-status` is there.
    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        let (Some(state), Ok(mut core)) = (&self.state, self.core.try_borrow_mut()) else {
            return Action::Continue;
        };
        if let Some(stream) = core.stream.as_mut() {
            state
                .vm
                .on_response_trailers(stream, &mut Proxy::trailers(&state.rng));
        }
        Action::Continue
    }
}

/// A seed from WASI `random_get`; the host clock if that fails (never a panic).
fn random_seed(clock: &impl Host) -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_ok() {
        return u64::from_le_bytes(bytes);
    }
    log::warn!("random_get failed: seeding from the clock");
    clock.now()
}
