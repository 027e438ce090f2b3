//! The committed plugin schemas and the configuration reference rendered from them are
//! current; the schemas refuse what the filters refuse as a shape error and accept what the
//! filters accept; their defaults are what leaving a field out gives; every map in them is
//! data-keyed; the bundle's is the four filters' side by side.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use mesh_deploy::docs;
use mesh_deploy::filters::Kind;
use mesh_deploy::plugin_json;
use mesh_deploy::schema::{bundle_schema, file_name, plugin_schema, render, render_bundle};
use mesh_deploy::{reference, repo_root};
use mesh_policy::config::{ConfigError, DATA_KEYED};
use serde_json::{Value, json};

const STALE: &str = "is stale: run `cargo run -p mesh-deploy --bin mesh-schema` and commit it";

#[test]
fn committed_schemas_are_current() {
    for kind in Kind::ALL {
        let path = repo_root().join("istio/schema").join(file_name(kind));
        let committed = fs::read_to_string(&path).unwrap_or_default();
        assert!(committed == render(kind), "{} {STALE}", path.display());
    }
    let path = repo_root().join("istio/schema/bundle.schema.json");
    assert!(
        fs::read_to_string(&path).unwrap_or_default() == render_bundle(),
        "{} {STALE}",
        path.display()
    );
}

#[test]
fn committed_reference_pages_are_current() {
    let dir = repo_root().join("docs/config");
    let pages = Kind::ALL
        .into_iter()
        .map(|kind| (reference::file_name(kind), reference::page(kind)))
        .chain([(reference::INDEX.to_owned(), reference::index())]);
    for (name, text) in pages {
        let path = dir.join(name);
        let committed = fs::read_to_string(&path).unwrap_or_default();
        assert!(committed == text, "{} {STALE}", path.display());
    }
}

/// The pages link each filter's chapter of the book, which has the page's title (the links
/// themselves resolve: tests/docs.rs), and the index's bundle example is one the bundle takes.
#[test]
fn the_reference_links_and_examples_hold() {
    for kind in Kind::ALL {
        let (heading, chapter) = reference::guide(kind);
        let text = fs::read_to_string(repo_root().join("docs").join(chapter)).unwrap();
        assert!(
            text.lines().next() == Some(format!("# {heading}").as_str()),
            "docs/{chapter} does not start with \"# {heading}\""
        );
        assert!(reference::page(kind).contains(&format!("](../{chapter})")));
    }
    let example: Value = serde_json::from_str(reference::BUNDLE_EXAMPLE).unwrap();
    mesh_deploy::filters::configure_bundle(example.to_string().as_bytes()).unwrap();
    assert!(
        jsonschema::validator_for(&bundle_schema())
            .unwrap()
            .is_valid(&example)
    );
}

/// `#/$defs/<name>` → the definition, through any chain of references.
fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        Some(name) => resolve(root, &root["$defs"][name]),
        None => node,
    }
}

