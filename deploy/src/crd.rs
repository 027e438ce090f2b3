//! Istio's CRD OpenAPI schemas as JSON Schema validators.
//!
//! The vendored `istio/crds/customresourcedefinitions.gen.yaml` is read as it is; each served
//! version's `openAPIV3Schema` becomes a JSON Schema (draft 4, the dialect OpenAPI 3.0
//! schemas are written in):
//! - `nullable: true` allows `null`;
//! - an object with no `additionalProperties` and no `x-kubernetes-preserve-unknown-fields`
//!   rejects unknown fields, as `kubectl apply` does (strict field validation is its default);
//! - the root learns `apiVersion`, `kind` and `metadata` (with a `name`).
//!
//! Not checked: CEL rules (`x-kubernetes-validations`, e.g. "only one of targetRefs or
//! selector"); the API server runs them.

use std::collections::HashMap;

use jsonschema::{Draft, Validator};
use serde_json::{Value, json};

use crate::docs;

const VENDORED: &str = include_str!("../../istio/crds/customresourcedefinitions.gen.yaml");

/// Validators by API group, kind and version.
pub struct Crds {
    schemas: HashMap<(String, String), Vec<(String, Validator)>>,
}

impl std::fmt::Debug for Crds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crds")
            .field("kinds", &self.schemas.len())
            .finish()
    }
}

/// A schema violation: where (a field path) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub message: String,
}

impl Crds {
    /// The CRDs vendored in this repository.
    pub fn vendored() -> Result<Crds, String> {
        Self::from_yaml(VENDORED)
    }

    pub fn from_yaml(text: &str) -> Result<Crds, String> {
        let mut schemas: HashMap<(String, String), Vec<(String, Validator)>> = HashMap::new();
        for doc in docs::parse("customresourcedefinitions.gen.yaml", text)? {
            let crd = &doc.value;
            if crd["kind"] != "CustomResourceDefinition" {
                continue;
            }
            let group = crd["spec"]["group"].as_str().unwrap_or_default().to_owned();
            let kind = crd["spec"]["names"]["kind"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            for version in crd["spec"]["versions"].as_array().into_iter().flatten() {
                if version["served"] == false {
                    continue;
                }
                let name = version["name"].as_str().unwrap_or_default().to_owned();
                let schema = json_schema(&version["schema"]["openAPIV3Schema"]);
                let validator = jsonschema::options()
                    .with_draft(Draft::Draft4)
                    .build(&schema)
                    .map_err(|e| format!("CRD {kind} {name}: schema does not compile: {e}"))?;
                schemas
                    .entry((group.clone(), kind.clone()))
                    .or_default()
                    .push((name, validator));
            }
        }
        Ok(Crds { schemas })
    }

    /// Is this an object of an Istio kind the CRDs define?
    pub fn knows(&self, doc: &Value) -> bool {
        let (group, _) = split_api_version(doc);
        let kind = doc["kind"].as_str().unwrap_or_default();
        self.schemas
            .contains_key(&(group.to_owned(), kind.to_owned()))
    }

    /// Violations of the CRD schema; `None` if the kind is not an Istio CRD.
    pub fn validate(&self, doc: &Value) -> Option<Vec<Violation>> {
        let (group, version) = split_api_version(doc);
        let kind = doc["kind"].as_str().unwrap_or_default();
        let versions = self.schemas.get(&(group.to_owned(), kind.to_owned()))?;
        let Some((_, validator)) = versions.iter().find(|(v, _)| v == version) else {
            let served: Vec<&str> = versions.iter().map(|(v, _)| v.as_str()).collect();
            return Some(vec![Violation {
                path: "apiVersion".to_owned(),
                message: format!(
                    "{group}/{version} does not serve {kind}; served versions: {}",
                    served.join(", ")
                ),
            }]);
        };
        Some(
            validator
                .iter_errors(doc)
                .map(|e| Violation {
                    path: docs::pointer_to_path(e.instance_path().as_str()),
                    message: e.to_string(),
                })
                .collect(),
        )
    }
}

fn split_api_version(doc: &Value) -> (&str, &str) {
    let api = doc["apiVersion"].as_str().unwrap_or_default();
    api.split_once('/').unwrap_or(("", api))
}

/// An OpenAPI v3 CRD schema as a strict JSON Schema (see the module doc).
pub fn json_schema(openapi: &Value) -> Value {
    let mut schema = strict(openapi);
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        props.insert("apiVersion".into(), json!({"type": "string"}));
        props.insert("kind".into(), json!({"type": "string"}));
        props.insert(
            "metadata".into(),
            json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 253},
                    "namespace": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}}
                },
                "required": ["name"]
            }),
        );
    }
    if let Some(object) = schema.as_object_mut() {
        object.insert(
            "required".into(),
            json!(["apiVersion", "kind", "metadata", "spec"]),
        );
    }
    schema
}

