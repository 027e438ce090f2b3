//! W3C Trace Context: `traceparent` and `tracestate` (https://www.w3.org/TR/trace-context/).

use crate::hex;
use crate::request::trim_ows;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Length of a version-00 traceparent: `00-<32>-<16>-<2>`.
const V00_LEN: usize = 55;
/// The sampled bit, the only flag version 00 defines.
pub const FLAG_SAMPLED: u8 = 0x01;
/// Members a tracestate keeps; the spec's limit.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub version: u8,
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

/// Why a traceparent is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceParentError {
    /// Two traceparent headers, joined with a comma.
    Repeated,
    Length,
    Version,
    TraceId,
    ParentId,
    Flags,
    Delimiter,
}

impl TraceParent {
    /// Parses per the spec's processing model: a higher version is read by its version-00
    /// fields (and must then be 55 characters or continue with `-`); `ff` is invalid.
    pub fn parse(value: &[u8]) -> Result<Self, TraceParentError> {
        let value = trim_ows(value);
        if value.contains(&b',') {
            return Err(TraceParentError::Repeated);
        }
        if value.len() < V00_LEN {
            return Err(TraceParentError::Length);
        }
        let [version] =
            hex::decode_lower::<1>(field(value, 0, 2)).ok_or(TraceParentError::Version)?;
        if version == 0xff {
            return Err(TraceParentError::Version);
        }
        match (version, value.get(V00_LEN)) {
            (0, None) => {}
            (0, Some(_)) => return Err(TraceParentError::Length),
            (_, None | Some(b'-')) => {}
            (_, Some(_)) => return Err(TraceParentError::Delimiter),
        }
        if [2, 35, 52].iter().any(|at| value.get(*at) != Some(&b'-')) {
            return Err(TraceParentError::Delimiter);
        }
        let trace_id = hex::decode_lower(field(value, 3, 35)).ok_or(TraceParentError::TraceId)?;
        let parent_id =
            hex::decode_lower(field(value, 36, 52)).ok_or(TraceParentError::ParentId)?;
        let [flags] =
            hex::decode_lower::<1>(field(value, 53, 55)).ok_or(TraceParentError::Flags)?;
        if trace_id == [0; 16] {
            return Err(TraceParentError::TraceId);
        }
        if parent_id == [0; 8] {
            return Err(TraceParentError::ParentId);
        }
        // Flags a higher version defines mean nothing to version 00.
        let flags = if version == 0 {
            flags
        } else {
            flags & FLAG_SAMPLED
        };
        Ok(Self {
            version,
            trace_id,
            parent_id,
            flags,
        })
    }

    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }

    /// Always version 00: the only version this code writes.
    pub fn format(&self) -> String {
        let mut out = String::with_capacity(V00_LEN);
        out.push_str("00-");
        hex::encode_into(&self.trace_id, &mut out);
        out.push('-');
        hex::encode_into(&self.parent_id, &mut out);
        out.push('-');
        hex::encode_into(&[self.flags], &mut out);
        out
    }
}

fn field(value: &[u8], from: usize, to: usize) -> &[u8] {
    value.get(from..to).unwrap_or_default()
}

/// What to do with an incoming tracestate next to a valid traceparent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceStateAction {
    Keep,
    /// Over the member limit: the first 32 members, re-joined.
    Truncate(String),
    /// Malformed or a key repeated: vendors may not propagate it.
    Drop,
}

/// Checks a tracestate: every list member `key=value` valid, keys unique, at most 32
/// members kept (the right-most are removed first, as the spec's mutation rules do).
/// Empty members (`a=1,,b=2`) are allowed and dropped. Members after the 32nd are cut
/// without being read, so the work and memory are bounded whatever the header holds (no
/// allocation unless it must be cut).
pub fn check_tracestate(value: &[u8]) -> TraceStateAction {
    let mut keys: [&[u8]; MAX_TRACESTATE_MEMBERS] = [&[]; MAX_TRACESTATE_MEMBERS];
    let mut members = 0;
    let mut offset = 0;
    for member in value.split(|c| *c == b',') {
        let start = offset;
        offset += member.len() + 1;
        let member = trim_ows(member);
        if member.is_empty() {
            continue;
        }
        if members == MAX_TRACESTATE_MEMBERS {
            return truncate(value, start);
        }
        let Some(eq) = member.iter().position(|c| *c == b'=') else {
            return TraceStateAction::Drop;
        };
        let (key, value) = (
            field(member, 0, eq),
            member.get(eq + 1..).unwrap_or_default(),
        );
        let seen = keys.get(..members).unwrap_or_default();
        if !valid_key(key) || !valid_value(value) || seen.contains(&key) {
            return TraceStateAction::Drop;
        }
        if let Some(slot) = keys.get_mut(members) {
            *slot = key;
        }
        members += 1;
    }
    TraceStateAction::Keep
}

