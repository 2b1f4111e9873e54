//! What `blockctl check` and `clusterctl check` share: a finding, the report both print,
//! and the checks of what the file asks of this host that both daemons depend on (the
//! secret file, the node's own addresses, programs the daemons run).
//! The report format: `VERDICT  SUBJECT  DETAIL`, the verdict `ok` or `PROBLEM` padded to
//! 8 columns and the subjects padded alike, then `N problems found`.
//!
//! A check only looks: it opens files for reading, binds a UDP socket to port 0 to see
//! whether an address is this host's (nothing is sent), and never talks to a daemon or
//! the peer.

use crate::cli::CommonOptions;
use crate::Config;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// One thing checked: what (`subject`), whether it is fine, and the detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked (`secret`, `r0 backing`, `web vip`).
    pub subject: String,
    /// False when the daemon would fail or misbehave because of it.
    pub ok: bool,
    /// What was found, or what is wrong and how to mend it.
    pub detail: String,
}

impl Finding {
    /// A check that passed.
    pub fn ok(subject: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding {
            subject: subject.into(),
            ok: true,
            detail: detail.into(),
        }
    }

    /// A check that failed.
    pub fn problem(subject: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding {
            subject: subject.into(),
            ok: false,
            detail: detail.into(),
        }
    }
}

/// Runs a tool's `check` command: loads the file for this node and runs `checks` on it.
/// Returns the report to print and, when a check failed, the one-line summary the tool
/// exits 1 with; `Err` (a bad configuration or node name, exit 2) when the file does
/// not load.
pub fn run(
    common: &CommonOptions,
    checks: impl FnOnce(&Config, &Path, &str) -> Vec<Finding>,
) -> Result<(String, Option<String>), String> {
    let node = common.node().map_err(|e| format!("{e:#}"))?;
    let cfg = Config::load(&common.config, &node).map_err(|e| e.to_string())?;
    let findings = checks(&cfg, &common.config, &node);
    let failed = findings.iter().filter(|f| !f.ok).count();
    let summary = (failed > 0).then(|| format!("{failed} of {} checks failed", findings.len()));
    Ok((report(&findings), summary))
}

/// The report: one aligned line per finding (`ok` or `PROBLEM`), then a summary line.
pub fn report(findings: &[Finding]) -> String {
    let width = findings.iter().map(|f| f.subject.len()).max().unwrap_or(0);
    let mut text = String::new();
    for f in findings {
        let verdict = if f.ok { "ok" } else { "PROBLEM" };
        text.push_str(&format!(
            "{verdict:<8} {:<width$}  {}\n",
            f.subject, f.detail
        ));
    }
    let problems = findings.iter().filter(|f| !f.ok).count();
    text.push_str(&match problems {
        0 => "no problems found\n".to_string(),
        1 => "1 problem found\n".to_string(),
        n => format!("{n} problems found\n"),
    });
    text
}

/// The file itself: it loaded, for this node, with this peer.
pub fn config_loaded(cfg: &Config, path: &Path, node: &str) -> Finding {
    match cfg.peer_of(node) {
        Some((peer, _)) => Finding::ok(
            "config",
            format!("{}: valid; this node {node}, peer {peer}", path.display()),
        ),
        None => Finding::problem(
            "config",
            format!("{}: no peer for node {node} in [nodes]", path.display()),
        ),
    }
}

/// The shared secret: present, not empty, mode 0600.
pub fn secret(cfg: &Config) -> Finding {
    let path = cfg.cluster.secret_file.display();
    match cfg.read_secret() {
        Ok(s) => Finding::ok("secret", format!("{path}: {} bytes, mode 0600", s.len())),
        Err(e) => Finding::problem("secret", e.to_string()),
    }
}

