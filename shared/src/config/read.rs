//! Typed reading of config JSON, field by field, with errors that name the field.
//!
//! What serde's derives would do, in a few KB: [`FromJson`] for values, [`Object`] for
//! structs (rejecting fields nobody asked for, which is `deny_unknown_fields`), [`one_of`]
//! for names that select a variant, [`map`] for objects whose keys are data.

use super::json::Json;
use super::{ConfigError, FieldPath, escape};

pub trait FromJson: Sized {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError>;
}

/// `expected a string, found the number 3`.
pub fn type_error(value: &Json, at: &FieldPath, expected: &str) -> ConfigError {
    ConfigError::Json {
        path: at.clone(),
        message: format!("expected {expected}, found {}", value.describe()),
    }
}

impl FromJson for String {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        match value {
            Json::String(s) => Ok(s.clone()),
            other => Err(type_error(other, at, "a string")),
        }
    }
}

impl FromJson for bool {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        match value {
            Json::Bool(b) => Ok(*b),
            other => Err(type_error(other, at, "true or false")),
        }
    }
}

macro_rules! whole_number {
    ($($t:ty),*) => {$(
        impl FromJson for $t {
            fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
                let expected = concat!("a whole number (", stringify!($t), ")");
                match value {
                    Json::Number(text) => text
                        .parse::<$t>()
                        .map_err(|_| type_error(value, at, expected)),
                    other => Err(type_error(other, at, expected)),
                }
            }
        }
    )*};
}
whole_number!(u16, u32, u64);

impl FromJson for f64 {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        match value {
            Json::Number(text) => match text.parse::<f64>() {
                Ok(n) if n.is_finite() => Ok(n),
                _ => Err(type_error(value, at, "a number in range")),
            },
            other => Err(type_error(other, at, "a number")),
        }
    }
}

impl<T: FromJson> FromJson for Vec<T> {
    fn from_json(value: &Json, at: &FieldPath) -> Result<Self, ConfigError> {
        match value {
            Json::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| T::from_json(item, &at.index(i)))
                .collect(),
            other => Err(type_error(other, at, "a list")),
        }
    }
}

/// A JSON object read as a struct. Ask for every field you know, then [`Object::finish`].
pub struct Object<'a> {
    entries: &'a [(String, Json)],
    at: FieldPath,
    known: Vec<&'static str>,
}

impl<'a> Object<'a> {
    pub fn new(value: &'a Json, at: &FieldPath) -> Result<Self, ConfigError> {
        match value {
            Json::Object(entries) => Ok(Self {
                entries,
                at: at.clone(),
                known: Vec::new(),
            }),
            other => Err(type_error(other, at, "an object")),
        }
    }

    /// The object's own path.
    pub fn at(&self) -> &FieldPath {
        &self.at
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Json> {
        self.known.push(key);
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn required<T: FromJson>(&mut self, key: &'static str) -> Result<T, ConfigError> {
        match self.get(key) {
            Some(value) => T::from_json(value, &self.at.field(key)),
            None => Err(ConfigError::Json {
                path: self.at.clone(),
                message: format!("missing field \"{key}\""),
            }),
        }
    }

    /// Absent is `None`; `null` is a type error (use [`Object::nullable`] to allow it).
    pub fn optional<T: FromJson>(&mut self, key: &'static str) -> Result<Option<T>, ConfigError> {
        match self.get(key) {
            Some(value) => T::from_json(value, &self.at.field(key)).map(Some),
            None => Ok(None),
        }
    }

    pub fn or<T: FromJson>(&mut self, key: &'static str, default: T) -> Result<T, ConfigError> {
        Ok(self.optional(key)?.unwrap_or(default))
    }

    /// For settings that are on by default: absent gives `default`, `null` turns it off.
    pub fn nullable<T: FromJson>(
        &mut self,
        key: &'static str,
        default: Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(Json::Null) => Ok(None),
            Some(value) => T::from_json(value, &self.at.field(key)).map(Some),
        }
    }

    /// The raw value of a field, for readers that need the path themselves.
    pub fn raw(&mut self, key: &'static str) -> Option<(&'a Json, FieldPath)> {
        let at = self.at.field(key);
        self.get(key).map(|value| (value, at))
    }

    /// Rejects any field that was not asked for.
    pub fn finish(self) -> Result<(), ConfigError> {
        match self
            .entries
            .iter()
            .find(|(k, _)| !self.known.contains(&k.as_str()))
        {
            None => Ok(()),
            Some((key, _)) => Err(ConfigError::Json {
                path: self.at.field(key),
                message: format!(
                    "unknown field, expected one of {}",
                    quoted_list(&self.known)
                ),
            }),
        }
    }
}

/// An object whose keys are data (route names, header names): its entries in order.
pub fn map<T: FromJson>(value: &Json, at: &FieldPath) -> Result<Vec<(String, T)>, ConfigError> {
    match value {
        Json::Object(entries) => entries
            .iter()
            .map(|(key, value)| Ok((key.clone(), T::from_json(value, &at.key(key))?)))
            .collect(),
        other => Err(type_error(other, at, "an object")),
    }
}

/// A name that selects one of `choices`: `unknown format "b4", expected one of "w3c", ...`.
pub fn one_of<T: Copy>(
    value: &Json,
    at: &FieldPath,
    what: &str,
    choices: &[(&'static str, T)],
) -> Result<T, ConfigError> {
    let names = || quoted_list(&choices.iter().map(|(name, _)| *name).collect::<Vec<_>>());
    match value {
        Json::String(s) => choices
            .iter()
            .find(|(name, _)| name == s)
            .map(|(_, choice)| *choice)
            .ok_or_else(|| ConfigError::Json {
                path: at.clone(),
                message: format!(
                    "unknown {what} \"{}\", expected one of {}",
                    escape(s),
                    names()
                ),
            }),
        other => Err(type_error(other, at, &format!("one of {}", names()))),
    }
}

fn quoted_list(names: &[&str]) -> String {
    let mut out = String::new();
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('"');
        out.push_str(name);
        out.push('"');
    }
    out
}