/// The members before byte `cut` (where the 33rd member starts), re-joined.
fn truncate(value: &[u8], cut: usize) -> TraceStateAction {
    let kept = value.get(..cut.saturating_sub(1)).unwrap_or_default();
    let kept: Vec<&[u8]> = kept
        .split(|c| *c == b',')
        .map(trim_ows)
        .filter(|m| !m.is_empty())
        .collect();
    TraceStateAction::Truncate(String::from_utf8_lossy(&kept.join(&b","[..])).into_owned())
}

/// `simple-key` or `tenant@system` per the spec's grammar.
fn valid_key(key: &[u8]) -> bool {
    let rest_ok = |s: &[u8]| {
        s.iter()
            .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/'))
    };
    match key.iter().position(|c| *c == b'@') {
        None => {
            matches!(key.first(), Some(b'a'..=b'z'))
                && key.len() <= 256
                && rest_ok(field(key, 1, key.len()))
        }
        Some(at) => {
            let (tenant, system) = (field(key, 0, at), field(key, at + 1, key.len()));
            matches!(tenant.first(), Some(b'a'..=b'z' | b'0'..=b'9'))
                && tenant.len() <= 241
                && rest_ok(field(tenant, 1, tenant.len()))
                && matches!(system.first(), Some(b'a'..=b'z'))
                && system.len() <= 14
                && rest_ok(field(system, 1, system.len()))
        }
    }
}

/// 1 to 256 printable ASCII characters except `,` and `=`, not ending in a space.
fn valid_value(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= 256
        && value
            .iter()
            .all(|c| (0x20..=0x7e).contains(c) && *c != b',' && *c != b'=')
        && value.last() != Some(&b' ')
}

