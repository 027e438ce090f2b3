//! What the filters after the canary filter see of Envoy's route re-match, with separate
//! modules and with the bundle (`MESH_MODULES=bundle`): the same, in both.
//!
//! The canary filter tags `/checkout` (route `checkout`, upstream v1) and asks Envoy for the
//! route again: the router re-matches and sends the request to `checkout-canary` (v2). But
//! Envoy does not reset the stream's route for the filters: `xds.route_name` (and
//! `xds.cluster_name`) keep the route chosen before the tag, for a later module and for the
//! filter that changed the header alike. The bundle's later stages therefore use that route,
//! as the separate modules after the canary module do.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use mesh_integration::{Mesh, Modules, Reply};

/// Tags `/checkout` when the request has `x-canary-force: true`.
const CANARY: &str = r#"{"routes": {"checkout": {"salt": "checkout",
    "rules": [{"name": "force", "header": "x-canary-force", "exact": "true"}]}}}"#;

/// Different bursts (the `X-RateLimit-Limit` value) tell which route's policy a request got.
const RATELIMIT: &str = r#"{"routes": {
    "checkout": {"limits": [{"rate_per_s": 1, "burst": 5}]},
    "checkout-canary": {"limits": [{"rate_per_s": 1, "burst": 7}]}
}}"#;

/// The fixture alone, on the demo routes.
fn fixture_only() -> Mesh {
    Mesh::builder()
        .fixture()
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn header(reply: &Reply, name: &str) -> String {
    reply
        .upstream_header(name)
        .unwrap_or_else(|| panic!("upstream saw no {name}: {}", reply.text()))
}

#[test]
fn the_stages_after_the_canary_tag_use_the_route_chosen_before_it() {
    let mesh = Mesh::builder()
        .filter("canary", CANARY)
        .filter("ratelimit", RATELIMIT)
        .fixture()
        .start()
        .unwrap_or_else(|e| panic!("{e}"));

    // The run loads what it says: the bundle, or the filters' own modules.
    let plugin = Modules::current().plugin("ratelimit");
    let log = mesh.envoy_log();
    assert!(
        log.lines()
            .any(|l| l.contains(&plugin) && l.contains("ratelimit config=loaded")),
        "no config line from {plugin}"
    );

    let tagged = mesh
        .get("/checkout")
        .header("x-canary-force", "true")
        .send();
    // The router re-matched: the tagged request went to checkout-canary's upstream...
    assert_eq!(tagged.service().as_deref(), Some("v2"), "{}", tagged.text());
    assert_eq!(header(&tagged, "x-canary"), "true");
    // ...but the rate limiter after the canary filter applied checkout's policy,
    assert_eq!(tagged.header("x-ratelimit-limit").as_deref(), Some("5"));
    // because a filter after it still reads the route (and cluster) of before the tag.
    assert_eq!(header(&tagged, "x-fixture-route"), "checkout");
    assert_eq!(header(&tagged, "x-fixture-cluster"), "v1");

    let untagged = mesh.get("/checkout").send();
    assert_eq!(untagged.service().as_deref(), Some("v1"));
    assert_eq!(untagged.header("x-ratelimit-limit").as_deref(), Some("5"));

    let counted = |route: &str| {
        mesh.stat(&format!(
            "mesh_ratelimit_requests_total;route={route};decision=allowed"
        ))
    };
    assert_eq!(counted("checkout"), 2, "{:?}", mesh.stats());
    // checkout-canary's policy never ran: the route was never bound, its stats never defined.
    let stats = mesh.stats();
    assert!(
        !stats
            .keys()
            .any(|name| name.contains("route=checkout-canary")),
        "{stats:?}"
    );
}

/// The same inside one filter: after it sets the tag and asks for the route again, it still
/// reads the old route, though the router sends the request to the new one.
#[test]
fn a_filter_reads_the_old_route_after_it_changed_the_header_itself() {
    let mesh = fixture_only();
    let reply = mesh
        .get("/checkout")
        .header("x-fixture-tag", "x-canary=true")
        .send();
    assert_eq!(reply.service().as_deref(), Some("v2"), "{}", reply.text());
    assert_eq!(header(&reply, "x-fixture-route"), "checkout");
    assert_eq!(header(&reply, "x-fixture-route-after"), "checkout");
    assert_eq!(header(&reply, "x-fixture-cluster-after"), "v1");
}

/// Envoy 1.40 re-matches the route by itself when a wasm filter (on the SDK's ABI 0.2.1) adds
/// a request header, even after the route was chosen and without a `clear_route_cache` call:
/// the fixture reads `xds.route_name` first (Envoy picks `checkout`), then only sets the tag.
/// The canary filter still asks for the re-match (`filters/canary`): newer ABIs need it.
#[test]
fn envoy_rematches_after_a_header_write_without_being_asked() {
    let mesh = fixture_only();
    let reply = mesh
        .get("/checkout")
        .header("x-fixture-tag-only", "x-canary=true")
        .send();
    assert_eq!(header(&reply, "x-fixture-route"), "checkout");
    assert_eq!(header(&reply, "x-canary"), "true");
    assert_eq!(reply.service().as_deref(), Some("v2"), "{}", reply.text());
    // Without the tag, the same request stays on v1.
    let plain = mesh.get("/checkout").send();
    assert_eq!(plain.service().as_deref(), Some("v1"), "{}", plain.text());
}