/// Whether this host can bind `addr` (the daemon's `what` does): a UDP socket bound to
/// port 0 and closed at once, so nothing is sent and no port is held.
pub fn address(subject: &str, addr: IpAddr, what: &str) -> Finding {
    match std::net::UdpSocket::bind((addr, 0)) {
        Ok(_) => Finding::ok(subject, format!("{addr} is on this host ({what})")),
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EADDRNOTAVAIL as i32) => Finding::problem(
            subject,
            format!("{addr} is not an address of this host: {what} cannot bind it (wrong --node, or the interface is not configured yet)"),
        ),
        Err(e) => Finding::problem(subject, format!("{addr}: cannot bind it ({e})")),
    }
}

/// Where `program` is found: an absolute or relative path as given, otherwise the first
/// executable of that name in `$PATH`.
pub fn find_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

/// Whether `modprobe` would load kernel module `name` (a dry run: nothing is loaded).
pub fn module_loadable(name: &str) -> bool {
    std::process::Command::new("modprobe")
        .args(["--dry-run", "--quiet", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The program a shell command line starts: its first word that is not a `NAME=value`
/// assignment. `None` for an empty line.
pub fn program_of(cmdline: &str) -> Option<&str> {
    cmdline.split_whitespace().find(|w| {
        !w.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    })
}

/// Whether the program of `cmdline` (a command the daemon runs through `sh -c`) exists.
/// Shell builtins and syntax (`exec`, `if`, `(`) are not looked up: they are accepted.
pub fn command(subject: &str, cmdline: &str) -> Finding {
    const SHELL_WORDS: [&str; 10] = [
        "exec", "if", "for", "while", "case", "(", "{", "!", "test", "[",
    ];
    let Some(program) = program_of(cmdline) else {
        return Finding::problem(subject, "the command is empty");
    };
    if SHELL_WORDS.contains(&program) {
        return Finding::ok(subject, format!("`{cmdline}` (run by sh)"));
    }
    match find_program(program) {
        Some(p) => Finding::ok(subject, format!("`{cmdline}`: {} found", p.display())),
        None => Finding::problem(
            subject,
            format!("`{cmdline}`: {program} is not an executable file here (nor in PATH)"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_aligns_subjects_and_counts_problems() {
        let text = report(&[
            Finding::ok("secret", "fine"),
            Finding::problem("r0 backing", "missing"),
        ]);
        assert_eq!(
            text,
            "ok       secret      fine\nPROBLEM  r0 backing  missing\n1 problem found\n"
        );
        assert_eq!(
            report(&[Finding::ok("a", "b")]),
            "ok       a  b\nno problems found\n"
        );
    }

    #[test]
    fn the_program_of_a_command_line_skips_assignments() {
        assert_eq!(program_of("httpd -f -p 80"), Some("httpd"));
        assert_eq!(
            program_of("  LANG=C TZ=UTC /usr/bin/env x"),
            Some("/usr/bin/env")
        );
        assert_eq!(program_of("a=b=c"), None);
        assert_eq!(program_of("--opt=1"), Some("--opt=1"));
        assert_eq!(program_of("   "), None);
    }

    #[test]
    fn programs_are_found_in_path_or_as_given() {
        assert!(find_program("sh").is_some());
        assert_eq!(find_program("/bin/sh"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(find_program("/nonexistent/hablock-nothing"), None);
        assert_eq!(find_program("hablock-no-such-program"), None);
        assert!(command("x", "sh -c true").ok);
        assert!(command("x", "exec foo").ok);
        assert!(!command("x", "hablock-no-such-program --flag").ok);
        assert!(!command("x", "").ok);
    }

    #[test]
    fn loopback_is_local_and_a_lab_address_nobody_has_is_not() {
        assert!(address("a", IpAddr::from([127, 0, 0, 1]), "blockd").ok);
        assert!(address("a", IpAddr::from([127, 9, 8, 7]), "blockd").ok);
        let f = address("a", IpAddr::from([10, 213, 1, 254]), "blockd");
        assert!(!f.ok);
        assert!(f.detail.contains("not an address of this host"), "{f:?}");
    }
}
