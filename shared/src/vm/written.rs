//! A phase's own request-header writes, so its later reads see what Envoy now has without
//! fetching the map again: in one buffer, allocated by the first write (a request's writes
//! are one or two short headers; a list of owned names and values cost two allocations and
//! frees a write, on the request path).

/// The writes in order: each a record of the name's length, the value's length (`REMOVED`:
/// the write removed the name), the name, the value. The last write of a name is the one
/// that stands.
#[derive(Debug, Default)]
pub struct Written {
    bytes: Vec<u8>,
}

const REMOVED: u32 = u32::MAX;
const REMOVED_LEN: usize = REMOVED as usize;

impl Written {
    /// Notes a set (`Some`: one value now) or a removal (`None`).
    pub fn note(&mut self, name: &str, value: Option<&[u8]>) {
        let len = |bytes: &[u8]| u32::try_from(bytes.len()).unwrap_or(REMOVED - 1);
        let value_len = value.map_or(REMOVED, len);
        let value = value.unwrap_or_default();
        if self.bytes.is_empty() {
            self.bytes.reserve(128);
        }
        self.bytes
            .extend_from_slice(&len(name.as_bytes()).to_le_bytes());
        self.bytes.extend_from_slice(&value_len.to_le_bytes());
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.extend_from_slice(value);
    }

    /// The last write of `name` (ASCII case-insensitive): `Some(None)` if it removed the
    /// name, `None` if the phase never wrote it.
    pub fn get(&self, name: &str) -> Option<Option<&[u8]>> {
        Records(&self.bytes)
            .filter(|record| record.name.eq_ignore_ascii_case(name.as_bytes()))
            .last()
            .map(|record| record.value)
    }
}

/// One write.
struct Record<'w> {
    name: &'w [u8],
    value: Option<&'w [u8]>,
}

/// The records of a buffer, in order.
struct Records<'w>(&'w [u8]);

impl<'w> Iterator for Records<'w> {
    type Item = Record<'w>;

    fn next(&mut self) -> Option<Record<'w>> {
        let word = |at: usize| -> Option<usize> {
            let word = self.0.get(at..at + 4)?;
            Some(u32::from_le_bytes(word.try_into().ok()?) as usize)
        };
        let name_len = word(0)?;
        let value_len = word(4)?;
        let (name, rest) = self.0.get(8..)?.split_at_checked(name_len)?;
        let (value, rest) = match value_len {
            REMOVED_LEN => (None, rest),
            len => {
                let (value, rest) = rest.split_at_checked(len)?;
                (Some(value), rest)
            }
        };
        self.0 = rest;
        Some(Record { name, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn the_last_write_of_a_name_stands_in_any_case() {
        let mut written = Written::default();
        assert_eq!(written.get("x-a"), None);
        written.note("x-a", Some(b"1"));
        written.note("X-B", None);
        written.note("x-c", Some(b""));
        assert_eq!(written.get("X-A"), Some(Some(&b"1"[..])));
        assert_eq!(written.get("x-b"), Some(None));
        assert_eq!(written.get("x-c"), Some(Some(&b""[..])));
        written.note("x-b", Some(b"back"));
        written.note("x-a", None);
        assert_eq!(written.get("x-b"), Some(Some(&b"back"[..])));
        assert_eq!(written.get("x-a"), Some(None));
        assert_eq!(written.get("x-"), None);
    }
}
