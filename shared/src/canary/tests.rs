// On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
use proptest::prelude::*;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;
use crate::config::{Envelope, FieldPath, HeaderName, parse_json};
use crate::fake::FakeHost;

fn policy(json: &str) -> CanaryPolicy {
    let config: CanaryConfig = parse_json(json.as_bytes()).unwrap();
    CanaryPolicy::compile(config, &FieldPath::root()).unwrap()
}

fn compile_err(json: &str) -> String {
    let envelope = Envelope::<CanaryConfig>::from_json(json.as_bytes());
    match envelope.and_then(|e| e.compile(&FieldPath::root(), CanaryPolicy::compile)) {
        Ok(_) => panic!("{json} should be rejected"),
        Err(err) => err.to_string(),
    }
}

fn route_err(policy_json: &str) -> String {
    compile_err(&format!(r#"{{"routes": {{"checkout": {policy_json}}}}}"#))
}

fn decide(policy: &CanaryPolicy, host: &mut FakeHost) -> Decision {
    policy.decide(b"checkout", host)
}

fn get(path: &str) -> FakeHost {
    FakeHost::new().with_request_header(":path", path)
}

#[test]
fn defaults() {
    let p = policy("{}");
    assert_eq!(p.header.as_str(), "x-canary");
    assert_eq!(p.value, "true");
    assert!(!p.trust_incoming);
    assert!(p.rules.is_empty());
    assert_eq!(p.percent, Percent::ZERO);
    assert_eq!(p.sticky, Sticky::default());
    assert_eq!(p.sticky_cookie, None);
    assert_eq!(p.salt, None);
    assert_eq!(p.response_header, None);
    let p = policy(r#"{"sticky_cookie": {}, "rules": [{"path_prefix": "/x"}]}"#);
    assert_eq!(
        p.sticky_cookie,
        Some(StickyCookie {
            name: "mesh-canary".into(),
            max_age_s: DEFAULT_COOKIE_MAX_AGE_S,
            secure: true
        })
    );
    assert_eq!(p.rules[0].name, "0");
    assert_eq!(p.rules[0].release, Release::Canary);
}

#[test]
fn a_full_config_compiles() {
    let p = policy(
        r#"{
            "header": "X-Release", "value": "v2", "trust_incoming": true,
            "rules": [
                {"name": "force", "header": "x-canary-force", "exact": "true"},
                {"name": "beta", "cookie": "beta", "present": true},
                {"name": "opt-out", "query": "stable", "prefix": "y", "release": "stable"},
                {"path_prefix": "/new"}
            ],
            "percent": 12.5,
            "sticky": {"header": "x-user-id", "cookie": "uid", "client_address": true},
            "salt": "checkout",
            "response_header": "x-canary-decision"
        }"#,
    );
    assert_eq!(p.header.as_str(), "x-release");
    assert_eq!(p.percent, Percent::from_millionths(12_500_000));
    assert_eq!(
        p.rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["force", "beta", "opt-out", "3"]
    );
    assert_eq!(
        p.rules[2].target,
        Target::Query("stable".into(), Test::Prefix("y".into()))
    );
    assert_eq!(p.rules[2].release, Release::Stable);
    assert_eq!(
        p.sticky,
        Sticky {
            header: Some(HeaderName::parse("x-user-id", &FieldPath::root()).unwrap()),
            cookie: Some("uid".into()),
            client_address: true,
        }
    );
}

#[test]
fn config_errors_name_route_and_field() {
    let cases = [
        (
            r#"{"percent": 101}"#,
            r#"routes["checkout"].percent: must be at most 100"#,
        ),
        (
            r#"{"percent": -0.5}"#,
            r#"routes["checkout"].percent: invalid value: floating point `-0.5`, expected a number from 0 to 100 with at most 6 decimals"#,
        ),
        (
            r#"{"percent": "20"}"#,
            r#"routes["checkout"].percent: invalid type: string "20", expected a number from 0 to 100 with at most 6 decimals"#,
        ),
        (
            r#"{"percnt": 20}"#,
            r#"routes["checkout"].percnt: unknown field `percnt`, expected one of `header`, `value`, `trust_incoming`, `rules`, `percent`, `sticky`, `sticky_cookie`, `salt`, `response_header`"#,
        ),
        (
            r#"{"header": "x canary"}"#,
            r#"routes["checkout"].header: header name "x canary" has character ' ', which HTTP does not allow in a name"#,
        ),
        (
            r#"{"value": ""}"#,
            r#"routes["checkout"].value: "" is not a usable header value: printable ASCII, not empty, no spaces at either end"#,
        ),
        (
            r#"{"value": "a\nb"}"#,
            r#"routes["checkout"].value: "a?b" is not a usable header value"#,
        ),
        (
            r#"{"rules": [{"path_prefix": "/a"}, {"exact": "1"}]}"#,
            r#"routes["checkout"].rules[1]: needs one of "header", "cookie", "query", "path_prefix""#,
        ),
        (
            r#"{"rules": [{"header": "x-a", "cookie": "b", "present": true}]}"#,
            r#"routes["checkout"].rules[0].cookie: a rule looks at one thing: write two rules"#,
        ),
        (
            r#"{"rules": [{"header": "x-a"}]}"#,
            r#"routes["checkout"].rules[0].header: needs a test next to it: "exact", "prefix" or "present""#,
        ),
        (
            r#"{"rules": [{"header": "x-a", "exact": "1", "present": true}]}"#,
            r#"routes["checkout"].rules[0].present: a rule has one test: "exact", "prefix" or "present""#,
        ),
        (
            r#"{"rules": [{"path_prefix": "/a", "exact": "1"}]}"#,
            r#"routes["checkout"].rules[0].path_prefix: is its own test: it takes no "exact", "prefix" or "present""#,
        ),
        (
            r#"{"rules": [{"path_prefix": "a"}]}"#,
            r#"routes["checkout"].rules[0].path_prefix: "a" must start with '/'"#,
        ),
        (
            r#"{"rules": [{"header": "X-Canary", "exact": "true"}]}"#,
            r#"routes["checkout"].rules[0].header: "X-Canary" is the tag header itself"#,
        ),
        (
            r#"{"rules": [{"header": "a:b", "present": true}]}"#,
            r#"routes["checkout"].rules[0].header: header name "a:b" has character ':'"#,
        ),
        (
            r#"{"rules": [{"cookie": "a b", "present": true}]}"#,
            r#"routes["checkout"].rules[0].cookie: "a b" is not a cookie name"#,
        ),
        (
            r#"{"rules": [{"query": "", "present": true}]}"#,
            r#"routes["checkout"].rules[0].query: the parameter name is empty"#,
        ),
        (
            r#"{"rules": [{"header": "x-a", "present": "yes"}]}"#,
            r#"routes["checkout"].rules[0].present: invalid type: string "yes", expected a boolean"#,
        ),
        (
            r#"{"rules": [{"path_prefix": "/a", "release": "v2"}]}"#,
            r#"routes["checkout"].rules[0].release: unknown variant `v2`, expected `canary` or `stable`"#,
        ),
        (
            r#"{"rules": [{"name": "a", "path_prefix": "/a"}, {"name": "a", "path_prefix": "/b"}]}"#,
            r#"routes["checkout"].rules[1].name: "a" names two rules"#,
        ),
        (
            r#"{"rules": [{"name": "a;b", "path_prefix": "/a"}]}"#,
            r#"routes["checkout"].rules[0].name: "a;b" is not a usable stats label"#,
        ),
        (
            r#"{"sticky": [{"header": "x-user-id"}]}"#,
            r#"routes["checkout"].sticky: invalid type: sequence, expected an object"#,
        ),
        (
            r#"{"sticky": {"query": "b"}}"#,
            r#"routes["checkout"].sticky.query: unknown field `query`, expected one of `header`, `cookie`, `client_address`"#,
        ),
        (
            r#"{"sticky": {"client_address": "yes"}}"#,
            r#"routes["checkout"].sticky.client_address: invalid type: string "yes", expected a boolean"#,
        ),
        (
            r#"{"sticky": {"header": "x-canary"}}"#,
            r#"routes["checkout"].sticky.header: "x-canary" is the tag header itself"#,
        ),
        (
            r#"{"sticky": {"cookie": "a;"}}"#,
            r#"routes["checkout"].sticky.cookie: "a;" is not a cookie name"#,
        ),
        (
            r#"{"sticky_cookie": {"name": "c", "max_age_s": 0}}"#,
            r#"routes["checkout"].sticky_cookie.max_age_s: must be at least 1"#,
        ),
        (
            r#"{"sticky_cookie": {"name": "c=d"}}"#,
            r#"routes["checkout"].sticky_cookie.name: "c=d" is not a cookie name"#,
        ),
        (
            r#"{"sticky": {"client_address": true}, "sticky_cookie": {}}"#,
            r#"routes["checkout"].sticky_cookie: is never used: sticky.client_address gives every request a key"#,
        ),
        (
            r#"{"salt": ""}"#,
            r#"routes["checkout"].salt: must not be empty"#,
        ),
        (
            r#"{"response_header": ""}"#,
            r#"routes["checkout"].response_header: header name is empty"#,
        ),
    ];
    for (json, expected) in cases {
        let err = route_err(json);
        assert!(
            err.starts_with(expected),
            "{json}:\n  got  {err}\n  want {expected}"
        );
    }
}

#[test]
fn rules_match_headers_cookies_queries_and_paths() {
    let p = policy(
        r#"{"rules": [
            {"name": "exact", "header": "x-force", "exact": "yes"},
            {"name": "prefix", "header": "user-agent", "prefix": "beta-"},
            {"name": "absent", "header": "x-never", "present": false, "release": "stable"}
        ]}"#,
    );
    let reason = |host: &mut FakeHost| decide(&p, host).reason;
    assert_eq!(
        reason(&mut FakeHost::new().with_request_header("x-force", "yes")),
        Reason::Rule(0)
    );
    assert_eq!(
        reason(
            &mut FakeHost::new()
                .with_request_header("x-force", "YES")
                .with_request_header("user-agent", "beta-app/1")
        ),
        Reason::Rule(1)
    );
    let mut host = FakeHost::new().with_request_header("x-force", b"yes\xff");
    let d = decide(&p, &mut host);
    assert_eq!((d.reason, d.release), (Reason::Rule(2), Release::Stable));

    let p = policy(
        r#"{"rules": [
            {"cookie": "beta", "exact": "1"},
            {"query": "canary", "present": true},
            {"path_prefix": "/checkout/new"}
        ], "percent": 0}"#,
    );
    let reason = |host: &mut FakeHost| decide(&p, host).reason;
    assert_eq!(
        reason(&mut get("/").with_request_header("cookie", "a=b; beta=1")),
        Reason::Rule(0)
    );
    assert_eq!(
        reason(&mut get("/").with_request_header("cookie", "beta=2")),
        Reason::Random
    );
    assert_eq!(reason(&mut get("/x?a=1&canary")), Reason::Rule(1));
    assert_eq!(reason(&mut get("/x?canaryx=1")), Reason::Random);
    assert_eq!(reason(&mut get("/checkout/new/cart?x=1")), Reason::Rule(2));
    assert_eq!(reason(&mut get("/checkout?/checkout/new")), Reason::Random);
    assert_eq!(reason(&mut FakeHost::new()), Reason::Random, "no :path");
}

