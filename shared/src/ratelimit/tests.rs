// On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
use super::*;
use crate::config::{Envelope, FieldPath, parse_json};
use crate::fake::{FakeHost, WriteRace};
use crate::host::{NANOS_PER_MS, NANOS_PER_SEC};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// The shared-data key of one slot, as `RouteLimits` writes it.
fn slot_key(key_prefix: &str, route_name: &str, limit_index: usize, slot: u32) -> String {
    format!("{}{slot}", key_base(key_prefix, route_name, limit_index))
}

const PREFIX: &str = "mesh.ratelimit/mesh.ratelimit";

fn policy(json: &str) -> Rc<RateLimitPolicy> {
    let config: RateLimitConfig = parse_json(json.as_bytes()).unwrap();
    Rc::new(RateLimitPolicy::compile(config, &FieldPath::root()).unwrap())
}

fn bind(json: &str, host: &mut impl Host) -> RouteLimits {
    policy(json).bind(PREFIX, "limited", &EnvoySecret::new(PREFIX), host)
}

/// Compiles plugin JSON (`default` and `routes`): `Ok` or the error's text.
fn compile(json: &str) -> Result<(), String> {
    let envelope = Envelope::<RateLimitConfig>::from_json(json.as_bytes());
    envelope
        .and_then(|e| e.compile(&FieldPath::root(), RateLimitPolicy::compile))
        .map(|_| ())
        .map_err(|err| err.to_string())
}

fn compile_err(json: &str) -> String {
    match compile(json) {
        Ok(_) => panic!("{json} should be rejected"),
        Err(err) => err,
    }
}

/// `n` requests at the host's current time; how many each decision got.
fn send(route: &RouteLimits, host: &mut FakeHost, n: usize) -> (usize, usize) {
    let mut allowed = 0;
    let mut rejected = 0;
    for _ in 0..n {
        match route.check(host).decision {
            Decision::Allowed => allowed += 1,
            Decision::Rejected | Decision::DryRunRejected => rejected += 1,
            Decision::Unlimited => {}
            Decision::Unavailable => panic!("a local check never asks the service"),
        }
    }
    (allowed, rejected)
}

fn with_key(host: &mut FakeHost, key: &str) {
    host.set_request_header("x-api-key", key.as_bytes());
}

const PER_KEY: &str =
    r#"{"limits": [{"rate_per_s": 5, "burst": 10, "key": {"header": "x-api-key"}}]}"#;

