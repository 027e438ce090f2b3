//! The shape of `integration/noop-passes.txt`, the integration tests that pass with no-op
//! modules (`scripts/noop-runs.sh` runs them; this checks what it compares against).

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    #[test]
    fn every_listed_test_exists_and_says_why() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let list = fs::read_to_string(root.join("noop-passes.txt")).unwrap();
        for line in list
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            let (test, reason) = line
                .split_once('#')
                .unwrap_or_else(|| panic!("no reason (`# why`) on {line:?}"));
            assert!(reason.trim().len() >= 10, "reason too short on {line:?}");
            let (file, name) = test
                .trim()
                .split_once("::")
                .unwrap_or_else(|| panic!("not `file::test` on {line:?}"));
            let source = fs::read_to_string(root.join("tests").join(format!("{file}.rs")))
                .unwrap_or_else(|e| panic!("{line:?}: tests/{file}.rs: {e}"));
            assert!(
                source.contains(&format!("fn {name}()")),
                "{line:?}: no test {name} in tests/{file}.rs"
            );
        }
    }
}
