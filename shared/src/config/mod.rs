//! The per-route config envelope every filter uses, and typed config errors.
//!
//! Plugin JSON is `{"default": P, "routes": {"<route name>": P}}`; both keys are optional.
//! It is read into [`Envelope`] (raw, as written: [`json`] parses, [`read`] checks shapes and
//! unknown fields) and compiled once, in `on_configure`, into [`Routes`] (validated).
//! Errors carry the path of the offending field, e.g.
//! `routes["checkout"].emit[1]: unknown format "b4", expected one of "w3c", ...`.

use std::fmt;
use std::rc::Rc;

pub mod json;
pub mod read;

use json::Json;
use read::{FromJson, Object};

/// Where a config value sits, rendered like `routes["checkout"].emit[1]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    pub fn root() -> Self {
        Self::default()
    }

    /// A struct field or an identifier-like map key: `.name`.
    pub fn field(&self, name: &str) -> Self {
        let mut path = self.0.clone();
        if is_identifier(name) {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(name);
        } else {
            push_quoted_key(&mut path, name);
        }
        Self(path)
    }

    /// A map key that is data, not a field name (a route name, a header name): `["key"]`.
    pub fn key(&self, key: &str) -> Self {
        let mut path = self.0.clone();
        push_quoted_key(&mut path, key);
        Self(path)
    }

    /// An element of a list: `[index]`.
    pub fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    /// A typed error at this path.
    pub fn invalid(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.clone(),
            message: message.into(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("(config)")
        } else {
            f.write_str(&self.0)
        }
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn push_quoted_key(path: &mut String, key: &str) {
    path.push_str("[\"");
    path.push_str(&escape(key));
    path.push_str("\"]");
}

/// Escapes `"`, `\\` and control characters so a value quoted in a message stays one line.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// A config error: JSON that does not fit the schema, or a value that is not allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// Not JSON, wrong type, unknown or missing field.
    Json { path: FieldPath, message: String },
    /// Well-formed but not allowed (out of range, duplicate, bad header name...).
    Invalid { path: FieldPath, message: String },
}

