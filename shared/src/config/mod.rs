//! The per-route config envelope every filter uses, and typed config errors.
//!
//! Plugin JSON is `{"default": P, "routes": {"<route name>": P}}`; both keys are optional.
//! It is read into [`Envelope`] (as written: serde's derives, `deny_unknown_fields`, by
//! [`parse_json`]) and compiled once, in `on_configure`, into [`Routes`] (validated).
//! Errors carry the path of the offending field, e.g.
//! `routes["checkout"].emit[1]: unknown variant `b4`, expected one of ...`: serde's
//! message, the path from `serde_path_to_error`. A key written twice is an error, in a
//! struct (serde's derive) as in a map ([`Entries`]).

use std::fmt;
use std::marker::PhantomData;
use std::rc::Rc;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, Visitor};

use crate::request::is_token_byte;

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

/// Map keys that are data (route names, header names), rendered `["key"]` in a path; other
/// keys are struct fields, rendered `.field`. `deploy`'s schema test checks that every map
/// of the config types is listed.
pub const DATA_KEYED: [&str; 2] = ["routes", "headers"];

/// Parses JSON and reads it as `T`, naming the offending field on error.
pub fn parse_json<T: DeserializeOwned>(input: &[u8]) -> Result<T, ConfigError> {
    parse_json_at(input, &FieldPath::root())
}

/// [`parse_json`] for a value that sits at `at` in a larger document (a bundle's stage).
pub fn parse_json_at<T: DeserializeOwned>(input: &[u8], at: &FieldPath) -> Result<T, ConfigError> {
    let mut json = serde_json::Deserializer::from_slice(input);
    let value = serde_path_to_error::deserialize(&mut json)
        .map_err(|err| from_serde(at, Some(err.path()), err.inner()))?;
    json.end().map_err(|err| from_serde(at, None, &err))?;
    Ok(value)
}

/// A serde error at `path` below `at`. Data errors lose serde_json's `at line 1 column 9`
/// (the path says where); syntax errors keep it.
fn from_serde(
    at: &FieldPath,
    path: Option<&serde_path_to_error::Path>,
    err: &serde_json::Error,
) -> ConfigError {
    use serde_path_to_error::Segment;
    let mut full = at.clone();
    let mut keyed = false;
    for segment in path.into_iter().flat_map(serde_path_to_error::Path::iter) {
        let (next, is_data_keyed) = match segment {
            Segment::Seq { index } => (full.index(*index), false),
            Segment::Map { key } if keyed => (full.key(key), false),
            Segment::Map { key } => (full.field(key), DATA_KEYED.contains(&key.as_str())),
            Segment::Enum { .. } => continue,
            Segment::Unknown => break,
        };
        full = next;
        keyed = is_data_keyed;
    }
    let mut message = err.to_string();
    if err.is_data() {
        let position = format!(" at line {} column {}", err.line(), err.column());
        if let Some(stripped) = message.strip_suffix(&position) {
            message.truncate(stripped.len());
        }
    }
    ConfigError::Json {
        path: full,
        message,
    }
}

/// The plugin JSON as written: a default policy and per-route policies.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, bound = "C: Deserialize<'de>")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Envelope<C> {
    /// The policy of every route without one of its own; none: those routes pass untouched.
    #[serde(default, deserialize_with = "optional_object")]
    pub default: Option<C>,
    /// Policies by Envoy route name (under Istio the VirtualService http route name, plus
    /// `.` and the match name when the match is named).
    #[serde(default, deserialize_with = "object_entries")]
    pub routes: Entries<C>,
}

impl<C> Default for Envelope<C> {
    fn default() -> Self {
        Self {
            default: None,
            routes: Entries::default(),
        }
    }
}

impl<C: DeserializeOwned> Envelope<C> {
    /// Parses plugin JSON; empty input is an empty envelope (the filter does nothing).
    pub fn from_json(json: &[u8]) -> Result<Self, ConfigError> {
        Self::from_json_at(json, &FieldPath::root())
    }

    /// [`Envelope::from_json`] for an envelope at `at` (a bundle's stage).
    pub fn from_json_at(json: &[u8], at: &FieldPath) -> Result<Self, ConfigError> {
        if json.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        parse_json_at(json, at).map(|envelope: Object<Self>| envelope.0)
    }
}

