use super::*;
use mesh_policy::fake::{FakeHost, bind_route};

fn bound(json: &str, route: &str, host: &mut FakeHost) -> CanaryRoute {
    let filter = Canary::new(&Plugin::default());
    bind_route(&filter, json, route, host).unwrap()
}

const CHECKOUT: &str = r#"{"routes": {"checkout": {
    "rules": [{"name": "force", "header": "x-canary-force", "exact": "true"}],
    "percent": 0,
    "response_header": "x-canary-decision"
}}}"#;

#[test]
fn a_rule_tags_the_request_re_routes_and_counts() {
    let mut host = FakeHost::new().with_request_header("x-canary-force", "true");
    let route = bound(CHECKOUT, "checkout", &mut host);
    let (verdict, mut response) = Canary.on_request(&route, &mut host);
    assert_eq!(verdict, Verdict::Continue);
    assert_eq!(host.request_values("x-canary"), ["true"]);
    assert_eq!(host.calls().route_cache_clears, 1);
    assert_eq!(
        host.metric(
            "mesh_canary_requests_total;route=checkout;release=canary;reason=rule;rule=force"
        ),
        Some(1)
    );
    Canary.on_response(&route, &mut response, &mut host);
    assert_eq!(
        host.response_values("x-canary-decision"),
        ["canary; rule=force"]
    );
    assert!(host.response_values("set-cookie").is_empty());
}

#[test]
fn the_configured_header_and_value_are_written() {
    let config = r#"{"routes": {"checkout": {"header": "x-release", "value": "v2",
        "rules": [{"name": "force", "header": "x-canary-force", "exact": "true"}]}}}"#;
    let mut host = FakeHost::new()
        .with_request_header("x-canary-force", "true")
        .with_request_header("x-release", "forged");
    let route = bound(config, "checkout", &mut host);
    Canary.on_request(&route, &mut host);
    assert_eq!(host.request_values("x-release"), ["v2"]);
    assert!(host.request_values("x-canary").is_empty());
    // Stable: the client's own value of the configured header is removed, not kept.
    let mut host = FakeHost::new().with_request_header("x-release", "v2");
    let route = bound(config, "checkout", &mut host);
    Canary.on_request(&route, &mut host);
    assert!(host.request_values("x-release").is_empty());
}

#[test]
fn an_untouched_stable_request_keeps_the_route() {
    let mut host = FakeHost::new();
    let route = bound(CHECKOUT, "checkout", &mut host);
    Canary.on_request(&route, &mut host);
    assert!(host.request_values("x-canary").is_empty());
    assert_eq!(
        host.calls().route_cache_clears,
        0,
        "nothing changed: no re-match"
    );
    assert_eq!(
        host.metric("mesh_canary_requests_total;route=checkout;release=stable;reason=random"),
        Some(1)
    );
}

#[test]
fn a_tag_that_already_says_canary_is_not_written_again() {
    let mut host = FakeHost::new()
        .with_request_header("x-canary-force", "true")
        .with_request_header("x-canary", "true");
    let route = bound(CHECKOUT, "checkout", &mut host);
    Canary.on_request(&route, &mut host);
    assert_eq!(host.request_values("x-canary"), ["true"]);
    let calls = host.calls();
    assert_eq!(
        (calls.request_header_writes, calls.route_cache_clears),
        (0, 0),
        "the request already routes to the canary: no write, no re-match"
    );
    // Still a tag the client sent, which the policy does not trust.
    assert_eq!(
        host.metric("mesh_canary_untrusted_tags_total;route=checkout"),
        Some(1)
    );
    // Twice, even with the right value, it is written once (Envoy routes on the first).
    let mut host = FakeHost::new()
        .with_request_header("x-canary-force", "true")
        .with_request_header("x-canary", "true")
        .with_request_header("x-canary", "true");
    let route = bound(CHECKOUT, "checkout", &mut host);
    Canary.on_request(&route, &mut host);
    assert_eq!(host.request_values("x-canary"), ["true"]);
    assert_eq!(host.calls().route_cache_clears, 1);
}

#[test]
fn a_forged_tag_is_removed_and_the_route_chosen_again() {
    let mut host = FakeHost::new()
        .with_request_header("x-canary", "true")
        .with_request_header("x-canary", "true");
    // The route Envoy chose for the tagged request carries the same policy and salt.
    let config = r#"{"routes": {"checkout-canary": {"salt": "checkout"}}}"#;
    let route = bound(config, "checkout-canary", &mut host);
    assert_eq!(route.salt, b"checkout");
    Canary.on_request(&route, &mut host);
    assert!(host.request_values("x-canary").is_empty());
    assert_eq!(host.calls().route_cache_clears, 1);
    assert_eq!(
        host.metric("mesh_canary_untrusted_tags_total;route=checkout-canary"),
        Some(1)
    );
}

#[test]
fn every_counter_is_defined_at_bind() {
    let mut host = FakeHost::new();
    bound(CHECKOUT, "checkout", &mut host);
    let names: Vec<String> = host.metrics().into_keys().collect();
    assert_eq!(names.len(), 8, "{names:?}");
    assert!(names.iter().all(
        |n| n.starts_with("mesh_canary_requests_total;route=checkout;")
            || n == "mesh_canary_untrusted_tags_total;route=checkout"
    ));
}

#[test]
fn the_sticky_cookie_is_added_next_to_the_upstreams() {
    let config = r#"{"default": {"percent": 100, "salt": "shop",
        "sticky_cookie": {"name": "mc", "max_age_s": 60, "secure": false}}}"#;
    let mut host = FakeHost::new();
    host.script_random(&[1, 2]);
    let route = bound(config, "", &mut host);
    assert_eq!(route.salt, b"shop");
    let (_, mut response) = Canary.on_request(&route, &mut host);
    assert_eq!(host.request_values("x-canary"), ["true"]);
    let mut host = FakeHost::new().with_response_header("set-cookie", "upstream=1");
    Canary.on_response(&route, &mut response, &mut host);
    assert_eq!(
        host.response_values("set-cookie"),
        [
            "upstream=1",
            "mc=00000000000000010000000000000002; Max-Age=60; Path=/; HttpOnly; SameSite=Lax"
        ]
    );
    assert!(host.response_values("x-canary-decision").is_empty());
}