/// The bundle's schema is the four filters' envelopes under their stage keys, their
/// definitions side by side (no two types under one name): what each filter's schema accepts
/// there, it accepts; a key that is no stage, it refuses, as the bundle's reader does.
#[test]
fn the_bundle_schema_composes_the_filters_schemas() {
    let bundle_json = bundle_schema();
    let mut defs = BTreeSet::new();
    for kind in Kind::ALL {
        let mut own = plugin_schema(kind);
        let own_defs = own.as_object_mut().unwrap().remove("$defs").unwrap();
        for (name, def) in own_defs.as_object().unwrap() {
            assert_eq!(
                &bundle_json["$defs"][name],
                def,
                "{}: $defs/{name}",
                kind.name()
            );
            defs.insert(name.clone());
        }
        let mut stage = bundle_json["properties"][kind.name()].clone();
        for key in ["$schema", "title", "description"] {
            own.as_object_mut().unwrap().remove(key);
            stage.as_object_mut().unwrap().remove(key);
        }
        assert_eq!(
            stage,
            own,
            "{}: the stage is the filter's envelope",
            kind.name()
        );
    }
    let bundle_defs: BTreeSet<String> = bundle_json["$defs"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(bundle_defs, defs);

    let bundle = jsonschema::validator_for(&bundle_json).unwrap();
    let reader = |json: &Value| mesh_deploy::filters::configure_bundle(json.to_string().as_bytes());
    for kind in Kind::ALL {
        let example = &resolve(
            &bundle_json,
            &bundle_json["properties"][kind.name()]["properties"]["default"]["anyOf"][0],
        )["examples"][0];
        let ok = json!({kind.name(): {"routes": {"r": example}}});
        assert!(bundle.is_valid(&ok) && reader(&ok).is_ok(), "{ok}");
        let wrong = json!({kind.name(): {"default": {"no_such_field": 1}}});
        assert!(
            !bundle.is_valid(&wrong) && reader(&wrong).is_err(),
            "{wrong}"
        );
    }
    let unknown = json!({"ratelimits": {}});
    assert!(!bundle.is_valid(&unknown) && reader(&unknown).is_err());
    assert!(bundle.is_valid(&json!({})) && reader(&json!({})).is_ok());
}

/// Every object whose keys are data (a map: `additionalProperties` is a schema, as for
/// `Entries<V>`) is the value of a property named in `DATA_KEYED`, so error paths render its
/// keys as `["key"]`: not a list's items, not a map's values, not under another name.
#[test]
fn every_map_in_the_schemas_is_data_keyed() {
    fn walk(
        root: &Value,
        node: &Value,
        property: Option<&str>,
        at: &str,
        seen: &mut BTreeSet<(String, Option<String>)>,
        maps: &mut Vec<(String, Option<String>)>,
    ) {
        if let Some(target) = node["$ref"].as_str() {
            if seen.insert((target.to_owned(), property.map(str::to_owned))) {
                walk(root, resolve(root, node), property, target, seen, maps);
            }
            return;
        }
        if node["additionalProperties"].is_object() {
            maps.push((at.to_owned(), property.map(str::to_owned)));
        }
        for (name, sub) in node["properties"].as_object().into_iter().flatten() {
            walk(
                root,
                sub,
                Some(name),
                &format!("{at}/properties/{name}"),
                seen,
                maps,
            );
        }
        for key in ["anyOf", "oneOf", "allOf"] {
            for (i, sub) in node[key].as_array().into_iter().flatten().enumerate() {
                // A choice of shapes is still the property's value.
                walk(root, sub, property, &format!("{at}/{key}/{i}"), seen, maps);
            }
        }
        for key in [
            "items",
            "additionalProperties",
            "propertyNames",
            "contains",
            "not",
            "if",
            "then",
            "else",
        ] {
            if node[key].is_object() {
                walk(root, &node[key], None, &format!("{at}/{key}"), seen, maps);
            }
        }
    }
    let schemas = Kind::ALL
        .into_iter()
        .map(|kind| (kind.name(), plugin_schema(kind)))
        .chain([("bundle", bundle_schema())]);
    let mut named = BTreeSet::new();
    for (name, schema) in schemas {
        let mut maps = Vec::new();
        walk(&schema, &schema, None, "#", &mut BTreeSet::new(), &mut maps);
        assert!(!maps.is_empty(), "{name}: no map found (routes is one)");
        for (at, property) in maps {
            assert!(
                property.as_deref().is_some_and(|p| DATA_KEYED.contains(&p)),
                "{name}: the map at {at} is the value of {property:?}, not of a property in \
                 mesh_policy::config::DATA_KEYED ({DATA_KEYED:?}): its keys would render as \
                 fields in error paths"
            );
            named.extend(property);
        }
    }
    // Both kinds of data keys occur: the walk sees the maps it is meant to check.
    assert_eq!(
        named,
        BTreeSet::from(["headers".to_owned(), "routes".to_owned()])
    );
}

/// What the filter's own reader and compile say about a policy.
enum Verdict {
    Ok,
    /// A shape error (wrong type, unknown or missing field): the schema must refuse it.
    Shape(String),
    /// A value the filter refuses that the schema may or may not describe.
    Invalid,
}

struct Checker {
    kind: Kind,
    schema: Value,
    validator: jsonschema::Validator,
    /// The object schemas `object` checked.
    checked: RefCell<BTreeSet<*const Value>>,
}

impl Checker {
    fn new(kind: Kind) -> Self {
        let schema = plugin_schema(kind);
        let validator = jsonschema::validator_for(&schema).unwrap();
        Self {
            kind,
            schema,
            validator,
            checked: RefCell::default(),
        }
    }

    fn envelope(policy: &Value) -> Value {
        json!({"default": policy, "routes": {"r": policy}})
    }

    fn reader(&self, policy: &Value) -> Verdict {
        match self
            .kind
            .configure(Self::envelope(policy).to_string().as_bytes())
        {
            Ok(_) => Verdict::Ok,
            Err(ConfigError::Json { path, message }) => {
                Verdict::Shape(format!("{path}: {message}"))
            }
            Err(ConfigError::Invalid { .. }) => Verdict::Invalid,
        }
    }

    fn schema_accepts(&self, policy: &Value) -> bool {
        self.validator.is_valid(&Self::envelope(policy))
    }

    fn policy(&self, policy: &Value) -> Vec<(Option<String>, String)> {
        self.kind
            .policies(Self::envelope(policy).to_string().as_bytes())
    }

    /// The object schemas a property's value may be: itself, one of its choices, or the
    /// items of a list (`true`).
    fn shapes<'a>(&'a self, node: &'a Value, in_list: bool, out: &mut Vec<(&'a Value, bool)>) {
        let node = resolve(&self.schema, node);
        if node["properties"].is_object() {
            out.push((node, in_list));
        }
        for key in ["anyOf", "oneOf"] {
            for choice in node[key].as_array().into_iter().flatten() {
                self.shapes(choice, in_list, out);
            }
        }
        if !in_list && node["items"].is_object() {
            self.shapes(&node["items"], true, out);
        }
    }

    /// Checks the object schema `node`, whose instance sits at `at` in `base`.
    fn object(&self, node: &Value, base: &Value, at: &[Value]) {
        self.checked.borrow_mut().insert(node);
        let name = self.kind.name();
        let example = &node["examples"][0];
        assert!(
            example.is_object(),
            "{name}: the object at {at:?} has no example (schemars(extend(\"examples\" = ...)))"
        );
        let here = |value: Value| place(base, at, value);
        let whole = here(example.clone());
        assert!(
            matches!(self.reader(&whole), Verdict::Ok),
            "{name}: example {whole} is refused"
        );
        assert!(
            self.schema_accepts(&whole),
            "{name}: schema refuses example {whole}"
        );

        let mut with_unknown = example.clone();
        with_unknown["zz_unknown"] = json!(1);
        assert!(
            matches!(self.reader(&here(with_unknown.clone())), Verdict::Shape(_)),
            "{name}: an unknown field is not refused at {at:?}"
        );
        assert!(!self.schema_accepts(&here(with_unknown)));

        for (field, prop) in node["properties"].as_object().unwrap() {
            let set = |value: Value| {
                let mut instance = example.clone();
                instance[field.as_str()] = value;
                here(instance)
            };
            // Values of every type: a shape error is refused by both, what compiles is accepted.
            let mut shapes = Vec::new();
            self.shapes(prop, false, &mut shapes);
            for probe in [
                json!("zz"),
                json!(""),
                json!("5xx"),
                json!("UNAVAILABLE"),
                json!(1),
                json!(0),
                json!(-1),
                json!(1.5),
                json!(100000000000u64),
                json!(true),
                json!(null),
                json!([]),
                json!(["zz"]),
                json!([503]),
                json!({}),
                json!({"zz": 1}),
                json!({"x-a": "1"}),
            ] {
                let policy = set(probe.clone());
                match self.reader(&policy) {
                    Verdict::Ok => assert!(
                        self.schema_accepts(&policy),
                        "{name}: {field} = {probe}: the filter accepts it, the schema does not"
                    ),
                    Verdict::Shape(why) => assert!(
                        !self.schema_accepts(&policy),
                        "{name}: {field} = {probe}: the reader refuses it ({why}), the schema accepts it"
                    ),
                    Verdict::Invalid => {}
                }
            }
            // A default is what leaving the field out gives.
            if let Some(default) = prop.get("default") {
                let mut without = example.clone();
                without.as_object_mut().unwrap().remove(field);
                let policy = self.policy(&here(without));
                assert!(!policy.is_empty(), "{name}: {field}: the example compiles");
                assert_eq!(
                    policy,
                    self.policy(&set(default.clone())),
                    "{name}: default of {field}"
                );
            }
            // Nested objects: in place, as one of several shapes, or in a list.
            let mut path = at.to_vec();
            path.push(json!(field));
            for (shape, in_list) in shapes {
                let mut instance = example.clone();
                if in_list {
                    instance[field.as_str()] = json!([shape["examples"][0]]);
                    let mut item = path.clone();
                    item.push(json!(0));
                    self.object(shape, &here(instance), &item);
                } else {
                    instance[field.as_str()] = json!({});
                    self.object(shape, &here(instance), &path);
                }
            }
        }
    }
}

