//! Golden parser cases, as in buildkit's `parser/testfiles`: each case directory holds a
//! `Buildfile` and the `expected` dump of its stages with every instruction expanded
//! (positive cases) or the expected error with its `file:line:column` (negative cases).
//! An optional `build-args` file holds `KEY=VALUE` lines. `UPDATE_GOLDEN=1` rewrites the
//! expected files.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

fn cases(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(kind);
    let mut cases: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("Buildfile").is_file())
        .collect();
    cases.sort();
    cases
}

fn build_args(case: &Path) -> BTreeMap<String, String> {
    let Ok(text) = fs::read_to_string(case.join("build-args")) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn render(case: &Path) -> Result<String, String> {
    let text = fs::read_to_string(case.join("Buildfile")).unwrap();
    let buildfile = strata_builder::stages::load(&text, "Buildfile").map_err(|e| e.to_string())?;
    strata_builder::stages::dump(&buildfile, &build_args(case)).map_err(|e| e.to_string())
}

fn check(case: &Path, actual: &str, failures: &mut Vec<String>) {
    let expected_path = case.join("expected");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(&expected_path, actual).unwrap();
        return;
    }
    let expected = fs::read_to_string(&expected_path).unwrap_or_default();
    if expected.trim_end() != actual.trim_end() {
        failures.push(format!(
            "{}:\n--- expected\n{expected}\n--- actual\n{actual}",
            case.display()
        ));
    }
}

#[test]
fn parse_golden_cases_match_expected() {
    let cases = cases("parse");
    assert!(cases.len() >= 40, "only {} positive cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        match render(case) {
            Ok(dump) => check(case, &dump, &mut failures),
            Err(error) => failures.push(format!("{}: unexpected error: {error}", case.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden case(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn parse_negative_cases_fail_with_location() {
    let cases = cases("parse-negative");
    assert!(cases.len() >= 15, "only {} negative cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        match render(case) {
            Ok(dump) => failures.push(format!(
                "{}: parsed but should fail:\n{dump}",
                case.display()
            )),
            Err(error) => {
                if !error.starts_with("Buildfile:") {
                    failures.push(format!(
                        "{}: error has no location: {error}",
                        case.display()
                    ));
                }
                check(case, &(error + "\n"), &mut failures);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} negative case(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_instruction_snapshot() {
    let text = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parse/all-instructions/Buildfile"),
    )
    .unwrap();
    let buildfile = strata_builder::stages::load(&text, "Buildfile").unwrap();
    let mut args = BTreeMap::new();
    args.insert("VERSION".to_string(), "9.9".to_string());
    insta::assert_snapshot!(strata_builder::stages::dump(&buildfile, &args).unwrap());
}
