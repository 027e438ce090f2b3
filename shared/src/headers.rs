//! A header map as proxy-wasm hands it over: one buffer, read where it lies.
//!
//! The layout (the host's `proxy_get_header_map_pairs`): the pair count, then each pair's name
//! and value lengths, then each name and value with a NUL after it, all lengths little-endian
//! u32. Reading it in place costs one allocation per map (the buffer), where a list of owned
//! pairs costs two per header (the SDK's `get_map_bytes`) — a dozen headers, two dozen
//! allocations and frees per request, in a module's slow allocator.

use std::cell::OnceCell;

/// A serialized header map. A buffer that is not one (too short for what it declares) reads
/// as far as it goes.
#[derive(Debug, Clone, Default)]
pub struct HeaderPairs {
    bytes: Vec<u8>,
    /// Where each pair's name and value lie, found by the first lookup (a request's filters
    /// look up a dozen names; each would otherwise walk the length table again).
    index: OnceCell<Index>,
}

/// The pairs' places, and the set of their names' [`key_bit`]s: most names a request's
/// filters look for are absent (trace formats it does not use, rules that do not apply),
/// and a clear bit says so without a walk.
#[derive(Debug, Clone)]
struct Index {
    spans: Vec<Span>,
    names: u128,
}

impl From<Vec<Span>> for Index {
    fn from(spans: Vec<Span>) -> Self {
        let names = spans
            .iter()
            .fold(0, |names, span| names | key_bit(span.key));
        Self { spans, names }
    }
}

/// One pair's place in the buffer.
#[derive(Debug, Clone, Copy)]
struct Span {
    name: (usize, usize),
    value: (usize, usize),
    /// [`name_key`] of the name: a lookup compares the names only where the keys agree.
    key: u32,
}

/// A name's length with its first, middle and last bytes, bit 0x20 set in each (a fold
/// coarser than lower-casing: equal names, in any case, get equal keys).
fn name_key(name: &[u8]) -> u32 {
    let byte = |at: usize| u32::from(name.get(at).copied().unwrap_or(0) | 0x20);
    let len = name.len();
    (len.min(0xff) as u32) | byte(0) << 8 | byte(len / 2) << 16 | byte(len.wrapping_sub(1)) << 24
}

/// A key's bit in a 128-bit set (a multiplicative hash's top seven bits).
fn key_bit(key: u32) -> u128 {
    1 << (key.wrapping_mul(0x9e37_79b1) >> 25)
}

