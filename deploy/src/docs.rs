//! YAML and JSON files as documents of JSON values.
//!
//! YAML 1.2 (yaml-rust2): anchors and aliases are resolved, as Kubernetes does. Kubernetes
//! reads YAML 1.1, where an unquoted `yes`, `no`, `on`, `off`, `y` or `n` is a boolean: quote
//! such strings (the filters' readers report a boolean where a string belongs).

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Number, Value};
use yaml_rust2::{Yaml, YamlLoader};

/// One document of a file.
#[derive(Debug, Clone)]
pub struct Doc {
    pub file: String,
    pub value: Value,
}

/// Every `.yaml`, `.yml` and `.json` file under the paths (directories are walked, sorted).
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for path in paths {
        walk(path, &mut out)?;
    }
    Ok(out)
}

fn walk(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let meta = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            let is_data = matches!(
                entry.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            );
            if entry.is_dir() || is_data {
                walk(&entry, out)?;
            }
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// The documents of one file.
pub fn load(path: &Path) -> Result<Vec<Doc>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&path.display().to_string(), &text)
}

/// The documents of a YAML (or JSON) text; empty documents are skipped. Template
/// placeholders `${NAME}` (envoy/envoy.yaml's, filled by scripts/run-local.sh) read as `0`.
pub fn parse(file: &str, text: &str) -> Result<Vec<Doc>, String> {
    let text = fill_placeholders(text);
    let yaml = YamlLoader::load_from_str(&text).map_err(|e| format!("{file}: not YAML: {e}"))?;
    yaml.iter()
        .filter(|y| !matches!(y, Yaml::Null))
        .map(|y| {
            Ok(Doc {
                file: file.to_owned(),
                value: to_json(y).map_err(|e| format!("{file}: {e}"))?,
            })
        })
        .collect()
}

/// `${NAME}` placeholders (upper-case letters, digits, `_`) replaced with `0`.
fn fill_placeholders(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let (before, after) = rest.split_at(start);
        out.push_str(before);
        let name_len = after
            .get(2..)
            .and_then(|tail| tail.find('}'))
            .filter(|len| {
                let name = after.get(2..2 + len).unwrap_or_default();
                name.starts_with(|c: char| c.is_ascii_uppercase())
                    && name
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            });
        match name_len {
            Some(len) => {
                out.push('0');
                rest = after.get(len + 3..).unwrap_or_default();
            }
            None => {
                out.push_str("${");
                rest = after.get(2..).unwrap_or_default();
            }
        }
    }
    out.push_str(rest);
    out
}

/// A YAML tree as JSON. Keys become strings; floats that JSON cannot hold are errors.
pub fn to_json(yaml: &Yaml) -> Result<Value, String> {
    Ok(match yaml {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::Number(Number::from(*i)),
        Yaml::Real(text) => {
            let number = yaml
                .as_f64()
                .and_then(Number::from_f64)
                .ok_or_else(|| format!("{text} is not a number JSON can hold"))?;
            Value::Number(number)
        }
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Yaml::Hash(hash) => {
            let mut map = Map::new();
            for (key, value) in hash {
                let key = match key {
                    Yaml::String(s) | Yaml::Real(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    Yaml::Null => "null".to_owned(),
                    other => return Err(format!("a map key that is not a scalar: {other:?}")),
                };
                map.insert(key, to_json(value)?);
            }
            Value::Object(map)
        }
        Yaml::Alias(_) | Yaml::BadValue => {
            return Err("an alias to an anchor that is not defined before it".to_owned());
        }
    })
}

/// `/spec/pluginConfig/routes/a.b` → `spec.pluginConfig.routes["a.b"]`.
pub fn pointer_to_path(pointer: &str) -> String {
    let mut out = String::new();
    for part in pointer.split('/').skip(1) {
        let part = part.replace("~1", "/").replace("~0", "~");
        if part.parse::<usize>().is_ok() {
            out.push_str(&format!("[{part}]"));
        } else if part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !part.is_empty() {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&part);
        } else {
            out.push_str(&format!("[{part:?}]"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_resolve_and_numbers_keep_their_kind() {
        let docs = parse(
            "t.yaml",
            "a: &x {n: 1, f: 0.5, s: \"1\", b: true}\nb: *x\n---\n---\nc: [1e-06, null]\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].value["b"], docs[0].value["a"]);
        assert_eq!(docs[0].value["a"]["n"], 1);
        assert_eq!(docs[0].value["a"]["f"], 0.5);
        assert_eq!(docs[0].value["a"]["s"], "1");
        assert_eq!(docs[1].value["c"][0], 1e-6);
        assert!(parse("t.yaml", "a: *nope\n").is_err());
        assert!(parse("t.yaml", "a: [\n").is_err());
    }

    #[test]
    fn pointers_read_as_field_paths() {
        assert_eq!(
            pointer_to_path("/spec/pluginConfig/routes/a.b/limits/0"),
            r#"spec.pluginConfig.routes["a.b"].limits[0]"#
        );
    }
}