fn place(base: &Value, at: &[Value], value: Value) -> Value {
    let mut out = base.clone();
    let mut cursor = &mut out;
    for step in at {
        cursor = match step {
            Value::String(key) => &mut cursor[key.as_str()],
            Value::Number(i) => &mut cursor[i.as_u64().unwrap() as usize],
            other => panic!("not a path step: {other}"),
        };
    }
    *cursor = value;
    out
}

/// Every field of every object, with values of every JSON type: what the reader refuses as a
/// shape error (wrong type, unknown field, a name that is no choice) the schema refuses; what
/// the filter accepts the schema accepts. Every default compiles like leaving the field out.
#[test]
fn schemas_refuse_shape_errors_and_accept_what_the_filters_accept() {
    for kind in Kind::ALL {
        let checker = Checker::new(kind);
        let envelope = &checker.schema["properties"]["default"];
        let mut shapes = Vec::new();
        checker.shapes(envelope, false, &mut shapes);
        assert_eq!(shapes.len(), 1, "{}: one policy object", kind.name());
        checker.object(shapes[0].0, &json!({}), &[]);
        // Every object of the schema was reached, and so checked.
        for (def, schema) in checker.schema["$defs"].as_object().unwrap() {
            assert!(
                !schema["properties"].is_object()
                    || checker
                        .checked
                        .borrow()
                        .contains(&std::ptr::from_ref(schema)),
                "{}: $defs/{def} was not checked",
                kind.name()
            );
        }
    }
}