#[test]
fn first_matching_rule_wins_and_sets_its_release() {
    let p = policy(
        r#"{"rules": [
            {"name": "out", "header": "x-opt-out", "present": true, "release": "stable"},
            {"name": "in", "header": "x-opt-in", "present": true}
        ], "percent": 100}"#,
    );
    let mut host = FakeHost::new()
        .with_request_header("x-opt-out", "")
        .with_request_header("x-opt-in", "");
    let d = decide(&p, &mut host);
    assert_eq!(d.release, Release::Stable);
    assert_eq!(d.reason, Reason::Rule(0));
    assert_eq!(d.tag, TagEdit::Keep);
    assert_eq!(p.describe(&d), "stable; rule=out");
    let mut host = FakeHost::new().with_request_header("x-opt-in", "");
    let d = decide(&p, &mut host);
    assert_eq!((d.release, d.tag), (Release::Canary, TagEdit::Set));
    assert_eq!(p.describe(&d), "canary; rule=in");
}

#[test]
fn an_untrusted_tag_is_ignored_and_removed() {
    let p = policy(r#"{"percent": 0}"#);
    let mut host = FakeHost::new().with_request_header("x-canary", "true");
    let d = decide(&p, &mut host);
    assert_eq!(d.release, Release::Stable);
    assert_eq!(d.tag, TagEdit::Remove);
    assert_ne!(d.reason, Reason::Trusted);
    assert!(d.untrusted_tag);
    // Without an incoming tag, a stable request needs no edit.
    let d = decide(&p, &mut FakeHost::new());
    assert_eq!((d.release, d.tag), (Release::Stable, TagEdit::Keep));
    assert!(!d.untrusted_tag);
    // A canary decision overwrites whatever the client sent.
    let p = policy(r#"{"percent": 100, "value": "v2"}"#);
    let mut host = FakeHost::new().with_request_header("x-canary", "forged");
    let d = decide(&p, &mut host);
    assert_eq!((d.release, d.tag), (Release::Canary, TagEdit::Set));
    assert!(d.untrusted_tag);
}

#[test]
fn a_trusted_tag_is_kept_and_obeyed() {
    let p = policy(
        r#"{"trust_incoming": true, "value": "v2", "percent": 100,
            "rules": [{"header": "x-force", "present": true, "release": "stable"}]}"#,
    );
    let mut host = FakeHost::new()
        .with_request_header("x-canary", "v2")
        .with_request_header("x-force", "");
    let d = decide(&p, &mut host);
    assert_eq!(
        (d.release, d.reason, d.tag),
        (Release::Canary, Reason::Trusted, TagEdit::Keep)
    );
    assert!(!d.untrusted_tag);
    assert_eq!(p.describe(&d), "canary; trusted");
    let mut host = FakeHost::new().with_request_header("x-canary", "v1");
    let d = decide(&p, &mut host);
    assert_eq!(
        (d.release, d.reason, d.tag),
        (Release::Stable, Reason::Trusted, TagEdit::Keep)
    );
    // Untagged requests are decided as usual.
    let mut host = FakeHost::new().with_request_header("x-force", "");
    assert_eq!(decide(&p, &mut host).reason, Reason::Rule(0));
}

fn split_policy(percent: f64) -> CanaryPolicy {
    policy(&format!(
        r#"{{"percent": {percent}, "sticky": {{"header": "x-user-id"}}}}"#
    ))
}

fn canary_users(p: &CanaryPolicy, salt: &[u8], users: usize) -> Vec<usize> {
    (0..users)
        .filter(|i| {
            let mut host = FakeHost::new().with_request_header("x-user-id", format!("user-{i}"));
            let d = p.decide(salt, &mut host);
            assert_eq!(d.reason, Reason::Sticky);
            d.release == Release::Canary
        })
        .collect()
}

#[test]
fn the_split_is_sticky_by_key_and_close_to_the_percent() {
    let p = split_policy(20.0);
    let canary = canary_users(&p, b"checkout", 2000);
    assert!((340..=460).contains(&canary.len()), "{}", canary.len());
    // The same key always gets the same answer, whatever the host's randomness.
    for i in [canary[0], canary[1]] {
        for seed in 0..20u64 {
            let mut host = FakeHost::new().with_request_header("x-user-id", format!("user-{i}"));
            host.script_random(&[seed, u64::MAX - seed]);
            assert_eq!(decide(&p, &mut host).release, Release::Canary);
        }
    }
}

#[test]
fn raising_the_percent_only_adds_keys() {
    let at_10 = canary_users(&split_policy(10.0), b"checkout", 1000);
    let at_30 = canary_users(&split_policy(30.0), b"checkout", 1000);
    assert!(at_10.iter().all(|i| at_30.contains(i)));
    assert!(at_30.len() > at_10.len());
    assert!(canary_users(&split_policy(0.0), b"checkout", 1000).is_empty());
    assert_eq!(
        canary_users(&split_policy(100.0), b"checkout", 1000).len(),
        1000
    );
    let fractional = canary_users(&split_policy(0.5), b"checkout", 20_000).len();
    assert!((60..=140).contains(&fractional), "{fractional}");
}

#[test]
fn routes_with_other_salts_have_other_cohorts() {
    let p = split_policy(50.0);
    let checkout = canary_users(&p, b"checkout", 1000);
    let catalog = canary_users(&p, b"catalog", 1000);
    let both = checkout.iter().filter(|i| catalog.contains(i)).count();
    // Independent halves overlap by about a quarter.
    assert!((180..=320).contains(&both), "{both}");
}

#[test]
fn the_first_present_key_is_used_and_empty_keys_are_absent() {
    let p = policy(
        r#"{"percent": 50, "sticky": {"header": "x-user-id", "cookie": "uid", "client_address": true}}"#,
    );
    let point_of = |key: &str| point(b"checkout", key.as_bytes());
    let expect = |key: &str| p.release_at(point_of(key));
    let mut host = FakeHost::new()
        .with_request_header("x-user-id", "")
        .with_request_header("cookie", "uid=\"u-7\"")
        .with_property(&["source", "address"], "10.0.0.1:5000");
    assert_eq!(decide(&p, &mut host).release, expect("u-7"));
    // The client address without its port: one client, one key.
    for port in 1000..1040 {
        let mut host =
            FakeHost::new().with_property(&["source", "address"], format!("10.0.0.9:{port}"));
        let d = decide(&p, &mut host);
        assert_eq!((d.reason, d.release), (Reason::Sticky, expect("10.0.0.9")));
    }
}

#[test]
fn without_a_key_the_host_draws() {
    let p = split_policy(20.0);
    // The client address is a key only when asked for.
    let mut host = FakeHost::new().with_property(&["source", "address"], "10.0.0.9:1000");
    assert_eq!(decide(&p, &mut host).reason, Reason::Random);
    let mut host = FakeHost::new();
    host.script_random(&[0, u64::MAX]);
    let d = decide(&p, &mut host);
    assert_eq!((d.release, d.reason), (Release::Canary, Reason::Random));
    assert_eq!(p.describe(&d), "canary; random");
    let d = decide(&p, &mut host);
    assert_eq!((d.release, d.reason), (Release::Stable, Reason::Random));
    assert_eq!(d.new_sticky_key, None);
    // The draw splits at the percent: just under a fifth of the range is canary, just over
    // is stable.
    let fifth = u64::MAX / 5;
    host.script_random(&[fifth - (1 << 20), fifth + (1 << 20)]);
    assert_eq!(decide(&p, &mut host).release, Release::Canary);
    assert_eq!(decide(&p, &mut host).release, Release::Stable);
    // And over many draws the share is the percent.
    let canary = (0..10_000)
        .filter(|_| decide(&p, &mut host).release == Release::Canary)
        .count();
    assert!(
        (1_800..=2_200).contains(&canary),
        "{canary} of 10,000 drawn canary"
    );
}

#[test]
fn the_sticky_cookie_mints_a_key_and_then_keys_on_it() {
    let p = policy(
        r#"{"percent": 50, "sticky": {"header": "x-user-id"}, "sticky_cookie": {"name": "mc"}}"#,
    );
    let mut host = FakeHost::new();
    host.script_random(&[0x0123_4567_89ab_cdef, 1]);
    let d = decide(&p, &mut host);
    let key = d.new_sticky_key.clone().unwrap();
    assert_eq!(key, "0123456789abcdef0000000000000001");
    assert_eq!(d.reason, Reason::Random);
    assert_eq!(d.release, p.release_at(point(b"checkout", key.as_bytes())));
    // The browser sends it back: the same answer, from the key, no new cookie.
    let mut host = FakeHost::new().with_request_header("cookie", format!("a=1; mc={key}"));
    let again = decide(&p, &mut host);
    assert_eq!(
        (again.release, again.reason, again.new_sticky_key),
        (d.release, Reason::Sticky, None)
    );
    // A configured key comes first.
    let mut host = FakeHost::new()
        .with_request_header("x-user-id", "u-1")
        .with_request_header("cookie", format!("mc={key}"));
    let d = decide(&p, &mut host);
    assert_eq!(d.release, p.release_at(point(b"checkout", b"u-1")));
    assert_eq!(
        p.sticky_cookie.as_ref().unwrap().set_cookie(&key),
        format!("mc={key}; Max-Age=2592000; Path=/; HttpOnly; SameSite=Lax; Secure")
    );
}

#[test]
fn a_rule_decision_mints_no_cookie() {
    let p = policy(r#"{"sticky_cookie": {"name": "mc"}, "rules": [{"path_prefix": "/"}]}"#);
    let d = decide(&p, &mut get("/a"));
    assert_eq!((d.reason, d.new_sticky_key), (Reason::Rule(0), None));
}

proptest! {
    #[test]
    fn decide_never_panics_and_its_edit_fits_the_release(
        tag in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        path in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
        cookie in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
        user in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..100)),
        address in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..60)),
        trust in any::<bool>(),
        by_address in any::<bool>(),
        percent in 0..=100_000_000u64,
    ) {
        let percent = format!("{}.{:06}", percent / 1_000_000, percent % 1_000_000);
        // The sticky cookie goes with every key source but the address (which refuses it).
        let last_key = if by_address { "" } else { r#", "sticky_cookie": {"name": "mc"}"# };
        let p = policy(&format!(
            r#"{{"trust_incoming": {trust}, "percent": {percent},
                "rules": [
                    {{"cookie": "beta", "prefix": "y"}},
                    {{"query": "canary", "exact": "1"}},
                    {{"path_prefix": "/new", "release": "stable"}}
                ],
                "sticky": {{"header": "x-user-id", "cookie": "uid", "client_address": {by_address}}}
                {last_key}}}"#
        ));
        let mut host = FakeHost::new();
        for (name, value) in [("x-canary", &tag), (":path", &path), ("cookie", &cookie), ("x-user-id", &user)] {
            if let Some(value) = value {
                host = host.with_request_header(name, value);
            }
        }
        if let Some(address) = &address {
            host = host.with_property(&["source", "address"], address);
        }
        let d = decide(&p, &mut host);
        match (d.release, d.tag) {
            (_, TagEdit::Keep) => prop_assert!(
                d.reason == Reason::Trusted || (d.release == Release::Stable && tag.is_none())
            ),
            (Release::Canary, TagEdit::Set) | (Release::Stable, TagEdit::Remove) => {
                prop_assert_ne!(d.reason, Reason::Trusted)
            }
            other => prop_assert!(false, "{other:?}"),
        }
        if let Some(key) = &d.new_sticky_key {
            prop_assert_eq!(key.len(), 32);
        }
    }

    #[test]
    fn a_key_always_gets_the_same_release(
        key in proptest::collection::vec(any::<u8>(), 1..64),
        percent in 0..=100u32,
        draws in any::<[u64; 2]>(),
    ) {
        let p = split_policy(f64::from(percent));
        let release = |draws: &[u64]| {
            let mut host = FakeHost::new().with_request_header("x-user-id", &key);
            host.script_random(draws);
            decide(&p, &mut host).release
        };
        prop_assert_eq!(release(&draws), release(&[draws[1], draws[0]]));
    }
}

