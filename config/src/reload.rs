//! The wording both daemons and both admin tools share for a configuration reload.

/// The refusal of a reload that changes `keys`, which need a restart of `daemon`.
pub fn restart_needed(keys: &[String], daemon: &str) -> String {
    let verb = if keys.len() == 1 { "needs" } else { "need" };
    format!(
        "not reloaded, nothing changed: {} {verb} a restart of {daemon}",
        keys.join(", ")
    )
}

/// What an admin tool prints after `daemon` reloaded `config`: each change on a line
/// of its own, or that nothing changed for it.
pub fn report(config: &str, changes: &[String], daemon: &str) -> String {
    if changes.is_empty() {
        return format!("reloaded {config}: no change for {daemon}\n");
    }
    let lines: String = changes.iter().map(|c| format!("  {c}\n")).collect();
    format!("reloaded {config}:\n{lines}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_needs_several_need() {
        assert_eq!(
            restart_needed(&["a.b".into()], "blockd"),
            "not reloaded, nothing changed: a.b needs a restart of blockd"
        );
        assert_eq!(
            restart_needed(&["a".into(), "b".into()], "clusterd"),
            "not reloaded, nothing changed: a, b need a restart of clusterd"
        );
    }

    #[test]
    fn a_report_lists_each_change_or_says_none() {
        assert_eq!(
            report("/f", &[], "blockd"),
            "reloaded /f: no change for blockd\n"
        );
        assert_eq!(
            report("/f", &["x 1 -> 2".into()], "blockd"),
            "reloaded /f:\n  x 1 -> 2\n"
        );
    }
}