/// A JSON object whose keys are data (route names, header names): its entries in the order
/// written. A key written twice is an error (serde's maps keep the last silently).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entries<V>(pub Vec<(String, V)>);

impl<V> Default for Entries<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EntriesVisitor(PhantomData::<V>))
    }
}

/// [`Entries`] whose values are objects ([`object`]): a route's policy.
pub fn object_entries<'de, D, V>(deserializer: D) -> Result<Entries<V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    deserializer
        .deserialize_map(EntriesVisitor(PhantomData::<Object<V>>))
        .map(|entries| Entries(entries.0.into_iter().map(|(k, v)| (k, v.0)).collect()))
}

struct EntriesVisitor<V>(PhantomData<V>);

impl<'de, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<V> {
    type Value = Entries<V>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries: Vec<(String, V)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format_args!(
                    "key \"{}\" written twice",
                    escape(&key)
                )));
            }
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(Entries(entries))
    }
}

/// Deserialize for an enum of names (`"child"`): serde's derive reads a number given instead
/// as the start of another shape ("expected value"); this says what was expected.
#[macro_export]
macro_rules! config_names {
    ($type:ty { $($variant:ident = $name:literal),+ $(,)? }) => {
        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                const NAMES: &[&str] = &[$($name),+];
                let index = $crate::config::name(deserializer, NAMES)?;
                const VARIANTS: &[$type] = &[$(<$type>::$variant),+];
                VARIANTS.get(index).copied().ok_or_else(|| serde::de::Error::custom("no such name"))
            }
        }
    };
}

/// The index of the name in `names` that the JSON string is.
pub fn name<'de, D: Deserializer<'de>>(
    deserializer: D,
    names: &'static [&'static str],
) -> Result<usize, D::Error> {
    struct NameVisitor(&'static [&'static str]);

    impl Visitor<'_> for NameVisitor {
        type Value = usize;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("one of ")?;
            for (i, name) in self.0.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "`{name}`")?;
            }
            Ok(())
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<usize, E> {
            self.0
                .iter()
                .position(|name| *name == value)
                .ok_or_else(|| E::unknown_variant(value, self.0))
        }
    }

    deserializer.deserialize_str(NameVisitor(names))
}

/// A JSON number as a double; a type error says `expected <expected>`.
pub fn number<'de, D: Deserializer<'de>>(
    deserializer: D,
    expected: &'static str,
) -> Result<f64, D::Error> {
    struct NumberVisitor(&'static str);

    impl Visitor<'_> for NumberVisitor {
        type Value = f64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }

        fn visit_f64<E: de::Error>(self, n: f64) -> Result<f64, E> {
            Ok(n)
        }

        fn visit_u64<E: de::Error>(self, n: u64) -> Result<f64, E> {
            Ok(n as f64)
        }

        fn visit_i64<E: de::Error>(self, n: i64) -> Result<f64, E> {
            Ok(n as f64)
        }
    }

    deserializer.deserialize_f64(NumberVisitor(expected))
}

/// A decimal type read from a JSON number: `parse` gets the shortest text that reads back as
/// the same double, which is what was written for any number with up to 15 significant
/// digits. A type error, or text `parse` refuses, says `expected <expected>`.
pub fn decimal<'de, D: Deserializer<'de>, T>(
    deserializer: D,
    expected: &'static str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, D::Error> {
    let number = number(deserializer, expected)?;
    parse(&format!("{number}"))
        .ok_or_else(|| de::Error::invalid_value(de::Unexpected::Float(number), &expected))
}

/// A JSON Schema written by hand, for a type whose serde shape the derive cannot see (its own
/// `Deserialize`): `json_schema!(Type, "SchemaName", { ...schema... })`.
#[macro_export]
macro_rules! json_schema {
    ($type:ty, $name:literal, $schema:tt) => {
        #[cfg(feature = "schema")]
        impl schemars::JsonSchema for $type {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!($schema)
            }
        }
    };
}

/// A struct read only from a JSON object: serde's derive would also take a list, its
/// elements as the fields in order (`"fallback": [503]`), which no one means.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = Object<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }

        deserializer.deserialize_map(ObjectVisitor(PhantomData))
    }
}