#[test]
fn a_point_at_the_percent_is_stable_and_zero_percent_is_never_canary() {
    // The split is `point < percent`: the lowest point (a draw of 0) with 0 % stays stable,
    // and a point exactly at the percent is above the canary's share.
    let p = split_policy(0.0);
    let mut host = FakeHost::new();
    host.script_random(&[0, 0, 0]);
    assert_eq!(decide(&p, &mut host).release, Release::Stable);
    assert_eq!(split_policy(0.0).release_at(0.0), Release::Stable);
    assert_eq!(split_policy(20.0).release_at(0.2), Release::Stable);
    assert_eq!(split_policy(20.0).release_at(0.199_999), Release::Canary);
    assert_eq!(split_policy(100.0).release_at(0.999_999), Release::Canary);
}

#[test]
fn every_release_and_reason_is_counted_with_each_rules_own() {
    let p = policy(
        r#"{"rules": [{"name": "force", "header": "x-force", "present": true}, {"path_prefix": "/old", "release": "stable"}]}"#,
    );
    let counted: Vec<_> = p.counted().collect();
    assert_eq!(
        counted,
        [
            (Release::Canary, Reason::Trusted),
            (Release::Canary, Reason::Sticky),
            (Release::Canary, Reason::Random),
            (Release::Stable, Reason::Trusted),
            (Release::Stable, Reason::Sticky),
            (Release::Stable, Reason::Random),
            (Release::Canary, Reason::Rule(0)),
            (Release::Stable, Reason::Rule(1)),
        ]
    );
    let names = [
        Reason::Rule(0),
        Reason::Rule(1),
        Reason::Rule(2),
        Reason::Sticky,
    ];
    assert_eq!(
        names.map(|r| p.rule_name(r)),
        [Some("force"), Some("1"), None, None]
    );
}