/// Configs the filters refuse for their shape, written as people get them wrong: the schema
/// refuses each too (the filter says why; an editor says where before it is deployed).
#[test]
fn a_sample_of_shape_errors_is_refused_by_both() {
    let cases = [
        (Kind::TraceId, json!({"default": {"emit": "w3c"}})),
        (Kind::TraceId, json!({"default": {"emit": ["b4"]}})),
        (Kind::TraceId, json!({"default": {"mode": "Child"}})),
        (Kind::TraceId, json!({"route": {}})),
        (Kind::TraceId, json!({"routes": [{"default": {}}]})),
        (Kind::Canary, json!({"routes": {"r": {"percent": "10"}}})),
        (Kind::Canary, json!({"routes": {"r": {"percent": -1}}})),
        (
            Kind::Canary,
            json!({"routes": {"r": {"sticky": {"header": ["x-user-id"]}}}}),
        ),
        (
            Kind::Canary,
            json!({"routes": {"r": {"rules": [{"header": "x", "exact": "y", "release": "beta"}]}}}),
        ),
        (Kind::RateLimit, json!({"default": {"limits": {}}})),
        (Kind::RateLimit, json!({"default": {"rate_per_s": 5}})),
        (
            Kind::RateLimit,
            json!({"default": {"limits": [{"rate_per_s": 5, "burst": 10, "key": "user"}]}}),
        ),
        (
            Kind::RateLimit,
            json!({"default": {"limits": [{"rate_per_s": 5, "burst": 10, "key": {"name": "x-api-key"}}]}}),
        ),
        (
            Kind::RateLimit,
            json!({"default": {"limits": [{"rate_per_s": 5, "burst": 10.5}]}}),
        ),
        (
            Kind::RateLimit,
            json!({"default": {"limits": [{"rate_per_s": 0.0001, "burst": 10}]}}),
        ),
        (
            Kind::RateLimit,
            json!({"default": {"limits": [{"rate_per_s": 5, "burst": 10}], "grpc_status": "EXHAUSTED"}}),
        ),
        (
            Kind::Breaker,
            json!({"default": {"consecutive_failures": "3"}}),
        ),
        (
            Kind::Breaker,
            json!({"default": {"consecutive_failures": 3, "failure_status": ["6xx"]}}),
        ),
        (
            Kind::Breaker,
            json!({"default": {"consecutive_failures": 3, "failure_status": [99]}}),
        ),
        (
            Kind::Breaker,
            json!({"default": {"consecutive_failures": 3, "key": "host"}}),
        ),
        (
            Kind::Breaker,
            json!({"default": {"consecutive_failures": 3, "fallback": {"headers": {"x-a": 1}}}}),
        ),
        (
            Kind::Breaker,
            json!({"default": {"consecutive_failures": 3, "fallback": {"headers": [["x-a", "1"]]}}}),
        ),
    ];
    for (kind, config) in cases {
        let Err(ConfigError::Json { .. }) = kind.configure(config.to_string().as_bytes()) else {
            panic!("{}: {config}: not a shape error of the filter", kind.name());
        };
        assert!(
            !Checker::new(kind).validator.is_valid(&config),
            "{}: {config}: the schema accepts it",
            kind.name()
        );
    }
}

