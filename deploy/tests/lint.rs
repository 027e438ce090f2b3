//! mesh-lint catches each kind of mistake, on the repository's own manifests with one thing
//! changed at a time.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fs;
use std::path::Path;
use std::process::Command;

use mesh_deploy::docs::{self, Doc};
use mesh_deploy::lint::{Finding, Options, Severity, lint};
use mesh_deploy::{oci, repo_root};

fn read(rel: &str) -> String {
    fs::read_to_string(repo_root().join(rel)).unwrap()
}

const ISTIO: [&str; 6] = [
    "istio/demo.yaml",
    "istio/traceid.yaml",
    "istio/canary.yaml",
    "istio/ratelimit.yaml",
    "istio/breaker.yaml",
    "istio/bundle.yaml",
];

/// The repository's Istio manifests, with `edit` applied to the file `rel`.
fn istio_with(rel: &str, edit: impl Fn(String) -> String) -> Vec<Doc> {
    let mut out = Vec::new();
    for file in ISTIO {
        let mut text = read(file);
        if file == rel {
            let edited = edit(text.clone());
            assert_ne!(edited, text, "the edit changed nothing in {rel}");
            text = edited;
        }
        out.extend(docs::parse(file, &text).unwrap());
    }
    out
}

fn findings(docs: &[Doc]) -> Vec<Finding> {
    lint(docs, &Options::default())
}

fn only(findings: &[Finding], severity: Severity) -> &Finding {
    let findings: Vec<&Finding> = findings
        .iter()
        .filter(|f| !f.message.starts_with("route names not checked"))
        .collect();
    let matching: Vec<&Finding> = findings
        .iter()
        .copied()
        .filter(|f| f.severity == severity)
        .collect();
    assert_eq!(matching.len(), 1, "{findings:#?}");
    matching[0]
}

#[test]
fn the_repository_manifests_are_clean() {
    let mut all = istio_with("", |t| t);
    all.extend(docs::parse("envoy/envoy.yaml", &read("envoy/envoy.yaml")).unwrap());
    assert_eq!(findings(&all), vec![]);
}

