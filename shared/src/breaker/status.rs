//! HTTP status codes as the breaker's config names them: one code (`503`) or a class
//! (`"5xx"`) as written ([`StatusMatch`]), and the set they make ([`StatusSet`]), which
//! [`classify`](super::classify) asks of every finished call.

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A status code (`503`) or a class of them (`"5xx"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    Code(u16),
    Class(u16),
}

impl<'de> Deserialize<'de> for StatusMatch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StatusVisitor;

        impl Visitor<'_> for StatusVisitor {
            type Value = StatusMatch;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(r#"a status code or a class like "5xx""#)
            }

            fn visit_u64<E: de::Error>(self, code: u64) -> Result<StatusMatch, E> {
                match code {
                    100..=599 => Ok(StatusMatch::Code(code as u16)),
                    _ => Err(E::custom("must be a status code between 100 and 599")),
                }
            }

            fn visit_str<E: de::Error>(self, class: &str) -> Result<StatusMatch, E> {
                match class.as_bytes() {
                    [digit @ b'1'..=b'5', b'x', b'x'] => {
                        Ok(StatusMatch::Class(u16::from(digit - b'0')))
                    }
                    _ => Err(E::custom(format_args!(
                        "unknown status class \"{}\", expected \"1xx\" to \"5xx\" or a status code",
                        crate::config::escape(class)
                    ))),
                }
            }
        }

        deserializer.deserialize_any(StatusVisitor)
    }
}

crate::json_schema!(StatusMatch, "StatusMatch", {
    "description": "A status code (503) or a class of them (\"5xx\").",
    "oneOf": [
        {"type": "integer", "minimum": 100, "maximum": 599},
        {"enum": ["1xx", "2xx", "3xx", "4xx", "5xx"]},
    ],
});

/// The status codes that count as failures: one bit per code 100..=599.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusSet([u64; 8]);

impl StatusSet {
    pub fn from_matches(matches: &[StatusMatch]) -> Self {
        let mut set = Self::default();
        for m in matches {
            let (low, high) = match *m {
                StatusMatch::Code(code) => (code, code),
                StatusMatch::Class(class) => (class * 100, class * 100 + 99),
            };
            for code in low..=high {
                set.insert(code);
            }
        }
        set
    }

    fn slot(code: u16) -> Option<(usize, u64)> {
        let offset = usize::from(code.checked_sub(100)?);
        (offset < 500).then(|| (offset / 64, 1u64 << (offset % 64)))
    }

    fn insert(&mut self, code: u16) {
        if let Some((word, bit)) = Self::slot(code)
            && let Some(w) = self.0.get_mut(word)
        {
            *w |= bit;
        }
    }

    pub fn contains(&self, code: u16) -> bool {
        Self::slot(code)
            .and_then(|(word, bit)| self.0.get(word).map(|w| w & bit != 0))
            .unwrap_or(false)
    }
}