/// The invalid `traceparent` values of the W3C trace-context test suite (test/test.py), built
/// around a valid trace id and parent id (lowercase hex, 32 and 16 digits). The unit tests and
/// the real-Envoy test (`integration/tests/traceid.rs`) both send every one.
pub fn invalid_test_vectors(trace: &str, parent: &str) -> Vec<String> {
    vec![
        // version
        format!("ff-{trace}-{parent}-01"),
        format!(".0-{trace}-{parent}-01"),
        format!("0.-{trace}-{parent}-01"),
        format!("0-{trace}-{parent}-01"),
        format!("000-{trace}-{parent}-01"),
        format!("0A-{trace}-{parent}-01"),
        format!("00-{trace}-{parent}-01-what-the-future-will-not-be-like"),
        format!("cc-{trace}-{parent}-01.what-the-future-will-not-be-like"),
        // trace-id
        format!("00-00000000000000000000000000000000-{parent}-01"),
        format!("00-.2345678901234567890123456789012-{parent}-01"),
        format!("00-1234567890123456789012345678901.-{parent}-01"),
        format!("00-ABCDEFABCDEF12345678901234567890-{parent}-01"),
        format!("00-1234567890123456789012345678901-{parent}-01"),
        format!("00-123456789012345678901234567890123-{parent}-01"),
        // parent-id
        format!("00-{trace}-0000000000000000-01"),
        format!("00-{trace}-.234567890123456-01"),
        format!("00-{trace}-123456789012345.-01"),
        format!("00-{trace}-ABCDEF1234567890-01"),
        format!("00-{trace}-123456789012345-01"),
        format!("00-{trace}-12345678901234567-01"),
        // flags
        format!("00-{trace}-{parent}-.0"),
        format!("00-{trace}-{parent}-0."),
        format!("00-{trace}-{parent}-0"),
        format!("00-{trace}-{parent}-AB"),
        format!("00-{trace}-{parent}-001"),
        // shape
        format!("00_{trace}_{parent}_01"),
        String::new(),
        "garbage".to_owned(),
        // two headers joined by a comma
        format!("00-{trace}-{parent}-01,00-{trace}-{parent}-01"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    // On wasm32 the same tests run under wasm-bindgen-test (in Node, scripts/test.sh).
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const TRACE: &str = "12345678901234567890123456789012";
    const PARENT: &str = "1234567890123456";

    fn parse(s: &str) -> Result<TraceParent, TraceParentError> {
        TraceParent::parse(s.as_bytes())
    }

    #[test]
    fn spec_example_is_valid() {
        let tp = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            crate::hex::encode(&tp.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(crate::hex::encode(&tp.parent_id), "00f067aa0ba902b7");
        assert!(tp.sampled());
        assert_eq!(
            tp.format(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let tp = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!tp.sampled());
    }

    // Valid and invalid vectors from the W3C trace-context test suite (test/test.py).
    #[test]
    fn test_suite_valid_vectors() {
        for v in [
            format!("00-{TRACE}-{PARENT}-01"),
            format!("00-{TRACE}-{PARENT}-00"),
            format!("00-{TRACE}-{PARENT}-ff"),
            format!("cc-{TRACE}-{PARENT}-01"),
            format!("cc-{TRACE}-{PARENT}-01-what-the-future-will-be-like"),
            format!(" 00-{TRACE}-{PARENT}-01"),
            format!("00-{TRACE}-{PARENT}-01\t"),
            format!("\t 00-{TRACE}-{PARENT}-01 \t"),
        ] {
            assert!(parse(&v).is_ok(), "{v:?} should be valid");
        }
    }

    #[test]
    fn test_suite_invalid_vectors() {
        for v in invalid_test_vectors(TRACE, PARENT) {
            assert!(parse(&v).is_err(), "{v:?} should be invalid");
        }
    }

    #[test]
    fn higher_version_is_read_as_00_and_written_as_00() {
        let tp = parse(&format!("cc-{TRACE}-{PARENT}-03-future")).unwrap();
        assert_eq!(tp.version, 0xcc);
        assert_eq!(tp.flags, FLAG_SAMPLED, "unknown flags are dropped");
        assert_eq!(tp.format(), format!("00-{TRACE}-{PARENT}-01"));
    }

    #[test]
    fn non_utf8_is_invalid_not_a_panic() {
        assert!(TraceParent::parse(b"00-\xff\xfe").is_err());
        let mut long = format!("00-{TRACE}-{PARENT}-01").into_bytes();
        long[10] = 0xff;
        assert!(TraceParent::parse(&long).is_err());
    }

    #[test]
    fn tracestate_valid_lists_are_kept() {
        for v in [
            "foo=1",
            "foo=1,bar=2",
            "foo=1 , bar=2",
            "foo=1,,bar=2",
            "tenant@system=x",
            "1tenant@sys=x",
            "a-b_c*d/e=v a l",
        ] {
            assert_eq!(
                check_tracestate(v.as_bytes()),
                TraceStateAction::Keep,
                "{v}"
            );
        }
    }

    #[test]
    fn tracestate_invalid_lists_are_dropped() {
        for v in [
            "foo",
            "foo=",
            "Foo=1",
            "1foo=1",
            "foo=1,foo=2",
            "foo@=1",
            "@foo=1",
            "foo=bar=baz",
            "foo=\u{7f}",
            "tenant@1system=1",
        ] {
            assert_eq!(
                check_tracestate(v.as_bytes()),
                TraceStateAction::Drop,
                "{v}"
            );
        }
        assert_eq!(check_tracestate(b"foo=\xff"), TraceStateAction::Drop);
        let long_key = format!("{}=1", "k".repeat(257));
        assert_eq!(
            check_tracestate(long_key.as_bytes()),
            TraceStateAction::Drop
        );
    }

    #[test]
    fn tracestate_members_after_the_32nd_are_not_read() {
        let members = (1..=32).map(|i| format!("k{i}=v{i}")).collect::<Vec<_>>();
        let kept = TraceStateAction::Truncate(members.join(","));
        for tail in ["k1=again", "not a member", "K=\u{7f}"] {
            let value = format!("{},{tail}", members.join(","));
            assert_eq!(check_tracestate(value.as_bytes()), kept, "{tail}");
        }
        // A 60 KB header of 15,000 members: cut after 32 (before, every key was compared
        // with every other: 10^8 comparisons in a VM).
        let huge = (0..15_000).map(|i| format!("k{i}=v")).collect::<Vec<_>>();
        let TraceStateAction::Truncate(kept) = check_tracestate(huge.join(",").as_bytes()) else {
            panic!("not cut");
        };
        assert_eq!(kept.split(',').count(), 32);
    }

    #[test]
    fn tracestate_keeps_at_most_32_members() {
        let members = |n: usize| (1..=n).map(|i| format!("k{i}=v{i}")).collect::<Vec<_>>();
        assert_eq!(
            check_tracestate(members(32).join(",").as_bytes()),
            TraceStateAction::Keep
        );
        assert_eq!(
            check_tracestate(members(40).join(" , ").as_bytes()),
            TraceStateAction::Truncate(members(32).join(","))
        );
    }

    #[test]
    fn each_invalid_traceparent_names_its_fault() {
        use TraceParentError as E;
        let zeros32 = "0".repeat(32);
        for (v, want) in [
            (
                format!("00-{TRACE}-{PARENT}-01,00-{TRACE}-{PARENT}-01"),
                E::Repeated,
            ),
            (format!("00-{TRACE}-{PARENT}-1"), E::Length),
            (format!("00-{TRACE}-{PARENT}-01-"), E::Length),
            (format!("ff-{TRACE}-{PARENT}-01"), E::Version),
            (format!("0A-{TRACE}-{PARENT}-01"), E::Version),
            (format!("cc-{TRACE}-{PARENT}-01.x"), E::Delimiter),
            (format!("00_{TRACE}-{PARENT}-01"), E::Delimiter),
            (format!("00-{TRACE}_{PARENT}-01"), E::Delimiter),
            (format!("00-{TRACE}-{PARENT}_01"), E::Delimiter),
            (format!("00-{zeros32}-{PARENT}-01"), E::TraceId),
            (
                format!("00-{}-{PARENT}-01", TRACE.to_uppercase().replace('1', "A")),
                E::TraceId,
            ),
            (format!("00-{TRACE}-0000000000000000-01"), E::ParentId),
            (format!("00-{TRACE}-ABCDEF1234567890-01"), E::ParentId),
            (format!("00-{TRACE}-{PARENT}-AB"), E::Flags),
        ] {
            assert_eq!(parse(&v), Err(want), "{v:?}");
        }
    }

    #[test]
    fn version_00_keeps_every_flag_and_samples_on_bit_0_only() {
        let tp = parse(&format!("00-{TRACE}-{PARENT}-ff")).unwrap();
        assert_eq!(tp.version, 0);
        assert_eq!(tp.flags, 0xff);
        assert!(tp.sampled());
        let tp = parse(&format!("00-{TRACE}-{PARENT}-02")).unwrap();
        assert_eq!(tp.flags, 0x02);
        assert!(!tp.sampled(), "0x02 is not the sampled bit");
        // A higher version: exactly 55 characters, only the sampled bit kept.
        let tp = parse(&format!("01-{TRACE}-{PARENT}-fe")).unwrap();
        assert_eq!((tp.version, tp.flags), (1, 0));
        assert_eq!(tp.format(), format!("00-{TRACE}-{PARENT}-00"));
    }

    #[test]
    fn tracestate_length_limits_are_inclusive() {
        let keep = |v: String| {
            assert_eq!(
                check_tracestate(v.as_bytes()),
                TraceStateAction::Keep,
                "{v}"
            )
        };
        let drop = |v: String| {
            assert_eq!(
                check_tracestate(v.as_bytes()),
                TraceStateAction::Drop,
                "{v}"
            )
        };
        // simple key: 1 to 256 characters
        keep(format!("{}=1", "k".repeat(256)));
        drop(format!("{}=1", "k".repeat(257)));
        // tenant: 1 to 241 characters, system: 1 to 14
        keep(format!("{}@s=1", "t".repeat(241)));
        drop(format!("{}@s=1", "t".repeat(242)));
        keep(format!("t@{}=1", "s".repeat(14)));
        drop(format!("t@{}=1", "s".repeat(15)));
        drop("t@=1".to_owned());
        // value: 1 to 256 printable characters
        keep(format!("k={}", "v".repeat(256)));
        drop(format!("k={}", "v".repeat(257)));
        keep("k= ~!".to_owned());
        drop("k=\u{1f}".to_owned());
    }

    #[test]
    fn the_invalid_vectors_are_the_suites_29() {
        let vectors = invalid_test_vectors(TRACE, PARENT);
        // 8 version, 6 trace-id, 6 parent-id, 5 flags, 3 shape, 1 repeated header.
        assert_eq!(vectors.len(), 29);
        assert_eq!(vectors[0], format!("ff-{TRACE}-{PARENT}-01"));
        assert_eq!(
            vectors[28],
            format!("00-{TRACE}-{PARENT}-01,00-{TRACE}-{PARENT}-01")
        );
    }
}
