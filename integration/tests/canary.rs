//! The canary filter in a real Envoy, with the built `dist/canary.wasm`.
//!
//! The demo routes send `/checkout` with `x-canary: true` to v2 (route `checkout-canary`) and
//! the rest of `/checkout` to v1 (route `checkout`): the filter's header decides the upstream.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use mesh_integration::oracle::canary_service as expected_service;
use mesh_integration::{Mesh, Reply};

/// A policy for `checkout` and for its tagged twin `checkout-canary` (where Envoy puts a
/// request that arrives with the tag), with one salt so both give a user the same answer.
fn checkout_config(policy: &str) -> String {
    format!(r#"{{"routes": {{"checkout": {policy}, "checkout-canary": {policy}}}}}"#)
}

/// `force` sends to the canary; nothing else does (percent 0).
const RULES_ONLY: &str = r#"{
    "salt": "checkout",
    "rules": [
        {"name": "force", "header": "x-canary-force", "exact": "true"},
        {"name": "beta", "cookie": "beta", "exact": "1"},
        {"name": "preview", "query": "preview", "present": true},
        {"name": "new-cart", "path_prefix": "/checkout/new"}
    ],
    "response_header": "x-canary-decision"
}"#;

/// 20 % of users by `x-user-id`.
const SPLIT_20: &str = r#"{"salt": "checkout", "percent": 20, "sticky": {"header": "x-user-id"}}"#;

fn start(builder: mesh_integration::MeshBuilder) -> Mesh {
    builder.start().unwrap_or_else(|e| panic!("{e}"))
}

fn mesh(policy: &str) -> Mesh {
    start(Mesh::builder().filter("canary", &checkout_config(policy)))
}

fn service(reply: &Reply) -> String {
    reply
        .service()
        .unwrap_or_else(|| panic!("not from an upstream: {} {}", reply.status, reply.text()))
}

/// Fails a load loop that runs far longer than it should (a hung Envoy), instead of hanging.
struct Deadline(Instant);

impl Deadline {
    fn new() -> Self {
        Self(Instant::now() + Duration::from_secs(300))
    }

    fn check(&self, done: usize) {
        assert!(
            Instant::now() < self.0,
            "load loop still running after 300 s ({done} requests done)"
        );
    }
}

#[test]
fn a_rule_match_reaches_v2_and_no_match_reaches_v1() {
    let mesh = mesh(RULES_ONLY);
    let reply = mesh
        .get("/checkout")
        .header("x-canary-force", "true")
        .send();
    assert_eq!(
        service(&reply),
        "v2",
        "the written header re-routed the request"
    );
    assert_eq!(reply.upstream_header("x-canary").as_deref(), Some("true"));
    assert_eq!(
        reply.header("x-canary-decision").as_deref(),
        Some("canary; rule=force")
    );

    let reply = mesh.get("/checkout").header("x-canary-force", "yes").send();
    assert_eq!(service(&reply), "v1");
    assert_eq!(reply.upstream_header("x-canary"), None);
    assert_eq!(
        reply.header("x-canary-decision").as_deref(),
        Some("stable; random")
    );

    for (path, cookie, rule) in [
        ("/checkout", Some("a=b; beta=1"), "beta"),
        ("/checkout/pay?x=1&preview", None, "preview"),
        ("/checkout/new/cart", None, "new-cart"),
    ] {
        let mut call = mesh.get(path);
        if let Some(cookie) = cookie {
            call = call.header("cookie", cookie);
        }
        let reply = call.send();
        assert_eq!(service(&reply), "v2", "{path} {cookie:?}");
        assert_eq!(
            reply.header("x-canary-decision"),
            Some(format!("canary; rule={rule}"))
        );
    }
    let reply = mesh
        .get("/checkout/old?preview_not=1")
        .header("cookie", "beta=2")
        .send();
    assert_eq!(service(&reply), "v1");

    assert_eq!(mesh.upstream_count("v2"), 4);
    assert_eq!(mesh.upstream_count("v1"), 2);
    let stats = mesh.stats();
    let stat = |name: &str| stats.get(name).copied().unwrap_or(0);
    assert_eq!(
        stat("mesh_canary_requests_total;route=checkout;release=canary;reason=rule;rule=force"),
        1,
        "{stats:?}"
    );
    assert_eq!(
        stat("mesh_canary_requests_total;route=checkout;release=stable;reason=random"),
        2
    );
}