#[test]
fn every_plugin_config_in_the_repository_fits_its_schema() {
    let bundle = jsonschema::validator_for(&bundle_schema()).unwrap();
    let mut seen = 0;
    for file in docs::files(&[repo_root().join("istio"), repo_root().join("envoy")]).unwrap() {
        for doc in docs::load(&file).unwrap() {
            let v = &doc.value;
            if v["kind"] == "WasmPlugin" {
                let url = v["spec"]["url"].as_str().unwrap();
                let json: Value =
                    serde_json::from_str(&plugin_json::from_struct(&v["spec"]["pluginConfig"]))
                        .unwrap();
                if url.contains("/bundle:") {
                    assert!(bundle.is_valid(&json), "{}: {json}", doc.file);
                    seen += 1;
                    continue;
                }
                let kind = Kind::ALL
                    .into_iter()
                    .find(|k| url.contains(&format!("/{}:", k.name())))
                    .unwrap();
                assert!(
                    Checker::new(kind).validator.is_valid(&json),
                    "{}: {json}",
                    doc.file
                );
                seen += 1;
            }
        }
    }
    let envoy = fs::read_to_string(repo_root().join("envoy/envoy.yaml")).unwrap();
    for doc in docs::parse("envoy.yaml", &envoy).unwrap() {
        for filter in doc.value["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
            [0]["typed_config"]["http_filters"]
            .as_array()
            .unwrap()
        {
            let config = &filter["typed_config"]["config"];
            let Some(file) = config["vm_config"]["code"]["local"]["filename"].as_str() else {
                continue;
            };
            let kind =
                Kind::from_name(Path::new(file).file_stem().unwrap().to_str().unwrap()).unwrap();
            let json: Value =
                serde_json::from_str(config["configuration"]["value"].as_str().unwrap()).unwrap();
            assert!(
                Checker::new(kind).validator.is_valid(&json),
                "envoy.yaml {}: {json}",
                kind.name()
            );
            seen += 1;
        }
    }
    assert_eq!(
        seen, 10,
        "six WasmPlugins (ratelimit-global.yaml and the bundle too), four Envoy filters"
    );
}

/// The header-name pattern is `HeaderName::parse`'s rule: every ASCII character, alone and
/// in a name, is allowed by both or by neither.
#[test]
fn the_header_name_pattern_is_the_filters_rule() {
    let checker = Checker::new(Kind::TraceId);
    for byte in 0u8..128 {
        let c = char::from(byte);
        for name in [c.to_string(), format!("x-{c}-y")] {
            let policy = json!({"response_header": name});
            let filter = matches!(checker.reader(&policy), Verdict::Ok);
            assert_eq!(
                checker.schema_accepts(&policy),
                filter,
                "{name:?}: the filter says {filter}"
            );
        }
    }
}