fn strict(node: &Value) -> Value {
    match node {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (key, value) in map {
                let value = match key.as_str() {
                    // Maps of schemas: convert each schema, keep the names.
                    "properties" => Value::Object(
                        value
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(|(k, v)| (k.clone(), strict(v)))
                            .collect(),
                    ),
                    "items" | "additionalProperties" | "not" => strict(value),
                    "anyOf" | "oneOf" | "allOf" => {
                        Value::Array(value.as_array().into_iter().flatten().map(strict).collect())
                    }
                    // Enum values, patterns, descriptions... stay as written.
                    _ => value.clone(),
                };
                out.insert(key.clone(), value);
            }
            let open = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            if map.get("type") == Some(&json!("object"))
                && !open
                && !map.contains_key("additionalProperties")
            {
                out.insert("additionalProperties".into(), Value::Bool(false));
            }
            if map.get("nullable") == Some(&Value::Bool(true))
                && let Some(t) = map.get("type").and_then(Value::as_str)
            {
                out.insert("type".into(), json!([t, "null"]));
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(spec: Value) -> Value {
        json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
               "metadata": {"name": "p"}, "spec": spec})
    }

    #[test]
    fn wasm_plugin_schema_is_enforced() {
        let crds = Crds::vendored().unwrap();
        let ok = plugin(
            json!({"url": "oci://r/x:1", "phase": "AUTHZ", "priority": 10,
                               "pluginConfig": {"anything": {"goes": [1]}}}),
        );
        assert_eq!(crds.validate(&ok), Some(vec![]));
        let bad = plugin(
            json!({"url": "oci://r/x:1", "phase": "AUTHZZ", "sha256": "abc",
                                "failStrategy": "FAIL_CLOSED", "selector": {"matchLabel": {}}}),
        );
        let violations = crds.validate(&bad).unwrap();
        let paths: Vec<&str> = violations.iter().map(|v| v.path.as_str()).collect();
        for path in [
            "spec.phase",
            "spec.sha256",
            "spec.failStrategy",
            "spec.selector",
        ] {
            assert!(paths.contains(&path), "{path} not in {violations:?}");
        }
        let missing = plugin(json!({"phase": "AUTHN"}));
        assert!(!crds.validate(&missing).unwrap().is_empty());
        assert!(
            crds.validate(&json!({"apiVersion": "v1", "kind": "ConfigMap"}))
                .is_none()
        );
        let old = json!({"apiVersion": "extensions.istio.io/v1", "kind": "WasmPlugin",
                         "metadata": {"name": "p"}, "spec": {"url": "x"}});
        assert_eq!(crds.validate(&old).unwrap()[0].path, "apiVersion");
    }

    #[test]
    fn virtual_service_unknown_fields_are_rejected() {
        let crds = Crds::vendored().unwrap();
        let vs = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "shop"},
            "spec": {"hosts": ["shop"], "http": [{"name": "a", "match": [{"uri": {"prefix": "/"}, "header": {}}],
                     "route": [{"destination": {"host": "shop"}}]}]}});
        let violations = crds.validate(&vs).unwrap();
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].path, "spec.http[0].match[0]");
    }
}
