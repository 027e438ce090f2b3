//! The plugin JSON a filter receives from a WasmPlugin, as Istio makes it.
//!
//! `pluginConfig` is a `google.protobuf.Struct`: every number is a double, and istiod
//! writes it with protojson, which sorts object keys and formats numbers like Go's
//! `encoding/json` (shortest round-trip digits, exponent only below 1e-6 or from 1e21).
//! `2592000` stays `2592000`, `0.5` stays `0.5`, but an integer above 2^53 loses digits and
//! `1e-7` becomes `1e-7`: the lint runs the filters on exactly this text.

use serde_json::Value;

/// `value` as the JSON text Istio passes to the plugin.
pub fn from_struct(value: &Value) -> String {
    let mut out = String::new();
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&go_float(n.as_f64().unwrap_or(f64::NAN))),
        Value::String(s) => out.push_str(&Value::String(s.clone()).to_string()),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(key) {
                    write(v, out);
                }
            }
            out.push('}');
        }
    }
}

/// A double formatted as protojson (Go's `encoding/json` rules) formats it.
pub fn go_float(n: f64) -> String {
    let abs = n.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let text = format!("{n:e}");
        let (mantissa, exp) = text.split_once('e').unwrap_or((&text, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        if exp < 0 {
            format!("{mantissa}e-{}", -exp)
        } else {
            format!("{mantissa}e+{exp:02}")
        }
    } else {
        format!("{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_are_doubles_written_like_go() {
        assert_eq!(go_float(5.0), "5");
        assert_eq!(go_float(0.5), "0.5");
        assert_eq!(go_float(1e-6), "0.000001");
        assert_eq!(go_float(1e-7), "1e-7");
        assert_eq!(go_float(1.5e-10), "1.5e-10");
        assert_eq!(go_float(1e21), "1e+21");
        assert_eq!(go_float(1e20), "100000000000000000000");
        assert_eq!(go_float(2592000.0), "2592000");
        assert_eq!(go_float(18446744073709551615.0), "18446744073709552000");
    }

    #[test]
    fn keys_are_sorted_and_strings_escaped() {
        let text =
            from_struct(&json!({"routes": {"z": {"a": [1, true, null]}, "a": {"b": "q\"\n"}}}));
        assert_eq!(
            text,
            r#"{"routes":{"a":{"b":"q\"\n"},"z":{"a":[1,true,null]}}}"#
        );
    }
}