/// `#[serde(deserialize_with = "object")]` on a field whose type is a struct.
pub fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    Object::deserialize(deserializer).map(|object| object.0)
}

/// [`object`] for an optional struct (`null` is none).
pub fn optional_object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<Object<T>>::deserialize(deserializer).map(|object| object.map(|o| o.0))
}

/// [`object`] for a list of structs.
pub fn objects<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Vec::<Object<T>>::deserialize(deserializer)
        .map(|objects| objects.into_iter().map(|o| o.0).collect())
}

#[cfg(feature = "schema")]
impl<V: schemars::JsonSchema> schemars::JsonSchema for Entries<V> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Entries_of_{}", V::schema_name()).into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "additionalProperties": generator.subschema_for::<V>(),
        })
    }

    fn inline_schema() -> bool {
        true
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
        let mut routes = Vec::with_capacity(self.routes.0.len());
        let routes_at = at.field("routes");
        for (name, config) in self.routes.0 {
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
/// SipHash into every module (see ARCHITECTURE.md, module size). Names are unique: [`Entries`]
/// refuses a key written twice.
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
        if let Some(bad) = name
            .chars()
            .find(|c| !u8::try_from(*c).is_ok_and(is_token_byte))
        {
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

/// [`HeaderName`]'s rule as a JSON Schema `pattern` (case is folded after parsing).
#[cfg(feature = "schema")]
pub const HEADER_NAME_PATTERN: &str = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";

#[cfg(test)]
mod tests {
    use super::*;
    // On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Policy {
        size: u32,
        #[serde(default)]
        names: Vec<String>,
        #[serde(default)]
        #[allow(dead_code)] // Read for its errors only.
        headers: Entries<String>,
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

    fn error(json: &str) -> String {
        compile(json).unwrap_err().to_string()
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
    fn routes_say_what_they_hold() {
        let both =
            compile(r#"{"default": {"size": 1}, "routes": {"a": {"size": 2}, "b": {"size": 3}}}"#)
                .unwrap();
        assert!(!both.is_empty() && both.has_default());
        assert_eq!(both.route_names().collect::<Vec<_>>(), ["a", "b"]);
        let routes_only = compile(r#"{"routes": {"a": {"size": 2}}}"#).unwrap();
        assert!(!routes_only.is_empty() && !routes_only.has_default());
        assert_eq!(routes_only.route_names().collect::<Vec<_>>(), ["a"]);
        let default_only = compile(r#"{"default": {"size": 1}}"#).unwrap();
        assert!(!default_only.is_empty() && default_only.has_default());
        assert_eq!(default_only.route_names().count(), 0);
    }

    #[test]
    fn an_error_knows_its_field() {
        let err = compile(r#"{"routes": {"checkout": {"size": 0}}}"#).unwrap_err();
        assert_eq!(err.path().to_string(), r#"routes["checkout"].size"#);
        let err = compile(r#"{"default": {"size": "big"}}"#).unwrap_err();
        assert_eq!(err.path().to_string(), "default.size");
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Shade {
        Light,
        Dark,
    }

    crate::config_names!(Shade { Light = "light", Dark = "dark" });

    #[test]
    fn a_name_of_the_wrong_type_says_every_name() {
        assert_eq!(
            serde_json::from_str::<Shade>(r#""dark""#).unwrap(),
            Shade::Dark
        );
        let err = serde_json::from_str::<Shade>("1").unwrap_err().to_string();
        assert!(
            err.starts_with("invalid type: integer `1`, expected one of `light`, `dark`"),
            "{err}"
        );
    }

    #[test]
    fn a_number_reads_negative_integers_too() {
        let read = |json: &str| number(&mut serde_json::Deserializer::from_str(json), "n");
        assert_eq!(read("-5").unwrap(), -5.0);
        assert_eq!(read("7").unwrap(), 7.0);
        assert_eq!(read("2.5").unwrap(), 2.5);
        assert!(
            read(r#""7""#)
                .unwrap_err()
                .to_string()
                .contains("expected n")
        );
    }

    #[test]
    fn without_default_unlisted_routes_get_no_policy() {
        let routes = compile(r#"{"routes": {"checkout": {"size": 2}}}"#).unwrap();
        assert!(routes.policy_for("other").is_none());
        assert!(compile("{}").unwrap().is_empty());
        assert!(compile("  ").unwrap().is_empty());
        assert!(compile(r#"{"default": null}"#).unwrap().is_empty());
    }

    #[test]
    fn unknown_field_names_the_route_and_the_field() {
        let err = compile(r#"{"routes": {"checkout": {"size": 2, "szie": 3}}}"#).unwrap_err();
        assert!(matches!(err, ConfigError::Json { .. }));
        assert_eq!(
            err.to_string(),
            r#"routes["checkout"].szie: unknown field `szie`, expected one of `size`, `names`, `headers`"#
        );
    }

    #[test]
    fn unknown_top_level_key_is_rejected() {
        assert_eq!(
            error(r#"{"route": {}}"#),
            "route: unknown field `route`, expected `default` or `routes`"
        );
    }

    #[test]
    fn wrong_type_names_the_field_and_what_was_found() {
        assert_eq!(
            error(r#"{"default": {"size": "big"}}"#),
            r#"default.size: invalid type: string "big", expected u32"#
        );
        assert_eq!(
            error(r#"{"default": {"size": -1}}"#),
            "default.size: invalid value: integer `-1`, expected u32"
        );
        assert_eq!(
            error(r#"{"default": {"size": 1.5}}"#),
            "default.size: invalid type: floating point `1.5`, expected u32"
        );
        assert_eq!(error(r#"{"default": {}}"#), "default: missing field `size`");
    }

    #[test]
    fn validation_error_names_route_field_and_index() {
        let err = compile(r#"{"routes": {"a.b": {"size": 1, "names": ["x", ""]}}}"#).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }));
        assert_eq!(
            err.to_string(),
            r#"routes["a.b"].names[1]: must not be empty"#
        );
        assert_eq!(
            error(r#"{"default": {"size": 0}}"#),
            "default.size: must be at least 1"
        );
    }

    #[test]
    fn a_key_written_twice_is_rejected_anywhere() {
        assert_eq!(
            error(r#"{"routes": {"a": {"size": 1}, "a": {"size": 2}}}"#),
            r#"routes: key "a" written twice"#
        );
        assert_eq!(
            error(r#"{"default": {"size": 1, "size": 2}}"#),
            "default: duplicate field `size`"
        );
        assert_eq!(
            error(r#"{"default": {"size": 1, "headers": {"x-a": "1", "x-a": "2"}}}"#),
            r#"default.headers: key "x-a" written twice"#
        );
        assert_eq!(
            error(r#"{"routes": {}, "routes": {}}"#),
            "(config): duplicate field `routes`"
        );
    }

    #[test]
    fn paths_quote_data_keys_and_name_fields() {
        assert_eq!(
            error(r#"{"routes": {"shop": {"size": 1, "headers": {"x-a": 1}}}}"#),
            r#"routes["shop"].headers["x-a"]: invalid type: integer `1`, expected a string"#
        );
    }

    #[test]
    fn bad_json_and_wrong_shapes_are_rejected() {
        assert_eq!(
            error(r#"{} x"#),
            "(config): trailing characters at line 1 column 4"
        );
        assert!(error(r#"{"default": "#).contains("EOF while parsing"));
        assert_eq!(
            error(r#"[]"#),
            "(config): invalid type: sequence, expected an object"
        );
        assert_eq!(
            error(r#"{"default": [1]}"#),
            "default: invalid type: sequence, expected an object"
        );
        assert_eq!(
            error(r#"{"default": {"size": 1, "names": "x"}}"#),
            r#"default.names: invalid type: string "x", expected a sequence"#
        );
    }

    #[test]
    fn routes_keep_the_order_written() {
        let envelope =
            Envelope::<Policy>::from_json(br#"{"routes": {"z": {"size": 1}, "a": {"size": 2}}}"#)
                .unwrap();
        let names: Vec<&str> = envelope.routes.0.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["z", "a"]);
    }

    #[test]
    fn a_value_inside_a_larger_document_carries_its_place() {
        let at = FieldPath::root().field("canary");
        let err = Envelope::<Policy>::from_json_at(br#"{"routes": {"x": {}}}"#, &at).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"canary.routes["x"]: missing field `size`"#
        );
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
