//! The committed plugin schemas are current, and they agree with the filters' readers: the
//! reader is the authority, asked field by field (see deploy/src/schema.rs).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use mesh_deploy::docs;
use mesh_deploy::filters::Kind;
use mesh_deploy::plugin_json;
use mesh_deploy::schema::{bundle_schema, file_name, plugin_schema, render, render_bundle};
use mesh_policy::config::ConfigError;
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn committed_schemas_are_current() {
    for kind in Kind::ALL {
        let path = root().join("istio/schema").join(file_name(kind));
        let committed = fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == render(kind),
            "{} is stale: run `cargo run -p mesh-deploy --bin mesh-schema` and commit it",
            path.display()
        );
    }
    let path = root().join("istio/schema/bundle.schema.json");
    assert!(
        fs::read_to_string(&path).unwrap_or_default() == render_bundle(),
        "{} is stale: run `cargo run -p mesh-deploy --bin mesh-schema` and commit it",
        path.display()
    );
}

/// The bundle's schema is the four filters' envelopes under their stage keys: what each
/// filter's schema accepts there, it accepts; a key that is no stage, it refuses, as the
/// bundle's reader does.
#[test]
fn the_bundle_schema_composes_the_filters_schemas() {
    let bundle = jsonschema::validator_for(&bundle_schema()).unwrap();
    let reader = |json: &Value| mesh_deploy::filters::configure_bundle(json.to_string().as_bytes());
    for kind in Kind::ALL {
        let ok = json!({kind.name(): {"default": {}}});
        let filter_ok = Checker::new(kind)
            .validator
            .is_valid(&json!({"default": {}}));
        assert_eq!(bundle.is_valid(&ok), filter_ok, "{ok}");
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
    validator: jsonschema::Validator,
}

impl Checker {
    fn new(kind: Kind) -> Self {
        let validator = jsonschema::validator_for(&plugin_schema(kind)).unwrap();
        Self { kind, validator }
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

    /// Checks the object schema `node`, whose instance sits at `at` in `base`.
    fn object(&self, node: &Value, base: &Value, at: &[Value]) {
        let example = &node["examples"][0];
        let here = |value: Value| place(base, at, value);
        let whole = here(example.clone());
        assert!(
            matches!(self.reader(&whole), Verdict::Ok),
            "{}: example {whole} is refused",
            self.kind.name()
        );
        assert!(
            self.schema_accepts(&whole),
            "{}: schema refuses example {whole}",
            self.kind.name()
        );
        let props = node["properties"].as_object().unwrap();

        // The field names are the reader's.
        let mut with_unknown = example.clone();
        with_unknown["zz_unknown"] = json!(1);
        let Verdict::Shape(message) = self.reader(&here(with_unknown.clone())) else {
            panic!(
                "{}: an unknown field is not refused at {at:?}",
                self.kind.name()
            )
        };
        let reader_fields: BTreeSet<String> =
            quoted(message.split("expected one of").nth(1).unwrap_or(""));
        let schema_fields: BTreeSet<String> = props.keys().cloned().collect();
        assert_eq!(
            reader_fields,
            schema_fields,
            "{}: fields at {at:?}",
            self.kind.name()
        );
        assert!(!self.schema_accepts(&here(with_unknown)));

        for (field, prop) in props {
            let set = |value: Value| {
                let mut instance = example.clone();
                instance[field.as_str()] = value;
                here(instance)
            };
            // Values of every type: a shape error is refused by both, what compiles is accepted.
            for probe in [
                json!("zz"),
                json!(""),
                json!(1),
                json!(0),
                json!(-1),
                json!(1.5),
                json!(100000000000u64),
                json!(true),
                json!(null),
                json!([]),
                json!(["zz"]),
                json!({}),
                json!({"zz": 1}),
            ] {
                let policy = set(probe.clone());
                match self.reader(&policy) {
                    Verdict::Ok => assert!(
                        self.schema_accepts(&policy),
                        "{}: {field} = {probe}: the filter accepts it, the schema does not",
                        self.kind.name()
                    ),
                    Verdict::Shape(why) => assert!(
                        !self.schema_accepts(&policy),
                        "{}: {field} = {probe}: the reader refuses it ({why}), the schema accepts it",
                        self.kind.name()
                    ),
                    Verdict::Invalid => {}
                }
            }
            // Enumerations are the reader's choices.
            let choices = prop["enum"]
                .as_array()
                .or(prop["items"]["enum"].as_array())
                .or_else(|| {
                    prop["anyOf"]
                        .as_array()?
                        .iter()
                        .find_map(|a| a["enum"].as_array())
                });
            if let Some(choices) = choices {
                let bad = if prop["items"].is_object() {
                    json!(["zz"])
                } else {
                    json!("zz")
                };
                let Verdict::Shape(message) = self.reader(&set(bad)) else {
                    panic!("{field}: zz accepted")
                };
                let schema_choices: BTreeSet<String> = choices
                    .iter()
                    .map(|c| c.as_str().unwrap().to_owned())
                    .collect();
                assert_eq!(
                    quoted(message.split("expected one of").nth(1).unwrap_or("")),
                    schema_choices,
                    "{}: {field}",
                    self.kind.name()
                );
            }
            // A default is what leaving the field out gives.
            if let Some(default) = prop.get("default") {
                let mut without = example.clone();
                without.as_object_mut().unwrap().remove(field);
                assert_eq!(
                    self.policy(&here(without)),
                    self.policy(&set(default.clone())),
                    "{}: default of {field}",
                    self.kind.name()
                );
            }
            // Nested objects: in place, in a list, or as one of several shapes.
            let mut path = at.to_vec();
            path.push(json!(field));
            for candidate in
                std::iter::once(prop).chain(prop["anyOf"].as_array().into_iter().flatten())
            {
                if candidate["properties"].is_object() {
                    let mut instance = example.clone();
                    instance[field.as_str()] = json!({});
                    self.object(candidate, &here(instance), &path);
                }
                if candidate["items"]["properties"].is_object() {
                    let mut instance = example.clone();
                    instance[field.as_str()] = json!([candidate["items"]["examples"][0]]);
                    let mut item = path.clone();
                    item.push(json!(0));
                    self.object(&candidate["items"], &here(instance), &item);
                }
            }
        }
    }
}

/// `"a", "b"` → {a, b}.
fn quoted(list: &str) -> BTreeSet<String> {
    list.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
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

#[test]
fn schemas_agree_with_the_readers() {
    for kind in Kind::ALL {
        let checker = Checker::new(kind);
        let policy = &plugin_schema(kind)["$defs"]["policy"];
        checker.object(policy, &json!({}), &[]);
    }
}

#[test]
fn every_plugin_config_in_the_repository_fits_its_schema() {
    let mut seen = 0;
    for file in docs::files(&[root().join("istio"), root().join("envoy")]).unwrap() {
        for doc in docs::load(&file).unwrap() {
            let v = &doc.value;
            if v["kind"] == "WasmPlugin" {
                let url = v["spec"]["url"].as_str().unwrap();
                if url.contains("/bundle:") {
                    let json: Value =
                        serde_json::from_str(&plugin_json::from_struct(&v["spec"]["pluginConfig"]))
                            .unwrap();
                    let bundle = jsonschema::validator_for(&bundle_schema()).unwrap();
                    assert!(bundle.is_valid(&json), "{}: {json}", doc.file);
                    seen += 1;
                    continue;
                }
                let kind = Kind::ALL
                    .into_iter()
                    .find(|k| url.contains(&format!("/{}:", k.name())))
                    .unwrap();
                let json: Value =
                    serde_json::from_str(&plugin_json::from_struct(&v["spec"]["pluginConfig"]))
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
    let envoy = fs::read_to_string(root().join("envoy/envoy.yaml")).unwrap();
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
