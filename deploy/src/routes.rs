//! Route tables: the Envoy route names a VirtualService or an Envoy config defines, and the
//! header matches the canary check needs.
//!
//! Under Istio an http route's Envoy name is its `name`, plus `.` and the match's `name`
//! when the match is named (istiod: `routeName = in.Name; if match.Name != "" { routeName +=
//! "." + match.Name }`); each match is its own Envoy route, in order.

use regex::Regex;
use serde_json::{Map, Value};

/// How a route tests a header.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderTest {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Regex(String),
    Present,
    /// Anything else (inverted matches, ranges...): never taken to accept a value.
    Other,
}

impl HeaderTest {
    pub fn accepts(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => value == s,
            Self::Prefix(s) => value.starts_with(s.as_str()),
            Self::Suffix(s) => value.ends_with(s.as_str()),
            // Envoy and Istio use RE2 with a full match; Rust's regex has the same syntax core.
            Self::Regex(re) => {
                Regex::new(&format!("^(?:{re})$")).is_ok_and(|re| re.is_match(value))
            }
            Self::Present => true,
            Self::Other => false,
        }
    }
}

/// One Envoy route.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// Field path of its name in the source, for messages.
    pub at: String,
    pub headers: Vec<(String, HeaderTest)>,
    /// The match without its header conditions and without its name: equal for a route and
    /// its tagged twin.
    pub rest: Value,
}

/// The routes of one VirtualService or one Envoy virtual host, in match order.
#[derive(Debug, Clone)]
pub struct Table {
    pub file: String,
    /// `VirtualService shop`, `virtual host shop`.
    pub subject: String,
    pub routes: Vec<Route>,
}

impl Table {
    pub fn has(&self, name: &str) -> bool {
        self.routes.iter().any(|r| r.name == name)
    }

    /// Does some route match `header: value`?
    pub fn matches_tag(&self, header: &str, value: &str) -> bool {
        self.routes
            .iter()
            .any(|r| r.tests(header).is_some_and(|t| t.accepts(value)))
    }

    /// The routes a request on `route` that carries `header: value` is matched to first: a
    /// route before it with the same conditions plus that header.
    pub fn twins(&self, route: &str, header: &str, value: &str) -> Vec<&Route> {
        let mut out: Vec<&Route> = Vec::new();
        for original in self.routes.iter().filter(|r| r.name == route) {
            if original.tests(header).is_some() {
                continue;
            }
            for twin in &self.routes {
                let tagged = twin.tests(header).is_some_and(|t| t.accepts(value));
                let same = twin.rest == original.rest
                    && twin
                        .headers
                        .iter()
                        .filter(|(h, _)| h != header)
                        .eq(original.headers.iter());
                if tagged && same && twin.name != route && !out.iter().any(|t| t.name == twin.name)
                {
                    out.push(twin);
                }
            }
        }
        out
    }
}

impl Route {
    fn tests(&self, header: &str) -> Option<&HeaderTest> {
        self.headers
            .iter()
            .find(|(h, _)| h == header)
            .map(|(_, t)| t)
    }
}

/// The Envoy routes of a VirtualService (`spec.http`).
pub fn virtual_service(file: &str, doc: &Value) -> Table {
    let name = doc["metadata"]["name"].as_str().unwrap_or("?");
    let mut routes = Vec::new();
    for (i, http) in doc["spec"]["http"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let route_name = http["name"].as_str().unwrap_or("");
        let matches: Vec<&Value> = match http["match"].as_array() {
            Some(m) if !m.is_empty() => m.iter().collect(),
            _ => vec![&Value::Null],
        };
        for (j, m) in matches.into_iter().enumerate() {
            let full = match m["name"].as_str() {
                Some(match_name) if !match_name.is_empty() => format!("{route_name}.{match_name}"),
                _ => route_name.to_owned(),
            };
            let mut headers = Vec::new();
            for (header, test) in m["headers"].as_object().into_iter().flatten() {
                headers.push((header.to_ascii_lowercase(), istio_string_match(test)));
            }
            let mut rest = m.as_object().cloned().unwrap_or_default();
            rest.remove("headers");
            rest.remove("name");
            let at = if m.is_null() {
                format!("spec.http[{i}]")
            } else {
                format!("spec.http[{i}].match[{j}]")
            };
            routes.push(Route {
                name: full,
                at,
                headers,
                rest: Value::Object(rest),
            });
        }
    }
    Table {
        file: file.to_owned(),
        subject: format!("VirtualService {name}"),
        routes,
    }
}

