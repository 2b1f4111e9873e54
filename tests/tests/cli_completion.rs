//! The admin tools' shell completions, as bash runs them: the script each tool prints
//! (and the Debian package installs) completes subcommands and their options.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hablock_tests::{bin, run_ok};
use std::process::Command;

/// What bash's completion function of `tool` offers for the command line `words`
/// (the last word being completed).
fn complete(tool: &str, words: &[&str]) -> Vec<String> {
    let script = run_ok(Command::new(bin(tool)).args(["completions", "bash"])).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(tool);
    std::fs::write(&file, script).unwrap();
    let line: Vec<String> = std::iter::once(tool.to_string())
        .chain(words.iter().map(|w| w.to_string()))
        .collect();
    let quoted: Vec<String> = line.iter().map(|w| format!("'{w}'")).collect();
    let prev = &line[line.len() - 2];
    let cur = &line[line.len() - 1];
    let program = format!(
        "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{}'; COMP_POINT=${{#COMP_LINE}}; _{tool} '{tool}' '{cur}' '{prev}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        file.display(),
        quoted.join(" "),
        line.len() - 1,
        line.join(" "),
    );
    let out = run_ok(Command::new("bash").args(["-c", &program])).unwrap();
    out.lines().map(str::to_string).collect()
}

#[test]
fn blockctl_completes_its_subcommands_and_their_options() {
    assert_eq!(complete("blockctl", &["st"]), ["status"]);
    let all = complete("blockctl", &[""]);
    for c in [
        "create-md",
        "primary",
        "reload",
        "check",
        "metrics",
        "events",
        "completions",
    ] {
        assert!(all.iter().any(|w| w == c), "{c} missing from {all:?}");
    }
    let opts = complete("blockctl", &["create-md", "--"]);
    assert!(opts.iter().any(|w| w == "--force"), "{opts:?}");
    let shells = complete("blockctl", &["completions", ""]);
    assert!(shells.iter().any(|w| w == "zsh"), "{shells:?}");
}

#[test]
fn clusterctl_completes_its_subcommands_and_their_options() {
    assert_eq!(complete("clusterctl", &["sta"]), ["status", "standby"]);
    let opts = complete("clusterctl", &["status", "--"]);
    assert!(opts.iter().any(|w| w == "--json"), "{opts:?}");
}
