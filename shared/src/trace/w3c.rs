//! W3C Trace Context: `traceparent` and `tracestate` (https://www.w3.org/TR/trace-context/).

use crate::hex;
use crate::request::trim_ows;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Length of a version-00 traceparent: `00-<32>-<16>-<2>`.
const V00_LEN: usize = 55;
/// The sampled bit.
pub const FLAG_SAMPLED: u8 = 0x01;
/// Level 2's random-trace-id bit: at least the right-most 7 bytes of the trace id are random.
pub const FLAG_RANDOM: u8 = 0x02;
/// The flags Level 2 defines (version 00's); the others are reserved.
pub const KNOWN_FLAGS: u8 = FLAG_SAMPLED | FLAG_RANDOM;
/// List members a tracestate may have; one more makes it invalid.
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
        // A higher version's flags are read as far as version 00 defines them (sampled,
        // random); the rest are set to 0. Version 00's own are kept as received.
        let flags = if version == 0 {
            flags
        } else {
            flags & KNOWN_FLAGS
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

    /// Whether the sender says the trace id's right-most 7 bytes are random.
    pub fn random(&self) -> bool {
        self.flags & FLAG_RANDOM != 0
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
    /// Valid and already one line with nothing to drop: forwarded as received.
    Keep,
    /// Valid: forwarded as this one line (its lines combined, empty members and later
    /// repeats of a key dropped), the members in their order.
    Rewrite(String),
    /// Invalid, or no member at all: removed whole.
    Drop,
}

/// Checks a tracestate given as its header lines, which are one list (RFC 9110 field
/// combination), by W3C Trace Context Level 2: every list member `key=value` valid, at most
/// 32 members (a 33rd makes the whole list invalid: it is not read further, so the work is
/// bounded whatever the header holds). Empty members (only spaces and tabs between commas)
/// do not count and are dropped. A repeated key does not invalidate the list: its first
/// member is kept, later ones dropped (as the W3C test suite's own tracer does; `ot`, which
/// the sampler reads, then has one value). Allocates only a line it must rewrite.
pub fn check_tracestate(lines: &[&[u8]]) -> TraceStateAction {
    let mut keys: [&[u8]; MAX_TRACESTATE_MEMBERS] = [&[]; MAX_TRACESTATE_MEMBERS];
    // Bit i: member i repeats an earlier key.
    let mut repeats: u32 = 0;
    let mut members = 0;
    // The length of the line a rewrite writes (members kept, a comma before each but the first).
    let mut kept_len = 0;
    let mut dropped_empty = false;
    for member in list_members(lines) {
        if member.is_empty() {
            dropped_empty = true;
            continue;
        }
        if members == MAX_TRACESTATE_MEMBERS {
            return TraceStateAction::Drop;
        }
        let Some((key, value)) = split_member(member) else {
            return TraceStateAction::Drop;
        };
        if !valid_key(key) || !valid_value(value) {
            return TraceStateAction::Drop;
        }
        if keys.get(..members).unwrap_or_default().contains(&key) {
            repeats |= 1 << members;
        } else {
            kept_len += usize::from(kept_len > 0) + member.len();
        }
        if let Some(slot) = keys.get_mut(members) {
            *slot = key;
        }
        members += 1;
    }
    if members == 0 {
        return TraceStateAction::Drop;
    }
    if lines.len() == 1 && !dropped_empty && repeats == 0 {
        return TraceStateAction::Keep;
    }
    let mut kept = String::with_capacity(kept_len);
    let members = list_members(lines).filter(|m| !m.is_empty()).enumerate();
    for (_, member) in members.filter(|(i, _)| repeats & (1 << i) == 0) {
        if !kept.is_empty() {
            kept.push(',');
        }
        // Checked above: printable ASCII.
        kept.extend(member.iter().map(|c| char::from(*c)));
    }
    TraceStateAction::Rewrite(kept)
}

/// The list members of every line in order, without the optional whitespace around them
/// (empty ones included).
fn list_members<'a>(lines: &'a [&'a [u8]]) -> impl Iterator<Item = &'a [u8]> + 'a {
    lines
        .iter()
        .flat_map(|line| line.split(|c| *c == b','))
        .map(trim_ows)
}

/// `key=value` at the first `=`.
fn split_member(member: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = member.iter().position(|c| *c == b'=')?;
    Some((
        field(member, 0, eq),
        member.get(eq + 1..).unwrap_or_default(),
    ))
}

/// Level 2's key: `( lcalpha / DIGIT ) 0*255( keychar )`, where a keychar is a lower-case
/// letter, a digit, `_`, `-`, `*`, `/` or `@` (so `@` may appear anywhere after the first
/// character: Level 1's separate `tenant@system` shape is gone).
fn valid_key(key: &[u8]) -> bool {
    matches!(key.first(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && key.len() <= 256
        && key.iter().all(|c| {
            matches!(
                c,
                b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/' | b'@'
            )
        })
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
        let tp = parse(&format!("cc-{TRACE}-{PARENT}-07-future")).unwrap();
        assert_eq!(tp.version, 0xcc);
        assert_eq!(
            tp.flags,
            FLAG_SAMPLED | FLAG_RANDOM,
            "sampled and random are kept, unknown flags dropped"
        );
        assert_eq!(tp.format(), format!("00-{TRACE}-{PARENT}-03"));
        let tp = parse(&format!("01-{TRACE}-{PARENT}-fc")).unwrap();
        assert_eq!(tp.flags, 0);
    }

    /// Level 2's forward compatibility: a higher version is read by its first four fields
    /// whatever follows a `-`; `ff` is invalid; a higher version's fields are checked as
    /// version 00's are.
    #[test]
    fn higher_versions_follow_level_2s_rules() {
        for v in [
            format!("01-{TRACE}-{PARENT}-01"),
            format!("fe-{TRACE}-{PARENT}-01-anything-at-all"),
            format!("cc-{TRACE}-{PARENT}-01-"),
        ] {
            let tp = parse(&v).unwrap_or_else(|e| panic!("{v:?}: {e:?}"));
            assert_eq!(hex::encode(&tp.trace_id), TRACE);
            assert_eq!(hex::encode(&tp.parent_id), PARENT);
        }
        for v in [
            format!("ff-{TRACE}-{PARENT}-01"),
            format!("ff-{TRACE}-{PARENT}-01-future"),
            format!("cc-{TRACE}-{PARENT}-01x"),
            format!("cc-{}-{PARENT}-01-future", "0".repeat(32)),
            format!("cc-{TRACE}-{PARENT}-0g-future"),
            format!("cc-{TRACE}-{PARENT}"),
        ] {
            assert!(parse(&v).is_err(), "{v:?} should be invalid");
        }
    }

    fn check(lines: &[&str]) -> TraceStateAction {
        let lines: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        check_tracestate(&lines)
    }

    fn rewrite(value: &str) -> TraceStateAction {
        TraceStateAction::Rewrite(value.to_owned())
    }

    fn refs(lines: &[String]) -> Vec<&[u8]> {
        lines.iter().map(|l| l.as_bytes()).collect()
    }

    fn members(range: std::ops::RangeInclusive<usize>) -> Vec<String> {
        range.map(|i| format!("k{i}=v{i}")).collect()
    }

    #[test]
    fn tracestate_valid_lists_are_kept() {
        for v in [
            "foo=1",
            "foo=1,bar=2",
            "foo=1 , bar=2",
            "foo=1 \t , \t bar=2, \t baz=3",
            " foo=1",
            "\tfoo=1 \t",
            "a-b_c*d/e=v a l",
            "k=  leading spaces are the value's",
        ] {
            assert_eq!(check(&[v]), TraceStateAction::Keep, "{v:?}");
        }
    }

    /// Level 2's key grammar: a digit may come first, `@` anywhere after the first character.
    #[test]
    fn tracestate_keys_follow_level_2s_grammar() {
        for key in [
            "1foo",
            "0",
            "tenant@system",
            "1tenant@sys",
            "tenant@1system",
            "foo@",
            "foo@@bar",
            "foo@bar@baz",
            "a_-*/@9",
        ] {
            assert_eq!(
                check(&[&format!("{key}=1")]),
                TraceStateAction::Keep,
                "{key}"
            );
        }
        for key in [
            "",
            "@foo",
            "Foo",
            "fOo",
            "_foo",
            "-foo",
            "*foo",
            "/foo",
            "foo.bar",
            "foo bar",
            "foo\u{e9}",
        ] {
            assert_eq!(
                check(&[&format!("{key}=1,bar=2")]),
                TraceStateAction::Drop,
                "{key:?}"
            );
        }
        assert_eq!(check(&["foo =1"]), TraceStateAction::Drop);
    }

    /// The W3C test suite's `test_tracestate_all_allowed_characters`.
    #[test]
    fn every_allowed_character_is_kept() {
        let key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
        let value: String = (0x20u8..=0x7e)
            .filter(|c| *c != b',' && *c != b'=')
            .map(char::from)
            .collect();
        for key in [key.to_owned(), format!("{key}@a-z0-9_-*/")] {
            let line = format!("{key}={value}");
            assert_eq!(check(&[&line]), TraceStateAction::Keep, "{line}");
        }
    }

    #[test]
    fn tracestate_invalid_lists_are_dropped_whole() {
        for v in [
            "foo",
            "foo=",
            "foo=1,bar",
            "foo=bar=baz",
            "foo=,bar=3",
            "foo=\u{7f}",
            "foo=\t1",
            "foo=1,Bar=2",
        ] {
            assert_eq!(check(&[v]), TraceStateAction::Drop, "{v}");
        }
        assert_eq!(check_tracestate(&[b"foo=\xff"]), TraceStateAction::Drop);
        // One invalid line drops the others too.
        assert_eq!(check(&["foo=1", "bar"]), TraceStateAction::Drop);
        assert_eq!(check(&["foo=1", "=2", "baz=3"]), TraceStateAction::Drop);
    }

    #[test]
    fn several_lines_are_one_list() {
        // The W3C test suite's test_tracestate_multiple_headers_different_keys.
        assert_eq!(
            check(&["foo=1,bar=2", "rojo=1,congo=2", "baz=3"]),
            rewrite("foo=1,bar=2,rojo=1,congo=2,baz=3")
        );
        assert_eq!(check(&["foo=1 ", " bar=2"]), rewrite("foo=1,bar=2"));
        assert_eq!(check(&["foo=1", ""]), rewrite("foo=1"));
        assert_eq!(check(&["", "foo=1"]), rewrite("foo=1"));
        assert_eq!(check(&[]), TraceStateAction::Drop);
    }

    #[test]
    fn a_repeated_key_keeps_its_first_member() {
        assert_eq!(check(&["foo=1,foo=2"]), rewrite("foo=1"));
        assert_eq!(check(&["foo=1", "foo=2"]), rewrite("foo=1"));
        assert_eq!(check(&["foo=1", "foo=1"]), rewrite("foo=1"));
        assert_eq!(check(&["a=1,b=2,a=3", "c=4,b=5"]), rewrite("a=1,b=2,c=4"));
        // A repeat still counts towards the 32: it was sent.
        let mut list = members(1..=32);
        list.push("k1=again".to_owned());
        assert_eq!(check(&[&list.join(",")]), TraceStateAction::Drop);
    }

    #[test]
    fn empty_members_do_not_count_and_are_dropped() {
        assert_eq!(check(&["foo=1,,bar=2"]), rewrite("foo=1,bar=2"));
        assert_eq!(check(&[",foo=1, \t ,"]), rewrite("foo=1"));
        for empty in ["", " ", ",", " , \t ,"] {
            assert_eq!(check(&[empty]), TraceStateAction::Drop, "{empty:?}");
        }
        assert_eq!(check(&["", " , "]), TraceStateAction::Drop);
        // 32 members and as many empty ones are still 32.
        let padded = members(1..=32).join(",,");
        assert_eq!(check(&[&padded]), rewrite(&members(1..=32).join(",")));
    }

    #[test]
    fn more_than_32_members_are_invalid_whole() {
        assert_eq!(check(&[&members(1..=32).join(",")]), TraceStateAction::Keep);
        assert_eq!(check(&[&members(1..=33).join(",")]), TraceStateAction::Drop);
        assert_eq!(
            check(&[&members(1..=40).join(" , ")]),
            TraceStateAction::Drop
        );
        // Across lines: the W3C test suite's test_tracestate_member_count_limit.
        let all = members(1..=33);
        let lines =
            |n: usize| -> Vec<String> { all[..n].chunks(10).map(|c| c.join(",")).collect() };
        assert_eq!(
            check_tracestate(&refs(&lines(32))),
            rewrite(&members(1..=32).join(","))
        );
        assert_eq!(check_tracestate(&refs(&lines(33))), TraceStateAction::Drop);
        // 40 lines of one member each.
        let forty = members(1..=40);
        assert_eq!(check_tracestate(&refs(&forty)), TraceStateAction::Drop);
    }

    #[test]
    fn members_after_the_33rd_are_not_read() {
        let value = format!("{},k33=v,not a member", members(1..=32).join(","));
        assert_eq!(check(&[&value]), TraceStateAction::Drop);
        // A 60 KB header of 15,000 members: dropped at the 33rd.
        let huge = (0..15_000).map(|i| format!("k{i}=v")).collect::<Vec<_>>();
        assert_eq!(check(&[&huge.join(",")]), TraceStateAction::Drop);
    }

    #[test]
    fn tracestate_length_limits_are_inclusive() {
        let keep =
            |v: String| assert_eq!(check(&["foo=1", &v]), rewrite(&format!("foo=1,{v}")), "{v}");
        let drop = |v: String| assert_eq!(check(&["foo=1", &v]), TraceStateAction::Drop, "{v}");
        // key: 1 to 256 characters, `@` counted like any other
        keep(format!("{}=1", "z".repeat(256)));
        drop(format!("{}=1", "z".repeat(257)));
        keep(format!("{}@{}=1", "t".repeat(241), "v".repeat(14)));
        keep(format!("{}@v=1", "t".repeat(242)));
        keep(format!("t@{}=1", "v".repeat(15)));
        keep(format!("t@{}=1", "v".repeat(254)));
        drop(format!("t@{}=1", "v".repeat(255)));
        // value: 1 to 256 printable characters
        keep(format!("k={}", "v".repeat(256)));
        drop(format!("k={}", "v".repeat(257)));
        keep("k= ~!".to_owned());
        drop("k=\u{1f}".to_owned());
    }

    #[test]
    fn non_utf8_is_invalid_not_a_panic() {
        assert!(TraceParent::parse(b"00-\xff\xfe").is_err());
        let mut long = format!("00-{TRACE}-{PARENT}-01").into_bytes();
        long[10] = 0xff;
        assert!(TraceParent::parse(&long).is_err());
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
        assert!(tp.random());
        let tp = parse(&format!("00-{TRACE}-{PARENT}-02")).unwrap();
        assert_eq!(tp.flags, 0x02);
        assert!(!tp.sampled(), "0x02 is not the sampled bit");
        assert!(tp.random(), "0x02 is the random bit");
        assert!(!parse(&format!("00-{TRACE}-{PARENT}-fd")).unwrap().random());
        // A higher version: exactly 55 characters, only sampled and random kept.
        let tp = parse(&format!("01-{TRACE}-{PARENT}-fe")).unwrap();
        assert_eq!((tp.version, tp.flags), (1, FLAG_RANDOM));
        assert_eq!(tp.format(), format!("00-{TRACE}-{PARENT}-02"));
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