#[test]
fn defaults() {
    let p = policy(r#"{"limits": [{"rate_per_s": 100, "burst": 50}]}"#);
    assert_eq!(p.limits.len(), 1);
    assert_eq!(p.limits[0].key, key::Key::Route);
    assert_eq!(p.limits[0].slots, 1);
    assert_eq!(p.limits[0].rate.burst(), 50);
    assert_eq!(
        p.limits[0].rate.period(),
        std::time::Duration::from_millis(10)
    );
    assert!(!p.dry_run);
    assert_eq!(p.status, 429);
    assert_eq!(p.body, br#"{"error":"rate_limited"}"#);
    assert_eq!(p.content_type, "application/json");
    assert!(p.rate_limit_headers);
    assert!(!p.failure_mode_deny);
    let p = policy(PER_KEY);
    assert_eq!(p.limits[0].slots, DEFAULT_SLOTS);
    assert!(matches!(
        &p.limits[0].key,
        key::Key::Header { name, missing: key::Missing::Share, repeated: key::Repeated::Reject }
            if name.as_str() == "x-api-key"
    ));
    let p = policy(r#"{"limits": [{"rate_per_s": 0.5, "burst": 1, "key": "path", "slots": 7}]}"#);
    assert_eq!(p.limits[0].rate.period(), std::time::Duration::from_secs(2));
    assert_eq!(p.limits[0].slots, 7);
    for (rate, period_ns) in [
        ("0.001", 1_000_000_000_000),
        ("2.250", 444_444_444),
        ("3", 333_333_333),
        ("1000000", 1000),
        // Any JSON spelling of the same number (Istio writes doubles).
        ("3e0", 333_333_333),
        ("0.25e1", 400_000_000),
    ] {
        let p = policy(&format!(
            r#"{{"limits": [{{"rate_per_s": {rate}, "burst": 1}}]}}"#
        ));
        assert_eq!(p.limits[0].rate.period().as_nanos(), period_ns, "{rate}");
    }
}

#[test]
fn config_errors_name_route_and_field() {
    let cases = [
        (
            r#"{"routes": {"checkout": {"slot_secret": "short-secret", "limits": [{"rate_per_s": 1, "burst": 1}]}}}"#,
            r#"routes["checkout"].slot_secret: must be at least 16 characters long"#,
        ),
        (
            r#"{"routes": {"checkout": {"limits": [{"rate_per_s": 1, "burst": 0}]}}}"#,
            r#"routes["checkout"].limits[0].burst: must be at least 1"#,
        ),
        (
            r#"{"routes": {"checkout": {"limits": [{"rate_per_s": 1, "burst": 1}, {"rate_per_s": 0, "burst": 1}]}}}"#,
            r#"routes["checkout"].limits[1].rate_per_s: must be between 0.001 and 1000000"#,
        ),
        (
            r#"{"default": {"limits": [{"rate_per_s": 1, "burst": 2000000}]}}"#,
            "default.limits[0].burst: must be at most 1000000",
        ),
        (
            r#"{"default": {"limits": []}}"#,
            "default.limits: must list at least one limit",
        ),
        (r#"{"default": {}}"#, "default: missing field `limits`"),
        (
            r#"{"default": {"limits": [{"rate_per_s": 1, "burst": 1, "slots": 8}]}}"#,
            "default.limits[0].slots: a route-wide limit (no key) has one bucket; slots apply to keyed limits",
        ),
        (
            r#"{"default": {"limits": [{"rate_per_s": 1, "burst": 1, "key": "path", "slots": 0}]}}"#,
            "default.limits[0].slots: must be at least 1",
        ),
        (
            r#"{"default": {"limits": [{"rate_per_s": 1, "burst": 1, "key": "path", "slots": 65537}]}}"#,
            "default.limits[0].slots: must be at most 65536",
        ),
        (
            r#"{"default": {"limits": [{"rate_per_s": 1, "burst": 1, "key": "ip"}]}}"#,
            "default.limits[0].key: unknown variant `ip`, expected one of `route`, `client_address`, `path`",
        ),
        (
            r#"{"default": {"limits": [{"rate_per_s": 1, "burst": 1, "key": {"header": "x key"}}]}}"#,
            r#"default.limits[0].key.header: header name "x key" has character ' ', which HTTP does not allow in a name"#,
        ),
        (
            r#"{"default": {"limits": [{"rate_per_s": 1, "burst": 1, "key": {"header": "x", "when_missing": "deny"}}]}}"#,
            "default.limits[0].key.when_missing: unknown variant `deny`, expected `share` or `skip`",
        ),
        (
            r#"{"default": {"limits": [{"rate_per_s": 1, "burst": 1, "key": {"heder": "x"}}]}}"#,
            "default.limits[0].key.heder: unknown field `heder`, expected one of `header`, `when_missing`, `when_repeated`",
        ),
        (
            r#"{"default": {"limits": [{"rate_per_s": 1, "burst": 1, "key": 3}]}}"#,
            r#"default.limits[0].key: invalid type: integer `3`, expected "route", "client_address", "path" or {"header": "<name>"}"#,
        ),
        (
            r#"{"default": {"limits": [{"rate_per_s": 1, "burst": 1}], "status": 200}}"#,
            "default.status: must be a 4xx or 5xx status (default 429)",
        ),
        (
            r#"{"default": {"limits": [{"rate_per_s": 1, "burst": 1}], "content_type": "a\nb"}}"#,
            "default.content_type: must be a non-empty header value of printable ASCII",
        ),
        (
            r#"{"default": {"limits": [{"rate_per_s": 1, "burst": 1, "brust": 2}]}}"#,
            "default.limits[0].brust: unknown field `brust`, expected one of `scope`, `rate_per_s`, `burst`, `key`, `slots`, `descriptor_key`",
        ),
        (
            r#"{"default": {"limits": [{"rate_per_s": 0.0005, "burst": 1}]}}"#,
            "default.limits[0].rate_per_s: invalid value: floating point `0.0005`, expected a number with at most 3 decimals, like 100 or 0.5",
        ),
        (
            r#"{"default": {"limits": [{"rate_per_s": -1, "burst": 1}]}}"#,
            "default.limits[0].rate_per_s: invalid value: floating point `-1.0`, expected a number with at most 3 decimals, like 100 or 0.5",
        ),
        (
            r#"{"default": {"limits": [{"rate_per_s": 1000000.001, "burst": 1}]}}"#,
            "default.limits[0].rate_per_s: must be between 0.001 and 1000000",
        ),
        (
            r#"{"default": {"limits": [{"rate_per_s": "5", "burst": 1}]}}"#,
            r#"default.limits[0].rate_per_s: invalid type: string "5", expected a number with at most 3 decimals, like 100 or 0.5"#,
        ),
    ];
    for (json, expected) in cases {
        assert_eq!(compile_err(json), expected, "{json}");
    }
    let nine = [r#"{"rate_per_s": 1, "burst": 1}"#; 9].join(",");
    assert_eq!(
        compile_err(&format!(r#"{{"default": {{"limits": [{nine}]}}}}"#)),
        "default.limits: at most 8 limits per route"
    );
}

#[test]
fn the_burst_passes_then_requests_are_rejected_with_retry_after() {
    let mut host = FakeHost::new();
    let route = bind(r#"{"limits": [{"rate_per_s": 5, "burst": 10}]}"#, &mut host);
    let first = route.check(&mut host);
    assert_eq!(first.decision, Decision::Allowed);
    assert_eq!(
        first.budget,
        Some(Budget {
            limit: 10,
            remaining: 9,
            reset_s: 1
        })
    );
    assert_eq!(send(&route, &mut host, 29), (9, 20));
    host.advance_ms(50);
    let rejected = route.check(&mut host);
    assert_eq!(rejected.decision, Decision::Rejected);
    // The next token is due 200 ms after the start; 150 ms left: 1 s rounded up.
    assert_eq!(rejected.retry_after_s, 1);
    assert_eq!(
        rejected.budget,
        Some(Budget {
            limit: 10,
            remaining: 0,
            reset_s: 2
        })
    );
    assert_eq!(rejected.store_error, None);
}

#[test]
fn tokens_come_back_at_the_rate_and_never_beyond_the_burst() {
    let mut host = FakeHost::new();
    let route = bind(
        r#"{"limits": [{"rate_per_s": 100, "burst": 50}]}"#,
        &mut host,
    );
    assert_eq!(send(&route, &mut host, 200), (50, 150));
    host.advance_ms(100);
    assert_eq!(send(&route, &mut host, 200).0, 10);
    host.advance_ms(60_000);
    assert_eq!(send(&route, &mut host, 200).0, 50);
}

#[test]
fn slow_rates_give_a_long_retry_after() {
    let mut host = FakeHost::new();
    let route = bind(
        r#"{"limits": [{"rate_per_s": 0.1, "burst": 1}]}"#,
        &mut host,
    );
    assert_eq!(route.check(&mut host).decision, Decision::Allowed);
    host.advance_ms(300);
    let check = route.check(&mut host);
    assert_eq!(check.decision, Decision::Rejected);
    assert_eq!(check.retry_after_s, 10);
    host.advance_ms(9_700);
    assert_eq!(route.check(&mut host).decision, Decision::Allowed);
}

#[test]
fn every_vm_shares_one_bucket() {
    // Two VMs: each binds the route itself and keeps nothing but what shared data holds.
    let mut host = FakeHost::new();
    let vm1 = bind(PER_KEY, &mut host);
    with_key(&mut host, "alice");
    assert_eq!(send(&vm1, &mut host, 6), (6, 0));
    host.advance_ms(1);
    let vm2 = bind(PER_KEY, &mut host);
    assert_eq!(
        send(&vm2, &mut host, 6),
        (4, 2),
        "vm2 binding did not refill"
    );
    assert_eq!(send(&vm1, &mut host, 6), (0, 6));
}

#[test]
fn keys_are_independent() {
    let mut host = FakeHost::new();
    let route = bind(PER_KEY, &mut host);
    let (alice, bob) = (
        KeyValue::Value(std::borrow::Cow::Borrowed(b"alice")),
        KeyValue::Value(std::borrow::Cow::Borrowed(b"bob")),
    );
    let salt = key::salt("limited", 0);
    let secret = route.placement.secret();
    assert_ne!(
        key::slot(secret, salt, &alice, DEFAULT_SLOTS),
        key::slot(secret, salt, &bob, DEFAULT_SLOTS)
    );
    with_key(&mut host, "alice");
    assert_eq!(send(&route, &mut host, 30), (10, 20));
    with_key(&mut host, "bob");
    assert_eq!(send(&route, &mut host, 30), (10, 20));
}

#[test]
fn a_key_header_on_several_lines_is_rejected_or_keyed_on_the_lines_joined() {
    let key_lines = |first: &str, second: &str| {
        FakeHost::new()
            .with_request_header("x-api-key", first)
            .with_request_header("x-api-key", second)
    };
    // The default: rejected, in either order, and no token taken from any bucket.
    for (first, second) in [("fresh", "exhausted"), ("exhausted", "fresh")] {
        let mut host = key_lines(first, second);
        let route = bind(PER_KEY, &mut host);
        let before = host.calls();
        let check = route.check(&mut host);
        assert_eq!(check.decision, Decision::Rejected);
        assert_eq!((check.budget, check.retry_after_s), (None, 1));
        let after = host.calls();
        assert_eq!(
            after.shared_gets + after.shared_sets,
            before.shared_gets + before.shared_sets
        );
        // A global limit keyed on the header refuses it too.
        let route = bind(
            r#"{"limits": [{"scope": "global", "key": {"header": "x-api-key"}}], "service_cluster": "rls", "domain": "d"}"#,
            &mut host,
        );
        assert_eq!(route.check(&mut host).decision, Decision::Rejected);
        assert_eq!(route.global_call(Decision::Rejected, &host), None);
    }
    // `join`: the key is what an upstream combining the lines reads, in the order sent.
    const JOIN: &str = r#"{"limits": [{"rate_per_s": 5, "burst": 10, "key": {"header": "x-api-key", "when_repeated": "join"}}]}"#;
    let mut host = FakeHost::new();
    let route = bind(JOIN, &mut host);
    with_key(&mut host, "exhausted,fresh");
    assert_eq!(send(&route, &mut host, 10), (10, 0));
    let lines = |first: &str, second: &str| {
        let mut vm = host.another_vm();
        vm.request_headers = key_lines(first, second).request_headers;
        vm
    };
    assert_eq!(send(&route, &mut lines("exhausted", "fresh"), 1), (0, 1));
    assert_eq!(send(&route, &mut lines("fresh", "exhausted"), 10), (10, 0));
}

#[test]
fn a_configured_slot_secret_places_keys_the_same_in_every_envoy() {
    const CONFIGURED: &str = r#"{"slot_secret": "the same in every replica", "limits": [{"rate_per_s": 5, "burst": 10, "key": {"header": "x-api-key"}}]}"#;
    let mut one = FakeHost::new();
    one.script_random(&[1, 2]);
    let mut other = FakeHost::new();
    other.script_random(&[3, 4]);
    let (a, b) = (bind(CONFIGURED, &mut one), bind(CONFIGURED, &mut other));
    assert_eq!(a.placement.secret(), b.placement.secret());
    // Nothing drawn or stored for it.
    assert_eq!(one.shared_keys(), 0);
    let (a, b) = (bind(PER_KEY, &mut one), bind(PER_KEY, &mut other));
    assert_ne!(a.placement.secret(), b.placement.secret());
}

#[test]
fn colliding_keys_share_a_bucket_and_gain_nothing() {
    let mut host = FakeHost::new();
    let route = bind(
        r#"{"limits": [{"rate_per_s": 5, "burst": 10, "key": {"header": "x-api-key"}, "slots": 1}]}"#,
        &mut host,
    );
    with_key(&mut host, "alice");
    assert_eq!(send(&route, &mut host, 4), (4, 0));
    // Every other key lands in alice's slot: together they get what is left of one bucket.
    for i in 0..100 {
        with_key(&mut host, &format!("newcomer-{i}"));
        send(&route, &mut host, 1);
    }
    with_key(&mut host, "alice");
    assert_eq!(send(&route, &mut host, 10), (0, 10));
}

#[test]
fn memory_is_bounded_by_slots_however_many_keys_arrive() {
    let mut host = FakeHost::new();
    let route = bind(
        r#"{"limits": [
            {"rate_per_s": 5, "burst": 10, "key": {"header": "x-api-key"}, "slots": 64},
            {"rate_per_s": 5, "burst": 10, "key": "path", "slots": 16},
            {"rate_per_s": 1000, "burst": 1000}
        ]}"#,
        &mut host,
    );
    // Binding writes the Envoy's slot secret; slot records come with their first key.
    assert_eq!(host.shared_keys(), 1);
    for i in 0..10_000 {
        with_key(&mut host, &format!("client-{i}"));
        host.set_request_header(":path", format!("/limited/{i}").as_bytes());
        route.check(&mut host);
        assert!(host.shared_keys() <= 1 + 64 + 16 + 1);
    }
    assert_eq!(host.shared_keys(), 1 + 64 + 16 + 1);
    assert!(
        host.shared_get(&slot_key(PREFIX, "limited", 2, 0))
            .is_some()
    );
}

#[test]
fn binding_again_keeps_the_state_of_existing_slots() {
    let mut host = FakeHost::new();
    let route = bind(r#"{"limits": [{"rate_per_s": 1, "burst": 3}]}"#, &mut host);
    assert_eq!(send(&route, &mut host, 3), (3, 0));
    let again = bind(r#"{"limits": [{"rate_per_s": 1, "burst": 3}]}"#, &mut host);
    assert_eq!(send(&again, &mut host, 3), (0, 3));
}

#[test]
fn a_request_rejected_by_one_limit_takes_no_token_from_the_others() {
    let mut host = FakeHost::new();
    let route = bind(
        r#"{"limits": [
            {"rate_per_s": 1, "burst": 20},
            {"rate_per_s": 1, "burst": 2, "key": {"header": "x-api-key"}}
        ]}"#,
        &mut host,
    );
    with_key(&mut host, "noisy");
    assert_eq!(send(&route, &mut host, 50), (2, 48));
    // The route-wide bucket lost only the two admitted requests.
    for i in 0..18 {
        with_key(&mut host, &format!("quiet-{i}"));
        assert_eq!(route.check(&mut host).decision, Decision::Allowed, "{i}");
    }
    with_key(&mut host, "one-more");
    let check = route.check(&mut host);
    assert_eq!(check.decision, Decision::Rejected);
    assert_eq!(check.budget.map(|b| b.limit), Some(20));
}

const THREE_LIMITS: &str = r#"{"limits": [
    {"rate_per_s": 1, "burst": 2},
    {"rate_per_s": 1, "burst": 5, "key": {"header": "x-api-key"}},
    {"rate_per_s": 1, "burst": 5, "key": "path"}
]}"#;

/// Shared-data calls `f` makes: (reads, writes).
fn shared_calls(host: &mut FakeHost, f: impl FnOnce(&mut FakeHost)) -> (usize, usize) {
    let before = host.calls();
    f(host);
    let after = host.calls();
    (
        after.shared_gets - before.shared_gets,
        after.shared_sets - before.shared_sets,
    )
}

#[test]
fn an_admitted_request_costs_one_read_and_one_write_per_limit() {
    let mut host = FakeHost::new().with_request_header(":path", "/a");
    with_key(&mut host, "k");
    let route = bind(THREE_LIMITS, &mut host);
    // The first request on a slot creates its record: a read finds none, a write creates it
    // full, a read takes its CAS token.
    for expected in [(6, 6), (3, 3)] {
        let calls = shared_calls(&mut host, |host| {
            assert_eq!(route.check(host).decision, Decision::Allowed);
        });
        assert_eq!(calls, expected);
    }
}

#[test]
fn a_rejected_request_reads_every_limit_and_writes_nothing() {
    let mut host = FakeHost::new().with_request_header(":path", "/a");
    with_key(&mut host, "k");
    let route = bind(THREE_LIMITS, &mut host);
    assert_eq!(send(&route, &mut host, 2), (2, 0));
    let calls = shared_calls(&mut host, |host| {
        assert_eq!(route.check(host).decision, Decision::Rejected);
    });
    assert_eq!(calls, (3, 0));
}

#[test]
fn headers_describe_the_tightest_limit() {
    let mut host = FakeHost::new();
    let route = bind(
        r#"{"limits": [
            {"rate_per_s": 10, "burst": 100},
            {"rate_per_s": 1, "burst": 3, "key": "client_address"}
        ]}"#,
        &mut host,
    );
    host.set_property(&["source", "address"], "10.0.0.1:5555");
    let check = route.check(&mut host);
    assert_eq!(
        check.budget,
        Some(Budget {
            limit: 3,
            remaining: 2,
            reset_s: 1
        })
    );
    send(&route, &mut host, 2);
    let check = route.check(&mut host);
    assert_eq!(check.decision, Decision::Rejected);
    assert_eq!(check.retry_after_s, 1);
    assert_eq!(
        check.budget,
        Some(Budget {
            limit: 3,
            remaining: 0,
            reset_s: 3
        })
    );
    // Another client address has its own bucket.
    host.set_property(&["source", "address"], "10.0.0.2:5555");
    assert_eq!(route.check(&mut host).decision, Decision::Allowed);
}

#[test]
fn missing_header_shares_one_bucket_or_skips_the_limit() {
    let mut host = FakeHost::new();
    let shared = bind(
        r#"{"limits": [{"rate_per_s": 1, "burst": 2, "key": {"header": "x-api-key"}}]}"#,
        &mut host,
    );
    assert_eq!(send(&shared, &mut host, 5), (2, 3));
    host.set_request_header("x-api-key", b"");
    assert_eq!(send(&shared, &mut host, 1), (0, 1), "empty is missing");

    let mut host = FakeHost::new();
    let skip = bind(
        r#"{"limits": [{"rate_per_s": 1, "burst": 2, "key": {"header": "x-api-key", "when_missing": "skip"}}]}"#,
        &mut host,
    );
    let check = skip.check(&mut host);
    assert_eq!(check.decision, Decision::Unlimited);
    assert_eq!(check.budget, None);
    assert_eq!(send(&skip, &mut host, 50), (0, 0));
    with_key(&mut host, "k");
    assert_eq!(send(&skip, &mut host, 5), (2, 3));
}

#[test]
fn path_keys_normalise_so_spellings_share_a_bucket() {
    let mut host = FakeHost::new();
    let route = bind(
        r#"{"limits": [{"rate_per_s": 1, "burst": 3, "key": "path"}]}"#,
        &mut host,
    );
    for path in ["/api/items", "/API/items?page=2", "//api/%69tems/"] {
        host.set_request_header(":path", path.as_bytes());
        assert_eq!(route.check(&mut host).decision, Decision::Allowed, "{path}");
    }
    host.set_request_header(":path", b"/Api/Items");
    assert_eq!(route.check(&mut host).decision, Decision::Rejected);
    host.set_request_header(":path", b"/api/other");
    assert_eq!(route.check(&mut host).decision, Decision::Allowed);
}

#[test]
fn dry_run_counts_would_be_rejections_and_writes_nothing_for_them() {
    let mut host = FakeHost::new();
    let route = bind(
        r#"{"limits": [{"rate_per_s": 1, "burst": 2}], "dry_run": true}"#,
        &mut host,
    );
    assert_eq!(route.check(&mut host).decision, Decision::Allowed);
    assert_eq!(route.check(&mut host).decision, Decision::Allowed);
    let key = slot_key(PREFIX, "limited", 0, 0);
    let before = host.shared_get(&key).unwrap();
    assert_eq!(route.check(&mut host).decision, Decision::DryRunRejected);
    assert_eq!(host.shared_get(&key).unwrap(), before);
}

#[test]
fn a_cas_conflict_is_decided_again_and_takes_one_token() {
    let mut host = FakeHost::new();
    let route = bind(r#"{"limits": [{"rate_per_s": 1, "burst": 3}]}"#, &mut host);
    host.cas_conflicts = 5;
    let check = route.check(&mut host);
    assert_eq!(check.decision, Decision::Allowed);
    assert_eq!(check.store_error, None);
    assert_eq!(check.budget.map(|b| b.remaining), Some(2));
    assert_eq!(host.cas_conflicts, 0);
    assert_eq!(send(&route, &mut host, 5), (2, 3));
}

#[test]
fn losing_the_last_token_to_another_vm_rejects() {
    let mut host = FakeHost::new();
    let route = bind(
        r#"{"limits": [{"rate_per_s": 1, "burst": 1}, {"rate_per_s": 1, "burst": 5, "key": "path"}]}"#,
        &mut host,
    );
    host.set_request_header(":path", b"/a");
    // The route-wide bucket has one token; another VM takes it after our read.
    let key = slot_key(PREFIX, "limited", 0, 0);
    host.shared_put(&key, &bucket::FULL);
    let empty = (host.now() + NANOS_PER_SEC).to_le_bytes().to_vec();
    let mut racing = WriteRace::new(&mut host, |other| other.shared_put(&key, &empty));
    let check = route.check(&mut racing);
    assert!(racing.raced());
    drop(racing);
    assert_eq!(check.decision, Decision::Rejected);
    assert_eq!(check.retry_after_s, 1);
    assert_eq!(host.shared_get(&key).unwrap().value, empty);
}

#[test]
fn exhausted_retries_fail_open_by_default_and_closed_when_asked() {
    let mut host = FakeHost::new();
    let open = bind(r#"{"limits": [{"rate_per_s": 1, "burst": 3}]}"#, &mut host);
    host.cas_conflicts = usize::MAX;
    let check = open.check(&mut host);
    assert_eq!(check.decision, Decision::Allowed);
    assert_eq!(check.store_error, Some(UpdateError::Contended));
    assert_eq!(check.budget, None);

    let mut host = FakeHost::new();
    let closed = bind(
        r#"{"limits": [{"rate_per_s": 1, "burst": 3}], "failure_mode_deny": true}"#,
        &mut host,
    );
    host.cas_conflicts = usize::MAX;
    let check = closed.check(&mut host);
    assert_eq!(check.decision, Decision::Rejected);
    assert_eq!(check.store_error, Some(UpdateError::Contended));
    assert_eq!(check.retry_after_s, 1);
}

#[test]
fn the_reject_reply_carries_status_headers_and_body() {
    let mut host = FakeHost::new();
    let route = bind(
        r#"{"limits": [{"rate_per_s": 5, "burst": 1}], "status": 503, "body": "slow down", "content_type": "text/plain"}"#,
        &mut host,
    );
    route.check(&mut host);
    let check = route.check(&mut host);
    let reply = route.policy().reject_reply(&check, &host);
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, b"slow down");
    let header = |name: &str| {
        reply
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("retry-after"), Some("1"));
    assert_eq!(header("content-type"), Some("text/plain"));
    assert_eq!(header("x-ratelimit-limit"), Some("1"));
    assert_eq!(header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(header("x-ratelimit-reset"), Some("1"));

    let route = bind(
        r#"{"limits": [{"rate_per_s": 5, "burst": 1}], "rate_limit_headers": false}"#,
        &mut host,
    );
    let check = route.check(&mut host);
    let reply = route.policy().reject_reply(&check, &host);
    assert_eq!(reply.status, 429);
    assert_eq!(reply.body, br#"{"error":"rate_limited"}"#);
    assert!(
        reply
            .headers
            .iter()
            .all(|(n, _)| !n.starts_with("x-ratelimit"))
    );
    assert!(reply.headers.iter().any(|(n, _)| n == "retry-after"));
}

#[test]
fn a_grpc_call_is_rejected_in_grpc_form_with_the_wait_as_pushback() {
    let mut host = FakeHost::new().grpc_call();
    let route = bind(r#"{"limits": [{"rate_per_s": 4, "burst": 1}]}"#, &mut host);
    route.check(&mut host);
    host.advance_ms(10);
    let check = route.check(&mut host);
    assert_eq!(check.decision, Decision::Rejected);
    let reply = route.policy().reject_reply(&check, &host);
    let status = reply.grpc.clone().expect("a gRPC reply");
    assert_eq!(status.code, grpc::Code::RESOURCE_EXHAUSTED);
    assert_eq!(status.message, "rate limited");
    assert!(reply.body.is_empty());
    let header = |name: &str| {
        reply
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    // 250 ms a token, 10 ms since the last: 240 ms to wait.
    assert_eq!(header("grpc-retry-pushback-ms").as_deref(), Some("240"));
    assert_eq!(header("retry-after").as_deref(), Some("1"));
    assert_eq!(header("x-ratelimit-limit").as_deref(), Some("1"));
    assert_eq!(
        header("content-type"),
        None,
        "Envoy writes a gRPC reply's own"
    );

    // Configured per route; the rate limit service unreachable is UNAVAILABLE.
    let route = bind(
        r#"{"limits": [{"rate_per_s": 4, "burst": 1}], "grpc_status": "UNAVAILABLE", "grpc_message": "try later"}"#,
        &mut host,
    );
    let reply = route.policy().reject_reply(&check, &host);
    assert_eq!(
        reply.grpc,
        Some(grpc::Status {
            code: grpc::Code::UNAVAILABLE,
            message: "try later".into()
        })
    );
    let unavailable = policy(GLOBAL).unavailable_reply(&host);
    assert_eq!(
        unavailable.grpc.map(|s| s.code),
        Some(grpc::Code::UNAVAILABLE)
    );
    let global = policy(GLOBAL).global_reject_reply(over_limit(7, None, Vec::new()), &host);
    assert!(
        global
            .headers
            .contains(&("grpc-retry-pushback-ms".into(), "7000".into()))
    );
}

#[test]
fn grpc_reply_settings_are_checked() {
    for (json, expected) in [
        (
            r#""grpc_status": "OK""#,
            "grpc_status: a reply that ends a call cannot be OK",
        ),
        (
            r#""grpc_status": "over""#,
            "grpc_status: unknown variant `over`, expected one of `OK`,",
        ),
        (
            r#""grpc_message": "a\nb""#,
            "grpc_message: must be one line of text",
        ),
    ] {
        let err = compile_err(&format!(
            r#"{{"routes": {{"checkout": {{"limits": [{{"rate_per_s": 1, "burst": 1}}], {json}}}}}}}"#
        ));
        let expected = format!("routes[\"checkout\"].{expected}");
        assert!(err.starts_with(&expected), "{err}");
    }
}

#[test]
fn time_is_absolute_in_the_records() {
    let mut host = FakeHost::new();
    let route = bind(r#"{"limits": [{"rate_per_s": 10, "burst": 1}]}"#, &mut host);
    route.check(&mut host);
    let record = host
        .shared_get(&slot_key(PREFIX, "limited", 0, 0))
        .unwrap()
        .value;
    let tat = u64::from_le_bytes(record.try_into().unwrap());
    assert_eq!(tat, FakeHost::START + 100 * NANOS_PER_MS);
}

#[test]
fn the_readme_example_compiles() {
    let json = r#"{
      "routes": {
        "limited": {"limits": [{"rate_per_s": 5, "burst": 10, "key": {"header": "x-api-key"}}]},
        "checkout": {
          "limits": [
            {"rate_per_s": 2, "burst": 5, "key": "client_address"},
            {"rate_per_s": 100, "burst": 50}
          ],
          "dry_run": true
        }
      }
    }"#;
    let routes = Envelope::<RateLimitConfig>::from_json(json.as_bytes())
        .and_then(|e| e.compile(&FieldPath::root(), RateLimitPolicy::compile))
        .unwrap();
    let checkout = routes.policy_for("checkout").unwrap();
    assert!(checkout.dry_run);
    assert_eq!(
        checkout.limits[0].key,
        key::Key::ClientAddress { trusted_hops: 0 }
    );
}

const GLOBAL: &str = r#"{"limits": [
    {"rate_per_s": 100, "burst": 100},
    {"scope": "global", "key": "client_address"},
    {"scope": "global", "key": {"header": "x-api-key", "when_missing": "skip"}},
    {"scope": "global", "key": "route", "descriptor_key": "generic_key"},
    {"scope": "global", "key": "path"}
  ], "service_cluster": "outbound|8081||ratelimit.infra.svc.cluster.local", "domain": "mesh"}"#;

#[test]
fn global_limits_compile_apart_from_local_ones() {
    let p = policy(GLOBAL);
    assert_eq!(p.limits.len(), 1);
    let global = p.global.as_ref().unwrap();
    assert_eq!(
        global.service_cluster,
        "outbound|8081||ratelimit.infra.svc.cluster.local"
    );
    assert_eq!(global.domain, "mesh");
    assert_eq!(global.timeout_ms, config::DEFAULT_TIMEOUT_MS);
    let keys: Vec<&str> = global
        .limits
        .iter()
        .map(|l| l.descriptor_key.as_str())
        .collect();
    assert_eq!(keys, ["remote_address", "x-api-key", "generic_key", "path"]);
    assert_eq!(policy(PER_KEY).global, None);
}

#[test]
fn one_call_carries_every_global_descriptor_that_applies() {
    let mut host = FakeHost::new()
        .with_property(&["source", "address"], "10.1.2.3:5000")
        .with_request_header(":path", "/A/./b?q=1");
    let route = bind(GLOBAL, &mut host);
    let call = route.global_call(Decision::Allowed, &host).unwrap();
    assert_eq!(
        call.cluster,
        "outbound|8081||ratelimit.infra.svc.cluster.local"
    );
    assert_eq!(call.service, "envoy.service.ratelimit.v3.RateLimitService");
    assert_eq!(call.method, "ShouldRateLimit");
    assert_eq!(call.timeout_ms, 20);
    let request =
        <rls::RateLimitRequest as prost::Message>::decode(call.message.as_slice()).unwrap();
    assert_eq!(request.domain, "mesh");
    let entries: Vec<(String, String)> = request
        .descriptors
        .iter()
        .map(|d| {
            assert_eq!(d.entries.len(), 1);
            (d.entries[0].key.clone(), d.entries[0].value.clone())
        })
        .collect();
    // The header-keyed limit is skipped without its header.
    assert_eq!(
        entries,
        [
            ("remote_address".into(), "10.1.2.3".into()),
            ("generic_key".into(), "limited".into()),
            ("path".into(), "/a/b".into()),
        ]
    );
    with_key(&mut host, "k1");
    let call = route.global_call(Decision::Allowed, &host).unwrap();
    let request =
        <rls::RateLimitRequest as prost::Message>::decode(call.message.as_slice()).unwrap();
    assert_eq!(request.descriptors.len(), 4);
    assert_eq!(request.descriptors[1].entries[0].value, "k1");
}

#[test]
fn no_call_when_no_global_limit_applies() {
    let mut host = FakeHost::new();
    let route = bind(PER_KEY, &mut host);
    assert_eq!(route.global_call(Decision::Allowed, &host), None);
    let route = bind(
        r#"{"limits": [{"scope": "global", "key": {"header": "x-api-key", "when_missing": "skip"}}], "service_cluster": "rls", "domain": "d", "timeout_ms": 50}"#,
        &mut host,
    );
    assert_eq!(route.global_call(Decision::Allowed, &host), None);
    with_key(&mut host, "k");
    assert_eq!(
        route
            .global_call(Decision::Allowed, &host)
            .unwrap()
            .timeout_ms,
        50
    );
    // Only global limits: nothing local to decide.
    assert_eq!(route.check(&mut host).decision, Decision::Unlimited);
}

#[test]
fn global_config_errors_name_route_and_field() {
    let cases = [
        (
            r#"{"routes": {"r": {"limits": [{"scope": "global"}], "domain": "d"}}}"#,
            r#"routes["r"].service_cluster: is required with a global limit (scope "global")"#,
        ),
        (
            r#"{"routes": {"r": {"limits": [{"scope": "global"}], "service_cluster": "c"}}}"#,
            r#"routes["r"].domain: is required with a global limit (scope "global")"#,
        ),
        (
            r#"{"default": {"limits": [{"scope": "global"}], "service_cluster": "", "domain": "d"}}"#,
            "default.service_cluster: must be a non-empty name",
        ),
        (
            r#"{"default": {"limits": [{"scope": "global"}], "service_cluster": "c", "domain": "d", "timeout_ms": 0}}"#,
            "default.timeout_ms: must be between 1 and 10000",
        ),
        (
            r#"{"default": {"limits": [{"scope": "global", "rate_per_s": 1}], "service_cluster": "c", "domain": "d"}}"#,
            "default.limits[0].rate_per_s: applies only to a local limit: a global limit's rate is the rate limit service's",
        ),
        (
            r#"{"default": {"limits": [{"scope": "global", "key": "path", "slots": 4}], "service_cluster": "c", "domain": "d"}}"#,
            "default.limits[0].slots: applies only to a local limit: a global limit's rate is the rate limit service's",
        ),
        (
            r#"{"default": {"limits": [{"rate_per_s": 1, "burst": 1}], "domain": "d"}}"#,
            r#"default.domain: applies only to a route with a global limit (scope "global")"#,
        ),
        (
            r#"{"default": {"limits": [{"rate_per_s": 1, "burst": 1, "descriptor_key": "k"}]}}"#,
            r#"default.limits[0].descriptor_key: applies only to a global limit (scope "global")"#,
        ),
        (
            r#"{"default": {"limits": [{"burst": 1}]}}"#,
            "default.limits[0].rate_per_s: is required for a local limit",
        ),
        (
            r#"{"default": {"limits": [{"rate_per_s": 1}]}}"#,
            "default.limits[0].burst: is required for a local limit",
        ),
        (
            r#"{"default": {"limits": [{"scope": "cluster"}]}}"#,
            "default.limits[0].scope: unknown variant `cluster`, expected `local` or `global`",
        ),
    ];
    for (json, expected) in cases {
        assert_eq!(compile_err(json), expected, "{json}");
    }
}

/// What a rate limit service told of a limit it rejected for.
const SERVICE_BUDGET: Budget = Budget {
    limit: 10,
    remaining: 0,
    reset_s: 7,
};

fn over_limit(
    retry_after_s: u64,
    budget: Option<Budget>,
    headers: Vec<rls::Header>,
) -> rls::Answer {
    rls::Answer {
        over_limit: Some(retry_after_s),
        budget,
        request_headers: Vec::new(),
        response_headers: headers,
    }
}

#[test]
fn global_rejection_reply_carries_retry_after_the_services_budget_and_headers() {
    let p = policy(GLOBAL);
    let host = FakeHost::new();
    let reply = p.global_reject_reply(
        over_limit(
            7,
            Some(SERVICE_BUDGET),
            vec![("x-limited-by".into(), b"rls".to_vec())],
        ),
        &host,
    );
    assert_eq!(reply.status, 429);
    assert_eq!(reply.body, br#"{"error":"rate_limited"}"#);
    for header in [
        ("retry-after", "7"),
        ("x-ratelimit-limit", "10"),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "7"),
        ("x-limited-by", "rls"),
    ] {
        assert!(
            reply.headers.contains(&(header.0.into(), header.1.into())),
            "{header:?} in {:?}",
            reply.headers
        );
    }
    let unavailable = p.unavailable_reply(&host);
    assert_eq!(unavailable.status, 503);
    assert_eq!(unavailable.grpc, None);
}

#[test]
fn a_global_rejection_without_a_budget_or_with_headers_off_has_no_ratelimit_headers() {
    let off = policy(&GLOBAL.replace(r#""domain""#, r#""rate_limit_headers": false, "domain""#));
    let host = FakeHost::new();
    for reply in [
        policy(GLOBAL).global_reject_reply(over_limit(7, None, Vec::new()), &host),
        off.global_reject_reply(over_limit(7, Some(SERVICE_BUDGET), Vec::new()), &host),
    ] {
        assert!(
            reply
                .headers
                .iter()
                .all(|(n, _)| !n.starts_with("x-ratelimit")),
            "{:?}",
            reply.headers
        );
        assert!(reply.headers.contains(&("retry-after".into(), "7".into())));
    }
}

#[test]
fn a_service_header_replaces_the_filters_own_of_that_name() {
    let p = policy(GLOBAL);
    let reply = p.global_reject_reply(
        over_limit(
            7,
            Some(SERVICE_BUDGET),
            vec![
                ("retry-after".into(), b"30".to_vec()),
                ("Content-Type".into(), b"text/plain".to_vec()),
                ("x-ratelimit-limit".into(), b"10, 10;w=60".to_vec()),
                ("x-limit-by".into(), b"a".to_vec()),
                ("x-limit-by".into(), b"b".to_vec()),
            ],
        ),
        &FakeHost::new(),
    );
    let values = |name: &str| -> Vec<&str> {
        reply
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(values("retry-after"), ["30"]);
    assert_eq!(values("content-type"), ["text/plain"]);
    // One x-ratelimit-* header of the service's replaces all three of ours: no mixed set.
    assert_eq!(values("x-ratelimit-limit"), ["10, 10;w=60"]);
    assert!(values("x-ratelimit-remaining").is_empty());
    assert!(values("x-ratelimit-reset").is_empty());
    // The service's own repeated headers are all kept.
    assert_eq!(values("x-limit-by"), ["a", "b"]);
}

// ---- leases: tokens a VM takes for its later requests ----

/// A bucket large enough for leases: 1000/s (a token a millisecond), burst 2000.
const LEASING: &str = r#"{"limits": [{"rate_per_s": 1000, "burst": 2000}]}"#;

/// Two VMs of one Envoy on `json`: their hosts share shared data (and start at one time).
fn two_vms(json: &str) -> [(RouteLimits, FakeHost); 2] {
    let mut a = FakeHost::new();
    let mut b = a.another_vm();
    let route_a = bind(json, &mut a);
    let route_b = bind(json, &mut b);
    [(route_a, a), (route_b, b)]
}

/// The most a bucket of `burst` at one token every `period` can admit in `window`.
fn admissible_in(burst: u64, period: u64, window: u64) -> u64 {
    burst + window / period
}

/// Requests from two VMs in a seeded random interleaving, `gap` nanoseconds apart at most;
/// the times of the admitted ones.
fn interleaved(
    vms: &mut [(RouteLimits, FakeHost); 2],
    requests: usize,
    gap: u64,
    seed: u64,
) -> Vec<u64> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut now = vms[0].1.now;
    let mut admitted = Vec::new();
    for _ in 0..requests {
        now += rng.u64(0..=gap);
        let (route, host) = &mut vms[rng.usize(0..2)];
        host.now = now;
        if route.check(host).decision == Decision::Allowed {
            admitted.push(now);
        }
    }
    admitted
}

#[test]
fn leases_never_admit_more_than_the_bucket_in_any_window() {
    // Load around the rate and far above it, in both VMs: in every window of time, never more
    // than burst + the tokens that came in it (GCRA's own bound), with leases at work.
    for (seed, gap) in [
        (1, 3 * NANOS_PER_MS),
        (2, 1_000_000),
        (3, 200_000),
        (4, 20_000),
        // Just above the rate: leases expire unused and are given back.
        (8, 900_000),
    ] {
        let mut vms = two_vms(LEASING);
        let admitted = interleaved(&mut vms, 3000, gap, seed);
        let reads: usize = vms.iter().map(|(_, host)| host.calls().shared_gets).sum();
        assert!(
            reads < admitted.len(),
            "seed {seed}: no lease at work ({reads} reads)"
        );
        let period = NANOS_PER_MS;
        for (i, first) in admitted.iter().enumerate() {
            for (j, last) in admitted.iter().enumerate().skip(i) {
                let count = (j - i + 1) as u64;
                assert!(
                    count <= admissible_in(2000, period, last - first),
                    "seed {seed}: {count} admitted in {} ns",
                    last - first
                );
            }
        }
    }
}

#[test]
fn leases_hold_back_at_most_their_charge_and_their_tokens() {
    // Far above the rate from both VMs: the bucket drains. GCRA alone would admit the burst
    // plus one token per period; what leases may cost is their charge (20 ms of tokens) and
    // the tokens each VM still holds (MAX_LEASE - 1).
    let mut vms = two_vms(LEASING);
    let start = vms[0].1.now;
    let admitted = interleaved(&mut vms, 20_000, 40_000, 9);
    let end = vms.iter().map(|(_, host)| host.now).max().unwrap();
    let exact = admissible_in(2000, NANOS_PER_MS, end - start);
    let held_back = LEASE_HOLD.div_ceil(NANOS_PER_MS) + 2 * u64::from(MAX_LEASE - 1);
    let admitted = admitted.len() as u64;
    assert!(admitted <= exact, "{admitted} > {exact}");
    assert!(
        admitted + held_back >= exact,
        "{admitted} admitted, {exact} admissible: more than {held_back} held back"
    );
}

/// How many of `arrivals` (sorted) one bucket of `burst`, a token every `period`, admits
/// when each takes its own token (GCRA without leases).
fn one_token_at_a_time(arrivals: &[u64], burst: u64, period: u64) -> u64 {
    let tolerance = period * (burst - 1);
    let mut tat = 0;
    let mut admitted = 0;
    for &now in arrivals {
        let tat_now = tat.max(now);
        if tat_now <= now + tolerance {
            tat = tat_now + period;
            admitted += 1;
        }
    }
    admitted
}

#[test]
fn leases_lose_no_tokens_while_the_bucket_drains_slowly() {
    // Just above the rate from both VMs, unevenly: the bucket spends most of the time half
    // full, where leases are taken, and some expire unused (a VM's traffic dips). What they
    // leave is given back, so the bucket admits what one taking a token per request would,
    // but for what the VMs still hold at the end and one charge.
    for seed in [5, 6, 7] {
        let mut vms = two_vms(LEASING);
        let start = vms[0].1.now;
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut now = start;
        let mut arrivals = Vec::new();
        let mut admitted = 0u64;
        for _ in 0..20_000 {
            // 0.9 ms apart on average: 1.1 requests per token.
            now += rng.u64(0..=1_800_000);
            let (route, host) = &mut vms[rng.usize(0..2)];
            host.now = now;
            arrivals.push(now - start);
            if route.check(host).decision == Decision::Allowed {
                admitted += 1;
            }
        }
        let exact = one_token_at_a_time(&arrivals, 2000, NANOS_PER_MS);
        let held_back = LEASE_HOLD.div_ceil(NANOS_PER_MS) + 2 * u64::from(MAX_LEASE - 1);
        assert!(
            admitted <= exact && admitted + held_back >= exact,
            "seed {seed}: {admitted} admitted, one token at a time {exact}"
        );
    }
}

#[test]
fn while_the_bucket_is_far_from_empty_most_requests_touch_no_shared_data() {
    let [(route_a, mut a), (route_b, mut b)] = two_vms(
        r#"{"limits": [
        {"rate_per_s": 1000000, "burst": 1000000},
        {"rate_per_s": 100000, "burst": 100000, "key": {"header": "x-api-key"}}]}"#,
    );
    with_key(&mut a, "k1");
    with_key(&mut b, "k1");
    let before = (a.calls().shared_gets, b.calls().shared_gets);
    for _ in 0..1000 {
        a.advance_ms(1);
        b.now = a.now;
        assert_eq!(route_a.check(&mut a).decision, Decision::Allowed);
        assert_eq!(route_b.check(&mut b).decision, Decision::Allowed);
    }
    let reads = a.calls().shared_gets - before.0 + b.calls().shared_gets - before.1;
    // Two limits, 2000 requests: 4000 reads without leases; a lease lasts 20 requests here.
    assert!(
        reads <= 4000 / 10,
        "{reads} shared-data reads for 2000 requests"
    );
}

#[test]
fn a_lease_grows_while_used_up_and_shrinks_to_what_was_used() {
    let [(route, mut host), _] = two_vms(LEASING);
    let reads = |host: &FakeHost| host.calls().shared_gets;
    // Requests 0.1 ms apart: each lease is used up before it expires, so it doubles.
    let mut per_read = Vec::new();
    for _ in 0..6 {
        let before = reads(&host);
        let mut served = 0;
        while reads(&host) == before || served == 0 {
            host.now += 100_000;
            route.check(&mut host);
            served += 1;
            if reads(&host) > before + 1 {
                break;
            }
        }
        per_read.push(served);
    }
    assert!(per_read.windows(2).all(|w| w[1] >= w[0]), "{per_read:?}");
    // One request per 30 ms outlives every lease: each takes one token and leases none.
    host.now += 100 * NANOS_PER_MS;
    let before = reads(&host);
    for _ in 0..5 {
        host.now += 30 * NANOS_PER_MS;
        route.check(&mut host);
    }
    assert_eq!(reads(&host) - before, 5);
}

#[test]
fn a_rejection_by_another_limit_spends_no_leased_token() {
    // The route limit leases; the per-key limit of 1 rejects: the leased tokens stay.
    let json = r#"{"limits": [
        {"rate_per_s": 1000, "burst": 2000},
        {"rate_per_s": 1, "burst": 1, "key": {"header": "x-api-key"}, "slots": 65536}]}"#;
    let [(route, mut host), _] = two_vms(json);
    for i in 0..40 {
        with_key(&mut host, &format!("k{i}"));
        assert_eq!(route.check(&mut host).decision, Decision::Allowed);
        host.now += 100_000;
    }
    let leased = route.leased_tokens(0);
    assert!(leased > 0, "the route limit leases");
    with_key(&mut host, "k0");
    assert_eq!(route.check(&mut host).decision, Decision::Rejected);
    assert_eq!(
        route.leased_tokens(0),
        leased,
        "the rejection took no leased token"
    );
    with_key(&mut host, "fresh");
    assert_eq!(route.check(&mut host).decision, Decision::Allowed);
    assert_eq!(route.leased_tokens(0), leased - 1);
}

#[test]
fn several_rejecting_limits_ask_for_the_longest_wait() {
    // The first limit refills in 1 s, the second in 10 s: a client told to come back after
    // 1 s would be rejected again by the second.
    let mut host = FakeHost::new();
    let route = bind(
        r#"{"limits": [{"rate_per_s": 1, "burst": 1}, {"rate_per_s": 0.1, "burst": 1}]}"#,
        &mut host,
    );
    assert_eq!(route.check(&mut host).decision, Decision::Allowed);
    let check = route.check(&mut host);
    assert_eq!(check.decision, Decision::Rejected);
    assert_eq!((check.retry_after_s, check.retry_after_ms), (10, 10_000));
    // Listed the other way round, the answer is the same.
    let mut host = FakeHost::new();
    let route = bind(
        r#"{"limits": [{"rate_per_s": 0.1, "burst": 1}, {"rate_per_s": 1, "burst": 1}]}"#,
        &mut host,
    );
    assert_eq!(route.check(&mut host).decision, Decision::Allowed);
    assert_eq!(route.check(&mut host).retry_after_s, 10);
}

#[test]
fn a_local_rejection_costs_no_call() {
    let mut host = FakeHost::new().with_property(&["source", "address"], "10.1.2.3:5000");
    let route = bind(GLOBAL, &mut host);
    for (local, calls) in [
        (Decision::Allowed, true),
        (Decision::Unlimited, true),
        (Decision::DryRunRejected, true),
        (Decision::Rejected, false),
    ] {
        assert_eq!(
            route.global_call(local, &host).is_some(),
            calls,
            "{local:?}"
        );
    }
}

#[test]
fn the_response_tells_an_admitted_requests_budget_unless_dry_run_or_off() {
    let budget = Budget {
        limit: 10,
        remaining: 3,
        reset_s: 2,
    };
    let check = |decision| Check {
        decision,
        budget: Some(budget),
        retry_after_s: 0,
        retry_after_ms: 0,
        store_error: None,
    };
    let json =
        |options: &str| format!(r#"{{"limits": [{{"rate_per_s": 1, "burst": 10}}]{options}}}"#);
    for (options, decision, told) in [
        ("", Decision::Allowed, true),
        ("", Decision::Rejected, false),
        ("", Decision::Unlimited, false),
        (r#", "rate_limit_headers": false"#, Decision::Allowed, false),
        (r#", "dry_run": true"#, Decision::Allowed, false),
        (r#", "dry_run": true"#, Decision::DryRunRejected, false),
    ] {
        let shown = policy(&json(options)).response_budget(&check(decision));
        assert_eq!(shown, told.then_some(budget), "{options} {decision:?}");
    }
}

#[test]
fn a_failure_warning_names_what_the_request_got() {
    let table = [
        (Decision::Unlimited, "let_through"),
        (Decision::Allowed, "let_through"),
        (Decision::DryRunRejected, "let_through"),
        (Decision::Rejected, "rejected"),
        (Decision::Unavailable, "unavailable"),
    ];
    for (decision, action) in table {
        assert_eq!(decision.action(), action, "{decision:?}");
    }
}

/// The stats labels are the names docs and dashboards use (`decision=...`); `Unlimited`
/// is not counted.
#[test]
fn decisions_have_their_documented_stats_labels() {
    let labels = [
        Decision::Unlimited,
        Decision::Allowed,
        Decision::Rejected,
        Decision::DryRunRejected,
        Decision::Unavailable,
    ]
    .map(Decision::label);
    assert_eq!(
        labels,
        [
            None,
            Some("allowed"),
            Some("rejected"),
            Some("dry_run_rejected"),
            Some("unavailable")
        ]
    );
}

/// Lease sizes by the rule (`SlotLease::next_size`), computed by hand: one VM, a request every
/// 0.1 ms, each lease used up well within the first half of its 20 ms. The first request
/// takes its own token; each read after takes twice the last decision's tokens, up to
/// MAX_LEASE (32): 1, 2, 4, 8, 16, 32, 32, 32, ... So the requests that read shared data are
/// the 1st, 2nd, 4th, 8th, 16th, 32nd, 64th, 96th and 128th.
#[test]
fn leases_double_from_one_token_up_to_thirty_two() {
    let [(route, mut host), _] = two_vms(LEASING);
    let mut reading = Vec::new();
    for n in 1..=140 {
        let before = host.calls().shared_gets;
        assert_eq!(route.check(&mut host).decision, Decision::Allowed, "{n}");
        if host.calls().shared_gets > before {
            reading.push(n);
        }
        host.now += 100_000;
    }
    assert_eq!(reading, [1, 2, 4, 8, 16, 32, 64, 96, 128]);
}

/// A VM keeps what it learnt of at most 16 slots of a limit (LEASE_SLOTS): memory per VM is
/// bounded however many keys arrive.
#[test]
fn a_vm_learns_of_at_most_sixteen_slots_per_limit() {
    let json =
        r#"{"limits": [{"rate_per_s": 1000, "burst": 2000, "key": {"header": "x-api-key"}}]}"#;
    let [(route, mut host), _] = two_vms(json);
    let held = |route: &RouteLimits| route.limits[0].leases.borrow().len();
    for i in 0..40 {
        with_key(&mut host, &format!("k{i}"));
        assert_eq!(route.check(&mut host).decision, Decision::Allowed);
        assert_eq!(held(&route), (i + 1).min(16), "after {} keys", i + 1);
        host.now += 100_000;
    }
}

/// With its 16 entries taken, a VM never drops a live lease (its tokens would be lost) to
/// learn of a new slot; it takes the place of one that expired.
#[test]
fn a_full_lease_table_keeps_live_leases_and_reuses_expired_ones() {
    let json =
        r#"{"limits": [{"rate_per_s": 1000, "burst": 2000, "key": {"header": "x-api-key"}}]}"#;
    let [(route, mut host), _] = two_vms(json);
    // Two requests per key: the second leases one token (twice the first's one, less its own).
    for i in 0..16 {
        with_key(&mut host, &format!("k{i}"));
        for _ in 0..2 {
            assert_eq!(route.check(&mut host).decision, Decision::Allowed);
            host.now += 100_000;
        }
    }
    assert_eq!(route.leased_tokens(0), 16);
    with_key(&mut host, "late");
    assert_eq!(route.check(&mut host).decision, Decision::Allowed);
    assert_eq!(route.leased_tokens(0), 16, "a live lease was dropped");
    // Past the leases' 20 ms: the next new slot takes an expired entry's place.
    host.now += 30 * NANOS_PER_MS;
    with_key(&mut host, "later");
    assert_eq!(route.check(&mut host).decision, Decision::Allowed);
    assert_eq!(route.leased_tokens(0), 15, "no expired entry was reused");
}

/// A request served from a lease shows one token less than the request before it: what a
/// read showed counts the leased tokens as left, and each leased request takes one.
#[test]
fn a_leased_request_shows_one_token_less_than_the_last() {
    let [(route, mut host), _] = two_vms(LEASING);
    let mut last: Option<u32> = None;
    let mut leased = 0;
    for _ in 0..100 {
        let before = host.calls().shared_gets;
        let check = route.check(&mut host);
        let remaining = check.budget.map(|b| b.remaining).unwrap();
        if host.calls().shared_gets == before {
            assert_eq!(Some(remaining + 1), last, "a leased request");
            leased += 1;
        }
        last = Some(remaining);
        host.now += 100_000;
    }
    assert!(leased > 80, "{leased} of 100 served from leases");
}

/// Two limits reject with the same wait: the headers describe the first listed (the order
/// of the config, so they do not change from one rejection to the next).
#[test]
fn on_a_tie_the_first_listed_rejecting_limit_is_described() {
    let json = r#"{"limits": [
        {"rate_per_s": 1, "burst": 2},
        {"rate_per_s": 1, "burst": 1, "key": {"header": "x-api-key"}}]}"#;
    let mut host = FakeHost::new();
    let route = bind(json, &mut host);
    for key in ["k1", "k2"] {
        with_key(&mut host, key);
        assert_eq!(route.check(&mut host).decision, Decision::Allowed);
    }
    // Both empty for k1 now, each with its next token in 1 s.
    with_key(&mut host, "k1");
    let check = route.check(&mut host);
    assert_eq!(check.decision, Decision::Rejected);
    assert_eq!(check.retry_after_ms, 1000);
    assert_eq!(
        check.budget,
        Some(Budget {
            limit: 2,
            remaining: 0,
            reset_s: 2
        })
    );
}

/// A contended slot is tried 16 times in all (store::DEFAULT_ATTEMPTS): the first write and
/// 15 decided again. One more conflict and the request fails open, as configured.
#[test]
fn a_contended_slot_is_written_at_most_sixteen_times() {
    for (conflicts, store_error) in [(15, None), (16, Some(UpdateError::Contended))] {
        let mut host = FakeHost::new();
        let route = bind(r#"{"limits": [{"rate_per_s": 1, "burst": 3}]}"#, &mut host);
        // The slot's record exists: every write counted is a decision's.
        host.shared_put(&slot_key(PREFIX, "limited", 0, 0), &bucket::FULL);
        host.cas_conflicts = conflicts;
        let sets = host.calls().shared_sets;
        let check = route.check(&mut host);
        assert_eq!(check.decision, Decision::Allowed, "{conflicts}");
        assert_eq!(check.store_error, store_error, "{conflicts}");
        assert_eq!(host.calls().shared_sets - sets, 16, "{conflicts}");
    }
}

/// A route takes 1 to 8 limits (docs/ratelimit.md): 8 compile, 9 are refused naming the field.
#[test]
fn a_route_takes_at_most_eight_limits() {
    let limits = |n: usize| {
        let one = r#"{"rate_per_s": 1, "burst": 1}"#;
        format!(r#"{{"limits": [{}]}}"#, vec![one; n].join(", "))
    };
    assert_eq!(policy(&limits(8)).limits.len(), 8);
    assert_eq!(
        compile_err(&format!(r#"{{"default": {}}}"#, limits(9))),
        "default.limits: at most 8 limits per route"
    );
}

/// A configured slot secret is 16 characters or more (characters, not bytes).
#[test]
fn a_slot_secret_of_sixteen_characters_is_enough() {
    let with_secret = |secret: &str| {
        format!(
            r#"{{"default": {{"slot_secret": "{secret}", "limits": [{{"rate_per_s": 1, "burst": 1}}]}}}}"#
        )
    };
    let refused = "default.slot_secret: must be at least 16 characters long";
    assert_eq!(compile_err(&with_secret(&"s".repeat(15))), refused);
    assert_eq!(compile_err(&with_secret(&"é".repeat(15))), refused);
    for secret in ["s".repeat(16), "é".repeat(16)] {
        let compiled = compile(&with_secret(&secret));
        assert!(compiled.is_ok(), "{secret}: {:?}", compiled.err());
    }
}

/// A global limit's `descriptor_key` is a non-empty name without control characters.
#[test]
fn a_descriptor_key_is_a_non_empty_printable_name() {
    let with_key = |name: &str| {
        format!(
            r#"{{"default": {{"limits": [{{"scope": "global", "descriptor_key": "{name}"}}], "service_cluster": "c", "domain": "d"}}}}"#
        )
    };
    for bad in ["", "a\\u0001b", "tab\\there"] {
        assert_eq!(
            compile_err(&with_key(bad)),
            "default.limits[0].descriptor_key: must be a non-empty name",
            "{bad:?}"
        );
    }
    let compiled = compile(&with_key("tenant id"));
    assert!(compiled.is_ok(), "{:?}", compiled.err());
}