#[test]
fn the_cohorts_are_salted_by_the_salt_else_the_route() {
    assert_eq!(policy("{}").cohort_salt("checkout"), b"checkout");
    let salted = policy(r#"{"salt": "shared"}"#);
    assert_eq!(salted.cohort_salt("checkout"), b"shared");
}

#[test]
fn the_response_gets_the_header_and_cookie_the_policy_names() {
    let decision = |new_sticky_key: Option<&str>| Decision {
        release: Release::Canary,
        reason: Reason::Random,
        tag: TagEdit::Set,
        untrusted_tag: false,
        new_sticky_key: new_sticky_key.map(str::to_owned),
    };
    assert_eq!(policy("{}").response(&decision(None)), Response::default());
    let debug = policy(r#"{"response_header": "x-canary-decision"}"#);
    assert_eq!(
        debug.response(&decision(Some("k"))),
        Response {
            decision: Some("canary; random".into()),
            set_cookie: None,
        }
    );
    let sticky = policy(r#"{"sticky_cookie": {"name": "c", "max_age_s": 60}}"#);
    let cookie = sticky.sticky_cookie.as_ref().unwrap();
    assert_eq!(sticky.response(&decision(None)), Response::default());
    assert_eq!(
        sticky.response(&decision(Some("k"))),
        Response {
            decision: None,
            set_cookie: Some(cookie.set_cookie("k")),
        }
    );
}

/// A request that already carries the canary's tag once, and is decided canary, needs no
/// write (a host call and a route chosen again); a tag sent twice is rewritten to one value.
#[test]
fn an_incoming_tag_the_decision_agrees_with_is_left_alone() {
    let p = policy(r#"{"percent": 100}"#);
    let mut once = FakeHost::new().with_request_header("x-canary", "true");
    let d = decide(&p, &mut once);
    assert_eq!((d.release, d.tag), (Release::Canary, TagEdit::Keep));
    let mut twice = FakeHost::new()
        .with_request_header("x-canary", "true")
        .with_request_header("x-canary", "true");
    let d = decide(&p, &mut twice);
    assert_eq!((d.release, d.tag), (Release::Canary, TagEdit::Set));
    let mut other = FakeHost::new().with_request_header("x-canary", "yes");
    assert_eq!(decide(&p, &mut other).tag, TagEdit::Set);
}

#[test]
fn the_decision_header_is_the_policys_name_with_the_description() {
    let described = Response {
        decision: Some("stable; sticky".into()),
        set_cookie: None,
    };
    let debug = policy(r#"{"response_header": "x-canary-decision"}"#);
    assert_eq!(
        debug.decision_header(&described),
        Some(("x-canary-decision", &b"stable; sticky"[..]))
    );
    assert_eq!(debug.decision_header(&Response::default()), None);
    assert_eq!(policy("{}").decision_header(&described), None);
}
