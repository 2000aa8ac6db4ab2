//! proto/README.md is how third parties write clients: it must name everything the schema
//! has. This test reads both and fails on a frame, a field, an error code or a kick reason the
//! README does not document (or documents under another name).

use std::collections::BTreeMap;

const README: &str = include_str!("../README.md");
const SCHEMA: &str = include_str!("../proto/cim/v1/cim.proto");

/// The body of the block that starts with `header` (`message Login`, `enum ErrorCode`), without
/// its comments.
fn block<'a>(schema: &'a str, header: &str) -> Vec<&'a str> {
    let start = schema
        .find(&format!("{header} {{"))
        .unwrap_or_else(|| panic!("{header} is in the schema"));
    let mut depth = 0;
    let mut lines = Vec::new();
    for line in schema[start..].lines() {
        let code = line.split("//").next().unwrap_or("").trim();
        depth += code.matches('{').count();
        depth -= code.matches('}').count();
        if !code.is_empty() && !code.contains('{') && !code.contains('}') {
            lines.push(code);
        }
        if depth == 0 {
            break;
        }
    }
    lines
}

/// The field names of `message` (`string token = 1;` gives `token`).
fn fields(message: &str) -> Vec<String> {
    block(SCHEMA, &format!("message {message}"))
        .iter()
        .filter(|line| line.ends_with(';') && line.contains('='))
        .filter_map(|line| line.split('=').next()?.split_whitespace().last())
        .map(str::to_string)
        .collect()
}

/// The frames: the message type of each body of `Frame`.
fn frames() -> Vec<String> {
    block(SCHEMA, "oneof body")
        .iter()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The value names of `enum`, without its prefix (`ERROR_CODE_FORBIDDEN` gives `FORBIDDEN`).
fn enum_values(name: &str, prefix: &str) -> Vec<String> {
    block(SCHEMA, &format!("enum {name}"))
        .iter()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|value| value.strip_prefix(prefix))
        .filter(|value| *value != "UNSPECIFIED")
        .map(str::to_string)
        .collect()
}

/// The README's frame table: each frame's name and the fields written in its braces.
fn documented_frames() -> BTreeMap<String, Vec<String>> {
    README
        .lines()
        .filter(|line| line.starts_with("| `"))
        .filter_map(|line| {
            let cell = line.split('|').nth(1)?.trim().trim_matches('`');
            let (name, rest) = cell.split_once('{')?;
            let fields = rest
                .trim_end_matches('}')
                .split(',')
                .map(|field| field.trim().trim_end_matches('?').to_string())
                .filter(|field| !field.is_empty())
                .collect();
            Some((name.to_string(), fields))
        })
        .collect()
}

#[test]
fn every_frame_and_each_of_its_fields_is_in_the_frame_table() {
    let documented = documented_frames();
    let frames = frames();
    assert!(frames.len() >= 12, "the schema parses: {frames:?}");
    for frame in frames {
        let listed = documented
            .get(&frame)
            .unwrap_or_else(|| panic!("the frame table has no row for `{frame}{{...}}`"));
        let mut expected = fields(&frame);
        let mut listed = listed.clone();
        expected.sort();
        listed.sort();
        assert_eq!(
            listed, expected,
            "the frame table lists other fields for {frame} than the schema has"
        );
    }
}

#[test]
fn every_error_code_has_a_row_in_the_error_table() {
    let codes = enum_values("ErrorCode", "ERROR_CODE_");
    assert!(codes.len() >= 11, "the schema parses: {codes:?}");
    for code in codes {
        let row = format!("| `{code}` |");
        assert!(
            README.contains(&row),
            "the error table has no row for {code}"
        );
    }
}

#[test]
fn every_kick_reason_is_explained() {
    let reasons = enum_values("KickReason", "KICK_REASON_");
    assert!(reasons.len() >= 5, "the schema parses: {reasons:?}");
    let explained = README
        .split("**Kicked reasons**")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("the README explains the kick reasons");
    for reason in reasons {
        assert!(
            explained.contains(&format!("`{reason}`")),
            "the kick reasons paragraph does not explain {reason}"
        );
    }
}