impl PartialEq for HeaderPairs {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for HeaderPairs {}

impl HeaderPairs {
    /// The host's buffer.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self {
            bytes,
            index: OnceCell::new(),
        }
    }

    /// Serializes `pairs` the way the host does, into one zeroed buffer of the exact size (the
    /// NULs come with it): the pairs are walked twice, to size it and to write the length
    /// table and the data side by side, with the lookup index made on the way.
    pub fn serialize<'a, I>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
        I::IntoIter: Clone,
    {
        let pairs = pairs.into_iter();
        let (count, data) = pairs
            .clone()
            .fold((0usize, 0usize), |(count, data), (n, v)| {
                (count + 1, data + n.len() + v.len() + 2)
            });
        let mut bytes = vec![0; 4 + 8 * count + data];
        let mut put = |at: usize, what: &[u8]| {
            if let Some(to) = bytes.get_mut(at..at + what.len()) {
                to.copy_from_slice(what);
            }
        };
        put(0, &u32_le(count));
        let mut spans = Vec::with_capacity(count);
        let mut at = 4 + 8 * count;
        for (i, (name, value)) in pairs.enumerate() {
            put(4 + 8 * i, &u32_le(name.len()));
            put(8 + 8 * i, &u32_le(value.len()));
            put(at, name);
            let name_at = (at, at + name.len());
            at += name.len() + 1;
            put(at, value);
            let value_at = (at, at + value.len());
            at += value.len() + 1;
            spans.push(Span {
                name: name_at,
                value: value_at,
                key: name_key(name),
            });
        }
        Self {
            bytes,
            index: OnceCell::from(Index::from(spans)),
        }
    }

    /// The serialized map, as the host reads one (e.g. a local reply's headers).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// The pairs in the host's order, repeats included.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let slice = |(from, to): (usize, usize)| self.bytes.get(from..to).unwrap_or_default();
        self.index()
            .spans
            .iter()
            .map(move |span| (slice(span.name), slice(span.value)))
    }

    /// The first value of `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let span = self.matching(name).next()?;
        self.bytes.get(span.value.0..span.value.1)
    }

    /// Every value of `name`, in order.
    pub fn get_all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> {
        self.matching(name).map(|span| {
            self.bytes
                .get(span.value.0..span.value.1)
                .unwrap_or_default()
        })
    }

    /// How many times `name` is present.
    pub fn count(&self, name: &str) -> usize {
        self.matching(name).count()
    }

    /// The pairs named `name`: none if its key's bit is clear, else keys compared first,
    /// names only where they agree.
    fn matching<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s Span> {
        let name = name.as_bytes();
        let key = name_key(name);
        let index = self.index();
        let spans = if index.names & key_bit(key) == 0 {
            &[]
        } else {
            index.spans.as_slice()
        };
        spans.iter().filter(move |span| {
            span.key == key
                && self
                    .bytes
                    .get(span.name.0..span.name.1)
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
    }

    fn index(&self) -> &Index {
        self.index.get_or_init(|| {
            let count = read_u32(&self.bytes, 0).unwrap_or(0);
            let mut spans = Vec::with_capacity(count.min(self.bytes.len() / 10));
            spans.extend(Pairs {
                bytes: &self.bytes,
                index: 0,
                count,
                data: 4usize.saturating_add(count.saturating_mul(8)),
            });
            Index::from(spans)
        })
    }
}

fn u32_le(n: usize) -> [u8; 4] {
    u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes()
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let word = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(word.try_into().ok()?) as usize)
}

/// Walks the length table of a buffer: each pair's place.
#[derive(Debug)]
struct Pairs<'a> {
    bytes: &'a [u8],
    index: usize,
    count: usize,
    /// Where the next name starts.
    data: usize,
}

