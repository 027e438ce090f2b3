//! The README's two-minute tour, read as examples that can be run: the ```` ```console ````
//! block after the `<!-- tour` marker, where `$ ` starts a command, `# ` a comment, and every
//! other line is a line its output must contain (`…` stands for any text).
//!
//! `mesh-tour print` shows the tour (scripts/run-local.sh's usage text); `mesh-tour check`,
//! run by `scripts/run-local.sh --smoke`, runs every command against the demo and fails on an
//! output line the README promises and the demo did not print. So the README and the demo
//! cannot drift.

/// Where the tour block starts in README.md.
pub const MARKER: &str = "<!-- tour";

/// Stands for any text (also none) in an expected line.
pub const ANY: char = '…';

/// The demo's addresses as the README writes them; [`localize`] replaces them.
pub const ENVOY: &str = "127.0.0.1:10000";
pub const ADMIN: &str = "127.0.0.1:9901";
/// Where the README's commands find the project's binaries (`grpc-call`).
pub const BIN_DIR: &str = "target/debug/";

/// One command of the tour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// The comment lines before it, without `# `.
    pub comment: Vec<String>,
    /// The shell command, without `$ `.
    pub command: String,
    /// Lines its output must contain (a line that is only `…` promises nothing).
    pub expected: Vec<String>,
}

/// The tour's examples in README order.
pub fn examples(readme: &str) -> Result<Vec<Example>, String> {
    let start = readme
        .find(MARKER)
        .ok_or_else(|| format!("README.md has no tour block ({MARKER} ...)"))?;
    let mut lines = readme[start..].lines().skip(1);
    if lines.next().map(str::trim) != Some("```console") {
        return Err(format!(
            "the line after {MARKER} ... must open a ```console block"
        ));
    }
    let mut out: Vec<Example> = Vec::new();
    let mut comment = Vec::new();
    for line in lines {
        if line.trim() == "```" {
            return if out.is_empty() {
                Err("the tour block has no `$ ` command".to_owned())
            } else {
                Ok(out)
            };
        }
        if let Some(text) = line.strip_prefix("# ") {
            comment.push(text.to_owned());
        } else if let Some(command) = line.strip_prefix("$ ") {
            out.push(Example {
                comment: std::mem::take(&mut comment),
                command: command.to_owned(),
                expected: Vec::new(),
            });
        } else if !line.trim().is_empty() {
            let Some(example) = out.last_mut() else {
                return Err(format!("output before any command: {line}"));
            };
            example.expected.push(line.to_owned());
        }
    }
    Err("the tour block is not closed".to_owned())
}

/// Whether `line` is `pattern`, each `…` in it standing for any text.
pub fn matches(pattern: &str, line: &str) -> bool {
    let mut parts = pattern.split(ANY);
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = line.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The expected lines that no line of `output` matches (carriage returns and trailing
/// spaces ignored; a line of only `…` is skipped).
pub fn missing<'a>(expected: &'a [String], output: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = output
        .lines()
        .map(|l| l.trim_end_matches(['\r', ' ']))
        .collect();
    expected
        .iter()
        .map(|e| e.trim_end())
        .filter(|e| *e != ANY.to_string())
        .filter(|e| !lines.iter().any(|line| matches(e, line)))
        .collect()
}

/// A README command for a demo on other ports, with the binaries in `bin_dir`.
pub fn localize(command: &str, envoy_port: u16, admin_port: u16, bin_dir: &str) -> String {
    let bin_dir = format!("{}/", bin_dir.trim_end_matches('/'));
    command
        .replace(ENVOY, &format!("127.0.0.1:{envoy_port}"))
        .replace(ADMIN, &format!("127.0.0.1:{admin_port}"))
        .replace(BIN_DIR, &bin_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const README: &str = "intro\n<!-- tour: run -->\n```console\n# a comment\n# more\n\
        $ curl -si 127.0.0.1:10000/x\nHTTP/1.1 200 OK\nx-id: …\n\n$ true\n```\nafter\n";

    #[test]
    fn examples_are_read_from_the_block_after_the_marker() {
        assert_eq!(
            examples(README).unwrap(),
            [
                Example {
                    comment: vec!["a comment".into(), "more".into()],
                    command: "curl -si 127.0.0.1:10000/x".into(),
                    expected: vec!["HTTP/1.1 200 OK".into(), "x-id: …".into()],
                },
                Example {
                    comment: vec![],
                    command: "true".into(),
                    expected: vec![],
                },
            ]
        );
        assert!(examples("no marker").is_err());
        assert!(examples("<!-- tour -->\n```console\n$ true\n").is_err());
        assert!(examples("<!-- tour -->\n```console\nstray\n```\n").is_err());
    }

    #[test]
    fn an_ellipsis_stands_for_any_text() {
        assert!(matches("x-trace-id: …", "x-trace-id: 4bf9"));
        assert!(matches("x-trace-id: …", "x-trace-id: "));
        assert!(!matches("x-trace-id: …", "x-trace: 4bf9"));
        assert!(matches(
            "{…\"service\":\"v1\"}",
            "{\"a\":1,\"service\":\"v1\"}"
        ));
        assert!(!matches("{…\"service\":\"v1\"}", "{\"service\":\"v2\"}"));
        assert!(matches("00-…-…-03", "00-ab-cd-03"));
        assert!(!matches("00-…-…-03", "00-ab-03"));
        assert!(matches("a…a", "aa"));
        assert!(!matches("a…a", "a"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exact and more"));
    }

    #[test]
    fn missing_lists_what_the_output_lacks() {
        let expected = vec![
            "HTTP/1.1 200 OK".to_owned(),
            "…".to_owned(),
            "x: …".to_owned(),
        ];
        assert!(missing(&expected, "HTTP/1.1 200 OK\r\nx: 1\r\n").is_empty());
        assert_eq!(
            missing(&expected, "HTTP/1.1 503 NO\r\nx: 1\r\n"),
            ["HTTP/1.1 200 OK"]
        );
    }

    #[test]
    fn commands_are_moved_to_the_demos_ports() {
        assert_eq!(
            localize(
                "target/debug/grpc-call 127.0.0.1:10000 say; curl 127.0.0.1:9901/stats",
                35000,
                35001,
                "/t/debug/"
            ),
            "/t/debug/grpc-call 127.0.0.1:35000 say; curl 127.0.0.1:35001/stats"
        );
    }
}