#[test]
fn a_route_name_no_virtual_service_defines_is_an_error() {
    let found = findings(&istio_with("istio/ratelimit.yaml", |t| {
        t.replace("limited:", "limitted:")
    }));
    let f = only(&found, Severity::Error);
    assert_eq!(f.file, "istio/ratelimit.yaml");
    assert_eq!(f.subject, "WasmPlugin mesh-ratelimit");
    assert_eq!(f.field, r#"spec.pluginConfig.routes["limitted"]"#);
    assert!(f.message.contains("did you mean \"limited\"?"), "{f}");
}

#[test]
fn a_config_the_filter_refuses_is_an_error_with_the_filters_message() {
    let found = findings(&istio_with("istio/breaker.yaml", |t| {
        t.replacen("consecutive_failures: 3", "consecutive_failures: 0", 1)
    }));
    let f = only(&found, Severity::Error);
    assert_eq!(
        f.field,
        r#"spec.pluginConfig.routes["fragile"].consecutive_failures"#
    );
    // What the adapter logs (filters/adapter/src/lib.rs): `<filter> config=rejected plugin=<name>
    // error=<the error>`.
    assert!(f.message.contains(r#""breaker config=rejected ... error=routes["fragile"].consecutive_failures: must be between 1 and 1000000""#), "{f}");

    let found = findings(&istio_with("istio/traceid.yaml", |t| {
        t.replace(
            "emit: [w3c, b3] }\n      checkout-canary",
            "emit: [w3c, b4] }\n      checkout-canary",
        )
    }));
    assert!(
        only(&found, Severity::Error)
            .message
            .contains("unknown variant `b4`")
    );

    // YAML 1.1 (Kubernetes) reads an unquoted `no` as false; here it is a number instead.
    let found = findings(&istio_with("istio/canary.yaml", |t| {
        t.replace(r#"exact: "1""#, "exact: 1")
    }));
    let f = only(&found, Severity::Error);
    assert!(
        f.message
            .contains("invalid type: integer `1`, expected a string"),
        "{f}"
    );
}

#[test]
fn the_bundle_is_checked_stage_by_stage_with_its_own_message() {
    // A stage's config the filter refuses: the bundle's error names the stage.
    let found = findings(&istio_with("istio/bundle.yaml", |t| {
        t.replacen("consecutive_failures: 3", "consecutive_failures: 0", 1)
    }));
    let f = only(&found, Severity::Error);
    assert_eq!(
        f.field,
        r#"spec.pluginConfig.breaker.routes["fragile"].consecutive_failures"#
    );
    assert!(
        f.message.contains(
            r#"error=breaker.routes["fragile"].consecutive_failures: must be between 1 and 1000000"#
        ),
        "{f}"
    );

    // A key that is no stage.
    let found = findings(&istio_with("istio/bundle.yaml", |t| {
        t.replace("    ratelimit:\n", "    ratelimits:\n")
    }));
    let f = only(&found, Severity::Error);
    assert_eq!(f.field, "spec.pluginConfig.ratelimits");
    assert!(
        f.message
            .contains("unknown stage, expected one of traceid, canary, ratelimit, breaker"),
        "{f}"
    );

    // Each stage's routes are checked like the filter's own plugin's.
    let found = findings(&istio_with("istio/bundle.yaml", |t| {
        t.replace("        limited:\n", "        limitted:\n")
    }));
    let f = only(&found, Severity::Error);
    assert_eq!(f.field, r#"spec.pluginConfig.ratelimit.routes["limitted"]"#);

    // The bundle and a separate plugin of one of its filters on the same workloads.
    let found = findings(&istio_with("istio/bundle.yaml", |t| {
        t.replace("app: storefront", "app: frontend")
    }));
    assert!(
        found
            .iter()
            .any(|f| f.file == "istio/bundle.yaml"
                && f.message.contains("select the same workloads")),
        "{found:#?}"
    );
}

#[test]
fn a_canary_value_no_route_matches_is_an_error() {
    let found = findings(&istio_with("istio/canary.yaml", |t| {
        t.replace(
            "salt: checkout\n",
            "salt: checkout\n        value: \"yes\"\n",
        )
    }));
    let errors: Vec<&Finding> = found
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .collect();
    assert_eq!(errors.len(), 2, "{found:#?}");
    assert!(
        errors[0]
            .message
            .contains(r#"tags x-canary: "yes", but no route matches that value"#),
        "{}",
        errors[0]
    );
    assert_eq!(errors[0].field, r#"spec.pluginConfig.routes["checkout"]"#);
}

#[test]
fn a_tagged_twin_without_the_policy_is_an_error_with_the_fix() {
    let found = findings(&istio_with("istio/canary.yaml", |t| {
        t.replace("      checkout-canary: *checkout\n", "")
    }));
    let f = only(&found, Severity::Error);
    assert!(
        f.message.contains(r#"its tagged twin "checkout-canary""#)
            && f.message.contains("any client can reach the canary release")
            && f.message.contains(
                r#"fix: give routes["checkout-canary"] the same canary policy and salt as routes["checkout"]"#
            ),
        "{f}"
    );

    let found = findings(&istio_with("istio/canary.yaml", |t| {
        t.replace(
            "      checkout-canary: *checkout\n",
            "      checkout-canary: {<<: *checkout}\n",
        )
        .replace("{<<: *checkout}", "{percent: 10}")
    }));
    assert!(
        only(&found, Severity::Warning)
            .message
            .contains("different canary policy")
    );
}

#[test]
fn filters_after_canary_want_the_twin_configured_alike() {
    let found = findings(&istio_with("istio/breaker.yaml", |t| {
        t.replace("      fragile:", "      checkout:")
    }));
    let f = only(&found, Severity::Warning);
    assert!(
        f.message.contains(
            r#""checkout" and its tagged twin "checkout-canary" have different breaker policies"#
        ),
        "{f}"
    );
    // The twin layout itself is no error: traceid configures both alike.
    assert!(found.iter().all(|f| f.severity == Severity::Warning));
}

#[test]
fn sha256_missing_or_not_the_built_module_is_an_error() {
    let found = findings(&istio_with("istio/traceid.yaml", |t| {
        t.lines()
            .filter(|l| !l.starts_with("  sha256:"))
            .map(|l| format!("{l}\n"))
            .collect()
    }));
    let f = only(&found, Severity::Error);
    assert_eq!(f.field, "spec.sha256");
    assert!(f.message.starts_with("missing"), "{f}");

    // A dist/ whose traceid module differs from the pinned one.
    let dist = tempfile::tempdir().unwrap();
    let wasm = b"\0asm\x01\0\0\0 another build";
    fs::write(dist.path().join("traceid.wasm"), wasm).unwrap();
    let image = oci::image(wasm, "traceid").unwrap();
    oci::write_layout(&dist.path().join("oci/traceid"), &image, "0.1.0").unwrap();
    let with_dist = Options {
        dist: Some(dist.path().to_path_buf()),
    };
    let docs = docs::parse("istio/traceid.yaml", &read("istio/traceid.yaml")).unwrap();
    let found = lint(&docs, &with_dist);
    let f = only(&found, Severity::Error);
    assert!(
        f.message.contains("manifest digest") && f.message.contains(&image.digest()),
        "{f}"
    );
    // So is a reference by digest, with or without a tag (and a registry port).
    for url in [
        "oci://registry.example.com:5000/mesh-filters/traceid@sha256:0123",
        "oci://registry.example.com/mesh-filters/traceid:0.1.0@sha256:0123",
    ] {
        let by_digest = read("istio/traceid.yaml").replace(
            "url: oci://registry.example.com/mesh-filters/traceid:0.1.0",
            &format!("url: {url}"),
        );
        let docs = docs::parse("t.yaml", &by_digest).unwrap();
        let found = lint(&docs, &with_dist);
        // (Besides the finding that the url's digest is not the pinned one.)
        assert!(
            found.iter().any(|f| f.severity == Severity::Error
                && f.message.contains("is not the manifest digest")
                && f.message.contains(&image.digest())),
            "{url}: {found:#?}"
        );
    }

    // https:// (and file://) urls are checked against the module's own digest.
    let file = read("istio/traceid.yaml").replace(
        "url: oci://registry.example.com/mesh-filters/traceid:0.1.0",
        "url: file:///opt/filters/traceid.wasm",
    );
    let docs = docs::parse("t.yaml", &file).unwrap();
    let found = lint(&docs, &with_dist);
    let f = only(&found, Severity::Error);
    assert!(f.message.contains(&oci::sha256_hex(wasm)), "{f}");
    let https = read("istio/traceid.yaml").replace(
        "url: oci://registry.example.com/mesh-filters/traceid:0.1.0",
        "url: https://artifacts.example.com/traceid.wasm",
    );
    let docs = docs::parse("t.yaml", &https).unwrap();
    let found = lint(&docs, &with_dist);
    assert!(
        only(&found, Severity::Error)
            .message
            .contains(&oci::sha256_hex(wasm))
    );
    let pinned = https
        .lines()
        .map(|l| {
            if l.starts_with("  sha256:") {
                format!("  sha256: {}\n", oci::sha256_hex(wasm))
            } else {
                format!("{l}\n")
            }
        })
        .collect::<String>();
    let docs = docs::parse("t.yaml", &pinned).unwrap();
    let found = lint(&docs, &with_dist);
    assert!(
        found
            .iter()
            .all(|f| f.message.starts_with("route names not checked")),
        "{found:#?}"
    );
}

#[test]
fn a_manifest_istio_would_refuse_is_an_error() {
    let found = findings(&istio_with("istio/canary.yaml", |t| {
        t.replace("failStrategy: FAIL_OPEN", "failStrategy: FAIL_CLOSED")
    }));
    let f = only(&found, Severity::Error);
    assert_eq!(f.field, "spec.failStrategy");
    let found = findings(&istio_with("istio/demo.yaml", |t| {
        t.replacen("headers:", "header:", 1)
    }));
    assert_eq!(only(&found, Severity::Error).subject, "VirtualService shop");
}

#[test]
fn placement_warnings_order_inbound_and_default() {
    // The rate limiter moved ahead of the canary filter: it is the one named, and it runs
    // before canary, not after.
    let found = findings(&istio_with("istio/ratelimit.yaml", |t| {
        t.replace("phase: STATS", "phase: AUTHN")
    }));
    let f = only(&found, Severity::Warning);
    assert_eq!(f.subject, "WasmPlugin mesh-ratelimit");
    assert!(
        f.message.starts_with(
            "runs before WasmPlugin mesh-canary (istio/canary.yaml) on the same workloads, \
             but ratelimit must run after canary"
        ),
        "{}",
        f.message
    );
    let found = findings(&istio_with("istio/breaker.yaml", |t| {
        t.replace("  match:\n  - mode: CLIENT\n", "")
    }));
    assert!(
        only(&found, Severity::Warning)
            .message
            .contains("always named \"default\"")
    );
    let found = findings(&istio_with("istio/demo.yaml", |t| {
        t.replace("  - name: shop\n", "  - name: default\n")
    }));
    assert!(
        found
            .iter()
            .any(|f| f.message.contains("shares its Envoy route name")),
        "{found:#?}"
    );
}

#[test]
fn envoy_configs_are_checked_against_their_own_routes_and_order() {
    let text =
        read("envoy/envoy.yaml").replace(r#""limited": {"limits""#, r#""limted": {"limits""#);
    let found = findings(&docs::parse("envoy/envoy.yaml", &text).unwrap());
    let f = only(&found, Severity::Error);
    assert!(
        f.field.ends_with(r#"configuration.value.routes["limted"]"#),
        "{f}"
    );
    assert!(f.message.contains("no route of this connection manager"));
}

#[test]
fn the_cli_names_file_and_field_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    for file in ISTIO {
        let text = read(file).replace(
            "fragile:\n        consecutive",
            "fragil:\n        consecutive",
        );
        fs::write(dir.path().join(Path::new(file).file_name().unwrap()), text).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-lint"))
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("breaker.yaml: WasmPlugin mesh-breaker: spec.pluginConfig.routes[\"fragil\"]: no VirtualService defines"), "{stdout}");
    let clean = Command::new(env!("CARGO_BIN_EXE_mesh-lint"))
        .arg(repo_root().join("istio"))
        .output()
        .unwrap();
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stdout)
    );
}