/// Envoy re-matches the route for the router, but the route name later filters read
/// (`xds.route_name`, from the stream info) stays the one chosen before the tag changed:
/// clearing the route cache does not reset it. A filter after canary picks its policy by
/// the original route.
#[test]
fn later_filters_still_see_the_route_chosen_before_the_tag() {
    // traceid runs after canary and counts by the route name it reads.
    let mesh = start(
        Mesh::builder()
            .filter("canary", &checkout_config(RULES_ONLY))
            .filter("traceid", r#"{"default": {}}"#),
    );
    let tagged = mesh
        .get("/checkout")
        .header("x-canary-force", "true")
        .send();
    assert_eq!(service(&tagged), "v2");
    assert_eq!(service(&mesh.get("/checkout").send()), "v1");
    assert_eq!(
        mesh.stat("mesh_trace_requests_total;route=checkout;outcome=started"),
        2,
        "{:?}",
        mesh.stats()
    );
    // A forged tag: Envoy chose checkout-canary, the filter sent the request to v1, and the
    // next filter still reads checkout-canary.
    let forged = mesh.get("/checkout").header("x-canary", "true").send();
    assert_eq!(service(&forged), "v1");
    assert_eq!(
        mesh.stat("mesh_trace_requests_total;route=checkout-canary;outcome=started"),
        1,
        "{:?}",
        mesh.stats()
    );
}

#[test]
fn at_20_percent_2000_users_put_17_to_23_percent_on_v2() {
    let mesh = mesh(SPLIT_20);
    let users = 2000;
    let deadline = Deadline::new();
    let mut on_v2 = 0;
    for i in 0..users {
        deadline.check(i);
        let user = format!("user-{i}");
        let reply = mesh.get("/checkout").header("x-user-id", &user).send();
        let got = service(&reply);
        // The hash is deterministic: each user lands exactly where the policy says.
        assert_eq!(got, expected_service("checkout", &user, 20.0), "{user}");
        if got == "v2" {
            on_v2 += 1;
        }
    }
    assert!(
        (340..=460).contains(&on_v2),
        "{on_v2} of {users} users on v2"
    );
    assert_eq!(mesh.upstream_count("v2"), on_v2);
    assert_eq!(
        mesh.stat("mesh_canary_requests_total;route=checkout;release=canary;reason=sticky"),
        on_v2
    );
}

#[test]
fn one_user_id_sent_50_times_always_reaches_the_same_upstream() {
    let mesh = mesh(SPLIT_20);
    // One user of each cohort, so both answers are shown to hold.
    let canary = (0..)
        .map(|i| format!("user-{i}"))
        .find(|u| expected_service("checkout", u, 20.0) == "v2")
        .unwrap();
    let stable = (0..)
        .map(|i| format!("user-{i}"))
        .find(|u| expected_service("checkout", u, 20.0) == "v1")
        .unwrap();
    for (user, upstream) in [(&canary, "v2"), (&stable, "v1")] {
        for round in 0..50 {
            let reply = mesh.get("/checkout").header("x-user-id", user).send();
            assert_eq!(service(&reply), upstream, "{user}, request {round}");
        }
    }
    assert_eq!(mesh.upstream_count("v2"), 50);
    assert_eq!(mesh.upstream_count("v1"), 50);
}

#[test]
fn a_client_sent_tag_is_ignored_unless_trusted() {
    let mesh = mesh(RULES_ONLY);
    for value in ["true", "false", "v2"] {
        let reply = mesh.get("/checkout").header("x-canary", value).send();
        assert_eq!(service(&reply), "v1", "x-canary: {value}");
        assert_eq!(reply.upstream_header("x-canary"), None, "removed upstream");
    }
    // The forged tag matched checkout-canary first; the filter put the request back.
    assert_eq!(
        mesh.stat("mesh_canary_requests_total;route=checkout-canary;release=stable;reason=random"),
        1,
        "{:?}",
        mesh.stats()
    );
    // A rule still decides such a request.
    let reply = mesh
        .get("/checkout")
        .header("x-canary", "false")
        .header("x-canary-force", "true")
        .send();
    assert_eq!(service(&reply), "v2");
    assert_eq!(reply.upstream_header("x-canary").as_deref(), Some("true"));
    // Every tag the filter decided over is counted, on the route Envoy chose for it.
    let untrusted = |mesh: &Mesh, route: &str| {
        mesh.stat(&format!("mesh_canary_untrusted_tags_total;route={route}"))
    };
    assert_eq!(untrusted(&mesh, "checkout-canary"), 1);
    assert_eq!(untrusted(&mesh, "checkout"), 3);

    let trusted = mesh_trusted();
    let reply = trusted.get("/checkout").header("x-canary", "true").send();
    assert_eq!(service(&reply), "v2");
    assert_eq!(reply.upstream_header("x-canary").as_deref(), Some("true"));
    let reply = trusted.get("/checkout").header("x-canary", "false").send();
    assert_eq!(service(&reply), "v1");
    assert_eq!(reply.upstream_header("x-canary").as_deref(), Some("false"));
    assert_eq!(
        trusted
            .stat("mesh_canary_requests_total;route=checkout-canary;release=canary;reason=trusted"),
        1
    );
    assert_eq!(
        trusted.stat("mesh_canary_requests_total;route=checkout;release=stable;reason=trusted"),
        1
    );
    assert_eq!(
        untrusted(&trusted, "checkout-canary") + untrusted(&trusted, "checkout"),
        0
    );
}

fn mesh_trusted() -> Mesh {
    mesh(r#"{"salt": "checkout", "trust_incoming": true}"#)
}

#[test]
fn a_route_without_policy_is_untouched() {
    let mesh = mesh(r#"{"salt": "checkout", "percent": 100}"#);
    for path in ["/catalog", "/plain", "/unnamed", "/"] {
        let reply = mesh
            .get(path)
            .header("x-canary", "client-value")
            .header("cookie", "beta=1")
            .send();
        assert_eq!(service(&reply), "v1", "{path}");
        assert_eq!(
            reply.upstream_header("x-canary").as_deref(),
            Some("client-value"),
            "{path}"
        );
        assert_eq!(reply.header("set-cookie"), None);
    }
    // The control: the policy's own route is tagged, and it is all the module counted.
    assert_eq!(service(&mesh.get("/checkout").send()), "v2");
    let counted = mesh.nonzero_stats();
    assert!(
        !counted.is_empty() && counted.keys().all(|name| name.contains(";route=checkout;")),
        "{counted:?}"
    );
}

#[test]
fn the_client_address_is_a_sticky_key() {
    // 127.0.0.1's point on salt `checkout` is 0.635: in the canary at 70 %, not at 60 %.
    for (percent, expected) in [(70, "v2"), (60, "v1")] {
        assert_eq!(
            expected_service("checkout", "127.0.0.1", percent.into()),
            expected
        );
        let mesh = mesh(&format!(
            r#"{{"salt": "checkout", "percent": {percent}, "sticky": {{"client_address": true}}}}"#
        ));
        // Every request comes from 127.0.0.1, each on a new connection (a new port): one key.
        for round in 0..10 {
            let reply = mesh.get("/checkout").new_connection().send();
            assert_eq!(service(&reply), expected, "{percent} %, request {round}");
        }
        assert_eq!(
            mesh.stat(&format!(
                "mesh_canary_requests_total;route=checkout;release={};reason=sticky",
                if expected == "v2" { "canary" } else { "stable" }
            )),
            10
        );
    }
}

#[test]
fn the_sticky_cookie_keeps_a_browser_in_its_cohort() {
    let mesh = mesh(
        r#"{"salt": "checkout", "percent": 50, "sticky": {"header": "x-user-id"},
            "sticky_cookie": {"name": "mesh-canary", "max_age_s": 3600}}"#,
    );
    // A user id needs no cookie.
    let reply = mesh.get("/checkout").header("x-user-id", "user-1").send();
    assert_eq!(reply.header("set-cookie"), None);

    let mut cohorts = Vec::new();
    for _ in 0..6 {
        let first = mesh.get("/checkout").send();
        let set_cookie = first
            .header("set-cookie")
            .expect("a new browser gets a cookie");
        let key = set_cookie
            .strip_prefix("mesh-canary=")
            .and_then(|rest| rest.split(';').next())
            .unwrap()
            .to_owned();
        assert_eq!(key.len(), 32, "{set_cookie}");
        assert!(
            set_cookie.ends_with("; Max-Age=3600; Path=/; HttpOnly; SameSite=Lax; Secure"),
            "{set_cookie}"
        );
        let expected = expected_service("checkout", &key, 50.0);
        assert_eq!(service(&first), expected);
        for _ in 0..5 {
            let reply = mesh
                .get("/checkout")
                .header("cookie", format!("other=1; mesh-canary={key}"))
                .send();
            assert_eq!(service(&reply), expected, "{key}");
            assert_eq!(reply.header("set-cookie"), None, "no second cookie");
        }
        cohorts.push(expected);
    }
    assert_eq!(
        mesh.stat("mesh_canary_requests_total;route=checkout;release=canary;reason=random")
            + mesh.stat("mesh_canary_requests_total;route=checkout;release=stable;reason=random"),
        6
    );
}

#[test]
fn stats_reach_prometheus_with_release_reason_and_rule_labels() {
    let mesh = mesh(RULES_ONLY);
    mesh.get("/checkout")
        .header("x-canary-force", "true")
        .send();
    mesh.get("/checkout").send();
    let prometheus = mesh.stats_page("/stats/prometheus");
    assert!(
        prometheus.contains(
            r#"mesh_canary_requests_total{route="checkout",release="canary",reason="rule",rule="force"} 1"#
        ),
        "{prometheus}"
    );
    assert!(
        prometheus.contains(
            r#"mesh_canary_requests_total{route="checkout",release="stable",reason="random"} 1"#
        ),
        "{prometheus}"
    );
}

#[test]
fn config_errors_are_refused_naming_route_and_field() {
    for (config, expected) in [
        (
            r#"{"routes": {"checkout": {"percent": 101}}}"#,
            r#"routes["checkout"].percent: must be at most 100"#,
        ),
        (
            r#"{"routes": {"checkout": {"rules": [{"header": "x-a"}]}}}"#,
            r#"routes["checkout"].rules[0].header: needs a test next to it"#,
        ),
        (
            r#"{"routes": {"checkout": {"sticky": {"header": "x-user-id", "cookies": "a"}}}}"#,
            r#"routes["checkout"].sticky.cookies: unknown field"#,
        ),
    ] {
        Mesh::builder()
            .filter("canary", config)
            .assert_refused(expected);
    }
}
