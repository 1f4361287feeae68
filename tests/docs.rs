//! The crate's docs and the README tell the same story: the sections both carry are the same
//! text, so docs.rs and the repository cannot drift apart.

/// The section `## {title}` of a markdown text, up to the next line starting with `## ` or a
/// line in `stop_at`, without trailing blank lines.
fn section<'a>(markdown: &'a [String], title: &str, stop_at: &str) -> Vec<&'a str> {
    let heading = format!("## {title}");
    let start = markdown
        .iter()
        .position(|line| *line == heading)
        .unwrap_or_else(|| panic!("no section {heading:?}"));
    let mut lines: Vec<&str> = markdown[start..]
        .iter()
        .enumerate()
        .take_while(|(i, line)| *i == 0 || !(line.starts_with("## ") || line.starts_with(stop_at)))
        .map(|(_, line)| line.as_str())
        .collect();
    while lines.last().is_some_and(|line| line.is_empty()) {
        lines.pop();
    }
    lines
}

#[test]
fn the_crate_docs_show_what_a_request_gets_as_the_readme_does() {
    let readme: Vec<String> = include_str!("../README.md")
        .lines()
        .map(str::to_owned)
        .collect();
    // The crate's `//!` lines, as rustdoc reads them.
    let crate_docs: Vec<String> = include_str!("../src/lib.rs")
        .lines()
        .filter_map(|line| line.strip_prefix("//!"))
        .map(|line| line.strip_prefix(' ').unwrap_or(line).to_owned())
        // The crate docs link the type; the README cannot.
        .map(|line| line.replace("[`Authentication`]", "`Authentication`"))
        .collect();
    let title = "What a request gets";
    let stop = "Only the `auth` cookie";
    let in_readme = section(&readme, title, stop);
    let in_docs = section(&crate_docs, title, stop);
    assert!(
        in_readme.iter().any(|line| line.contains("token_revoked")),
        "the README shows id6's reasons"
    );
    assert_eq!(in_docs, in_readme);
}

/// The first ```rust block of the README's section `## {title}`.
fn readme_block(title: &str) -> &'static str {
    let readme = include_str!("../README.md");
    let section = readme
        .split(&format!("\n## {title}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("no section {title:?}"));
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .split("```rust\n")
        .nth(1)
        .and_then(|block| block.split("\n```").next())
        .unwrap_or_else(|| panic!("no rust block in {title:?}"))
}

/// The README's app test is `tests/testing_your_app.rs` (its module doc aside), so the code a
/// reader copies is compiled and run here.
#[test]
fn the_readme_tests_an_app_with_the_code_this_suite_runs() {
    let file = include_str!("testing_your_app.rs");
    let code: Vec<&str> = file
        .lines()
        .skip_while(|line| line.starts_with("//!"))
        .skip_while(|line| line.is_empty())
        .collect();
    assert_eq!(readme_block("Testing your app"), code.join("\n").trim_end());
}