fn istio_string_match(test: &Value) -> HeaderTest {
    if let Some(s) = test["exact"].as_str() {
        HeaderTest::Exact(s.to_owned())
    } else if let Some(s) = test["prefix"].as_str() {
        HeaderTest::Prefix(s.to_owned())
    } else if let Some(s) = test["regex"].as_str() {
        HeaderTest::Regex(s.to_owned())
    } else if test.as_object().is_some_and(Map::is_empty) {
        HeaderTest::Present
    } else {
        HeaderTest::Other
    }
}

/// The routes of an Envoy `route_config` (one table per virtual host).
pub fn envoy_route_config(file: &str, at: &str, config: &Value) -> Vec<Table> {
    let mut tables = Vec::new();
    for (i, vhost) in config["virtual_hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let mut routes = Vec::new();
        for (j, route) in vhost["routes"].as_array().into_iter().flatten().enumerate() {
            let m = &route["match"];
            let mut headers = Vec::new();
            for h in m["headers"].as_array().into_iter().flatten() {
                let name = h["name"].as_str().unwrap_or("").to_ascii_lowercase();
                headers.push((name, envoy_header_match(h)));
            }
            let mut rest = m.as_object().cloned().unwrap_or_default();
            rest.remove("headers");
            routes.push(Route {
                name: route["name"].as_str().unwrap_or("").to_owned(),
                at: format!("{at}.virtual_hosts[{i}].routes[{j}]"),
                headers,
                rest: Value::Object(rest),
            });
        }
        tables.push(Table {
            file: file.to_owned(),
            subject: format!("virtual host {}", vhost["name"].as_str().unwrap_or("?")),
            routes,
        });
    }
    tables
}

fn envoy_header_match(h: &Value) -> HeaderTest {
    if h["invert_match"].as_bool() == Some(true) {
        return HeaderTest::Other;
    }
    let m = if h["string_match"].is_object() {
        &h["string_match"]
    } else {
        h
    };
    if let Some(s) = m["exact"].as_str().or(h["exact_match"].as_str()) {
        HeaderTest::Exact(s.to_owned())
    } else if let Some(s) = m["prefix"].as_str().or(h["prefix_match"].as_str()) {
        HeaderTest::Prefix(s.to_owned())
    } else if let Some(s) = m["suffix"].as_str().or(h["suffix_match"].as_str()) {
        HeaderTest::Suffix(s.to_owned())
    } else if let Some(s) = m["safe_regex"]["regex"].as_str() {
        HeaderTest::Regex(s.to_owned())
    } else if h["present_match"].as_bool() == Some(true) {
        HeaderTest::Present
    } else {
        HeaderTest::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vs() -> Table {
        virtual_service(
            "vs.yaml",
            &json!({"metadata": {"name": "shop"}, "spec": {"http": [
                {"name": "checkout-canary", "match": [{"uri": {"prefix": "/checkout"}, "headers": {"x-canary": {"exact": "true"}}}]},
                {"name": "checkout", "match": [{"uri": {"prefix": "/checkout"}}]},
                {"name": "api", "match": [{"name": "v1", "uri": {"prefix": "/v1"}}, {"uri": {"prefix": "/v0"}}]},
                {"match": [{"name": "solo", "uri": {"prefix": "/solo"}}]},
                {"name": "rest"}
            ]}}),
        )
    }

    #[test]
    fn route_names_follow_istio() {
        let names: Vec<String> = vs().routes.into_iter().map(|r| r.name).collect();
        assert_eq!(
            names,
            [
                "checkout-canary",
                "checkout",
                "api.v1",
                "api",
                ".solo",
                "rest"
            ]
        );
    }

    #[test]
    fn twins_have_the_same_match_plus_the_tag() {
        let table = vs();
        assert!(table.matches_tag("x-canary", "true"));
        assert!(!table.matches_tag("x-canary", "yes"));
        let twins: Vec<&str> = table
            .twins("checkout", "x-canary", "true")
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(twins, ["checkout-canary"]);
        assert!(table.twins("rest", "x-canary", "true").is_empty());
    }

    #[test]
    fn header_tests() {
        assert!(HeaderTest::Regex("tr.e".into()).accepts("true"));
        assert!(!HeaderTest::Regex("tr".into()).accepts("true"));
        assert!(HeaderTest::Prefix("t".into()).accepts("true"));
        assert!(!HeaderTest::Other.accepts("true"));
    }
}