impl ConfigError {
    pub fn path(&self) -> &FieldPath {
        match self {
            Self::Json { path, .. } | Self::Invalid { path, .. } => path,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Json { path, message } | Self::Invalid { path, message } => {
                write!(f, "{path}: {message}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Parses JSON and reads it as `T`, naming the offending field on error.
pub fn parse_json<T: FromJson>(input: &[u8]) -> Result<T, ConfigError> {
    let value = json::parse(input).map_err(|err| ConfigError::Json {
        path: FieldPath::root(),
        message: err.to_string(),
    })?;
    T::from_json(&value, &FieldPath::root())
}

/// The plugin JSON as written: a default policy and per-route policies.
#[derive(Debug)]
pub struct Envelope<C> {
    pub default: Option<C>,
    /// In the order written.
    pub routes: Vec<(String, C)>,
}

impl<C> Default for Envelope<C> {
    fn default() -> Self {
        Self {
            default: None,
            routes: Vec::new(),
        }
    }
}

impl<C: FromJson> FromJson for Envelope<C> {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        let mut object = Object::new(value, at)?;
        let default = object.optional("default")?;
        let routes = match object.raw("routes") {
            Some((routes, at)) => read::map(routes, &at)?,
            None => Vec::new(),
        };
        object.finish()?;
        Ok(Self { default, routes })
    }
}

impl<C: FromJson> Envelope<C> {
    /// Parses plugin JSON; empty input is an empty envelope (the filter does nothing).
    pub fn from_json(json: &[u8]) -> Result<Self, ConfigError> {
        if json.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        parse_json(json)
    }
}

impl<C> Envelope<C> {
    /// Validates every policy with `compile`, which gets the path of the policy it compiles.
    pub fn compile<P>(
        self,
        at: &FieldPath,
        mut compile: impl FnMut(C, &FieldPath) -> Result<P, ConfigError>,
    ) -> Result<Routes<P>, ConfigError> {
        let default = match self.default {
            Some(config) => Some(Rc::new(compile(config, &at.field("default"))?)),
            None => None,
        };
        let mut routes = Vec::with_capacity(self.routes.len());
        let routes_at = at.field("routes");
        for (name, config) in self.routes {
            let policy = compile(config, &routes_at.key(&name))?;
            routes.push((name, Rc::new(policy)));
        }
        Ok(Routes { default, routes })
    }
}

/// Compiled policies by Envoy route name.
///
/// A list in the order written, not a map: it is searched once per route name and VM (the
/// adapter caches what it finds), and std's `HashMap` would bring its random seeding and
/// SipHash into every module (see ARCHITECTURE.md, module size). Names are unique: the JSON
/// parser refuses a key written twice.
#[derive(Debug)]
pub struct Routes<P> {
    default: Option<Rc<P>>,
    routes: Vec<(String, Rc<P>)>,
}

impl<P> Default for Routes<P> {
    fn default() -> Self {
        Self {
            default: None,
            routes: Vec::new(),
        }
    }
}

impl<P> Routes<P> {
    /// The route's own policy, else the default, else none (leave the request alone).
    pub fn policy_for(&self, route_name: &str) -> Option<&Rc<P>> {
        self.routes
            .iter()
            .find(|(name, _)| name == route_name)
            .map(|(_, policy)| policy)
            .or(self.default.as_ref())
    }

    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.routes.is_empty()
    }

    /// Whether routes without a policy of their own get the default.
    pub fn has_default(&self) -> bool {
        self.default.is_some()
    }

    /// Route names with a policy of their own, in the order written.
    pub fn route_names(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|(name, _)| name.as_str())
    }
}

/// A lower-case HTTP header name, validated (RFC 9110 token, no pseudo-headers).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeaderName(String);

impl HeaderName {
    pub fn parse(name: &str, at: &FieldPath) -> Result<Self, ConfigError> {
        if name.is_empty() {
            return Err(at.invalid("header name is empty"));
        }
        if let Some(bad) = name.chars().find(|c| !is_token_char(*c)) {
            // Quoted by hand: `{:?}` of a str or char brings core's Unicode escaping tables.
            return Err(at.invalid(format!(
                "header name \"{}\" has character '{}', which HTTP does not allow in a name",
                escape(name),
                escape(bad.encode_utf8(&mut [0; 4]))
            )));
        }
        Ok(Self(name.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_token_char(c: char) -> bool {
    // Bytes, not `str::contains`: its char search links core's str-slicing panic.
    c.is_ascii_alphanumeric() || (c.is_ascii() && b"!#$%&'*+-.^_`|~".contains(&(c as u8)))
}

#[cfg(test)]
mod tests {
    use super::*;
    // On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[derive(Debug)]
    struct Policy {
        size: u32,
        names: Vec<String>,
    }

    impl FromJson for Policy {
        fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
            let mut object = Object::new(value, at)?;
            let policy = Policy {
                size: object.required("size")?,
                names: object.or("names", Vec::new())?,
            };
            object.finish()?;
            Ok(policy)
        }
    }

    fn compile(json: &str) -> Result<Routes<u32>, ConfigError> {
        Envelope::<Policy>::from_json(json.as_bytes())?.compile(&FieldPath::root(), |p, at| {
            if p.size == 0 {
                return Err(at.field("size").invalid("must be at least 1"));
            }
            if let Some(i) = p.names.iter().position(|n| n.is_empty()) {
                return Err(at.field("names").index(i).invalid("must not be empty"));
            }
            Ok(p.size)
        })
    }

    #[test]
    fn route_policy_wins_over_default_and_default_covers_the_rest() {
        let routes =
            compile(r#"{"default": {"size": 1}, "routes": {"checkout": {"size": 2}}}"#).unwrap();
        assert_eq!(routes.policy_for("checkout").map(|p| **p), Some(2));
        assert_eq!(routes.policy_for("other").map(|p| **p), Some(1));
        assert_eq!(routes.policy_for("").map(|p| **p), Some(1));
    }

    #[test]
    fn without_default_unlisted_routes_get_no_policy() {
        let routes = compile(r#"{"routes": {"checkout": {"size": 2}}}"#).unwrap();
        assert!(routes.policy_for("other").is_none());
        assert!(compile("{}").unwrap().is_empty());
        assert!(compile("  ").unwrap().is_empty());
    }

    #[test]
    fn unknown_field_names_the_route_and_the_field() {
        let err = compile(r#"{"routes": {"checkout": {"size": 2, "szie": 3}}}"#).unwrap_err();
        assert!(matches!(err, ConfigError::Json { .. }));
        assert_eq!(
            err.to_string(),
            r#"routes["checkout"].szie: unknown field, expected one of "size", "names""#
        );
    }

    #[test]
    fn unknown_top_level_key_is_rejected() {
        let err = compile(r#"{"route": {}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"route: unknown field, expected one of "default", "routes""#
        );
    }

    #[test]
    fn wrong_type_names_the_field_and_what_was_found() {
        let err = compile(r#"{"default": {"size": "big"}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"default.size: expected a whole number (u32), found the string "big""#
        );
        let err = compile(r#"{"default": {"size": -1}}"#).unwrap_err();
        assert_eq!(err.path().as_str(), "default.size");
        let err = compile(r#"{"default": {"size": 1.5}}"#).unwrap_err();
        assert_eq!(err.path().as_str(), "default.size");
        let err = compile(r#"{"default": {}}"#).unwrap_err();
        assert_eq!(err.to_string(), r#"default: missing field "size""#);
    }

    #[test]
    fn validation_error_names_route_field_and_index() {
        let err = compile(r#"{"routes": {"a.b": {"size": 1, "names": ["x", ""]}}}"#).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }));
        assert_eq!(
            err.to_string(),
            r#"routes["a.b"].names[1]: must not be empty"#
        );
        let err = compile(r#"{"default": {"size": 0}}"#).unwrap_err();
        assert_eq!(err.to_string(), "default.size: must be at least 1");
    }

    #[test]
    fn a_key_written_twice_is_rejected_anywhere() {
        let err = compile(r#"{"routes": {"a": {"size": 1}, "a": {"size": 2}}}"#).unwrap_err();
        assert!(
            err.to_string().contains("key written twice at line 1"),
            "{err}"
        );
        let err = compile(r#"{"default": {"size": 1, "size": 2}}"#).unwrap_err();
        assert!(err.to_string().contains("key written twice"), "{err}");
    }

    #[test]
    fn bad_json_and_wrong_shapes_are_rejected() {
        assert!(compile(r#"{} x"#).is_err());
        assert!(compile(r#"{"default": "#).is_err());
        assert!(compile(r#"[]"#).is_err());
        assert_eq!(
            compile(r#"{"default": [1]}"#).unwrap_err().to_string(),
            "default: expected an object, found a list"
        );
        assert!(compile(r#"{"default": {"size": 1, "names": "x"}}"#).is_err());
        assert!(compile(r#"{"default": null}"#).is_err());
    }

    #[test]
    fn routes_keep_the_order_written() {
        let envelope =
            Envelope::<Policy>::from_json(br#"{"routes": {"z": {"size": 1}, "a": {"size": 2}}}"#)
                .unwrap();
        let names: Vec<&str> = envelope.routes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["z", "a"]);
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Key {
        Client,
        Path,
    }

    #[test]
    fn one_of_names_the_choices() {
        let choices = [("client", Key::Client), ("path", Key::Path)];
        let at = FieldPath::root().field("key");
        let read =
            |json: &str| read::one_of(&json::parse(json.as_bytes()).unwrap(), &at, "key", &choices);
        assert_eq!(read(r#""path""#).unwrap(), Key::Path);
        assert_eq!(
            read(r#""server""#).unwrap_err().to_string(),
            r#"key: unknown key "server", expected one of "client", "path""#
        );
        assert!(read("1").is_err());
    }

    #[test]
    fn numbers_keep_their_type() {
        assert!(parse_json::<u32>(b"1.5").is_err());
        assert!(parse_json::<u32>(b"-1").is_err());
        assert!(parse_json::<u32>(b"4294967296").is_err());
        assert!(parse_json::<u32>(br#""1""#).is_err());
        assert_eq!(parse_json::<f64>(b"1").unwrap(), 1.0);
        assert_eq!(parse_json::<f64>(b"-2.5e1").unwrap(), -25.0);
        assert!(parse_json::<f64>(b"1e999").is_err());
    }

    #[test]
    fn header_names_are_lowercased_and_checked() {
        let at = FieldPath::root().field("header");
        assert_eq!(
            HeaderName::parse("X-Trace-Id", &at).unwrap().as_str(),
            "x-trace-id"
        );
        assert!(HeaderName::parse("", &at).is_err());
        assert!(HeaderName::parse("x trace", &at).is_err());
        assert!(HeaderName::parse(":path", &at).is_err());
    }

    #[test]
    fn field_paths_quote_keys_that_are_data() {
        let at = FieldPath::root()
            .field("routes")
            .key("we\"ird")
            .field("headers")
            .field("x-a");
        assert_eq!(at.as_str(), r#"routes["we\"ird"].headers["x-a"]"#);
        assert_eq!(escape("a\nb"), "a?b");
    }
}