impl Iterator for Pairs<'_> {
    type Item = Span;

    fn next(&mut self) -> Option<Span> {
        if self.index >= self.count {
            return None;
        }
        let lengths = 4 + self.index * 8;
        let name_len = read_u32(self.bytes, lengths)?;
        let value_len = read_u32(self.bytes, lengths + 4)?;
        let name_end = self.data.checked_add(name_len)?;
        let value_start = name_end.checked_add(1)?;
        let value_end = value_start.checked_add(value_len)?;
        if value_end > self.bytes.len() {
            return None;
        }
        let name = (self.data, name_end);
        let span = Span {
            name,
            value: (value_start, value_end),
            key: name_key(self.bytes.get(name.0..name.1).unwrap_or_default()),
        };
        self.data = value_end.checked_add(1)?;
        self.index += 1;
        Some(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn pairs_read_back_in_order_with_repeats() {
        let map = HeaderPairs::serialize([
            (&b":path"[..], &b"/a"[..]),
            (b"x-a", b"1"),
            (b"x-a", b"2"),
            (b"x-empty", b""),
        ]);
        let pairs: Vec<_> = map.iter().collect();
        assert_eq!(pairs.len(), 4);
        assert_eq!(map.get("X-A"), Some(&b"1"[..]));
        assert_eq!(map.count("x-a"), 2);
        assert_eq!(map.get_all("X-a").collect::<Vec<_>>(), [b"1", b"2"]);
        assert_eq!(map.get("x-empty"), Some(&b""[..]));
        assert_eq!(map.get("x-none"), None);
        // Read from the host's bytes, the index is the same.
        let read = HeaderPairs::from_bytes(map.as_bytes().to_vec());
        assert_eq!(read.get_all("X-a").collect::<Vec<_>>(), [b"1", b"2"]);
        assert_eq!(read.get(":PATH"), Some(&b"/a"[..]));
    }

    /// The key folds more than case: names it puts together are still told apart.
    #[test]
    fn names_that_share_a_key_are_told_apart() {
        assert_eq!(name_key(b"x@b"), name_key(b"x`b"));
        let map = HeaderPairs::serialize([(&b"x@b"[..], &b"1"[..]), (b"X`B", b"2")]);
        assert_eq!(map.get("x@b"), Some(&b"1"[..]));
        assert_eq!(map.get("x`b"), Some(&b"2"[..]));
        assert_eq!(map.count("X@B"), 1);
        assert_eq!(map.get("x-b"), None);
        assert_eq!(map.get(""), None);
    }

    #[test]
    fn maps_are_equal_by_their_pairs_and_empty_without_any() {
        let map = |pairs: &[(&[u8], &[u8])]| HeaderPairs::serialize(pairs.iter().copied());
        let a = map(&[(b"x-a", b"1"), (b"x-b", b"2")]);
        assert_eq!(a, map(&[(b"x-a", b"1"), (b"x-b", b"2")]));
        assert_ne!(a, map(&[(b"x-b", b"2"), (b"x-a", b"1")]));
        assert_ne!(a, map(&[(b"x-a", b"1")]));
        assert!(map(&[]).is_empty() && HeaderPairs::default().is_empty());
        assert!(!a.is_empty());
        // A pair of empty strings is a pair.
        let blank = map(&[(b"", b"")]);
        assert!(!blank.is_empty());
        assert_eq!(blank.iter().collect::<Vec<_>>(), [(&b""[..], &b""[..])]);
    }

    #[test]
    fn the_host_layout_is_read_as_the_sdk_reads_it() {
        // What proxy-wasm's own serializer produces for two pairs.
        let mut bytes = vec![2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0];
        bytes.extend_from_slice(b"a\0bc\0def\0\0");
        let map = HeaderPairs::from_bytes(bytes.clone());
        let pairs: Vec<_> = map.iter().collect();
        assert_eq!(pairs, [(&b"a"[..], &b"bc"[..]), (&b"def"[..], &b""[..])]);
        // And written in that layout, its index the one a lookup would make.
        let written = HeaderPairs::serialize([(&b"a"[..], &b"bc"[..]), (b"def", b"")]);
        assert_eq!(written.as_bytes(), bytes);
        assert_eq!(written.iter().collect::<Vec<_>>(), pairs);
    }

    #[test]
    fn a_truncated_or_lying_buffer_reads_as_far_as_it_goes() {
        let whole = HeaderPairs::serialize([(&b"x-a"[..], &b"1"[..]), (b"x-b", b"2")]);
        for cut in 0..whole.bytes.len() {
            let map = HeaderPairs::from_bytes(whole.bytes.get(..cut).unwrap().to_vec());
            assert!(map.iter().count() <= 2);
        }
        // Without its last NUL the last value is still whole; one byte less and it is not.
        let bytes = whole.as_bytes();
        let lost_nul = HeaderPairs::from_bytes(bytes[..bytes.len() - 1].to_vec());
        assert_eq!(lost_nul.get("x-b"), Some(&b"2"[..]));
        let cut = HeaderPairs::from_bytes(bytes[..bytes.len() - 2].to_vec());
        assert_eq!(cut.iter().collect::<Vec<_>>(), [(&b"x-a"[..], &b"1"[..])]);
        // A count far beyond the buffer.
        let map = HeaderPairs::from_bytes(vec![255, 255, 255, 255, 1, 0]);
        assert_eq!(map.iter().count(), 0);
        assert!(HeaderPairs::default().is_empty());
    }
}
