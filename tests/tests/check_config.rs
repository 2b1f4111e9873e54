//! `blockctl check` and `clusterctl check`, run as an operator runs them: the real
//! binaries on real files, before and while blockd runs. Each mistake an operator makes
//! (no metadata, a readable secret, the wrong node's address, another resource's
//! backing, a missing interface, program, filesystem or fsck helper) is named, with
//! exit 1; a good setup passes with exit 0 and changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hablock_tests::{bin, edit_file, Pair, PairOptions, NODES};
use std::os::unix::fs::PermissionsExt;
use std::process::Output;

const MASTER: &str = NODES[0];

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The report line of `subject` that mentions `says`, which must be there. A line is
/// `VERDICT  SUBJECT  DETAIL`, the verdict in 8 columns and the subjects padded alike.
fn line<'a>(report: &'a str, subject: &str, says: &str) -> &'a str {
    report
        .lines()
        .find(|l| {
            l.get(9..)
                .is_some_and(|rest| rest.starts_with(&format!("{subject}  ")))
                && l.contains(says)
        })
        .unwrap_or_else(|| panic!("no line for {subject:?} saying {says:?} in:\n{report}"))
}

fn assert_problem(report: &str, subject: &str, says: &str) {
    let l = line(report, subject, says);
    assert!(
        l.starts_with("PROBLEM "),
        "{subject} should be a problem:\n{report}"
    );
}

fn assert_ok(report: &str, subject: &str, says: &str) {
    let l = line(report, subject, says);
    assert!(l.starts_with("ok "), "{subject} should pass:\n{report}");
}

#[test]
fn blockctl_check_names_each_mistake_and_passes_a_good_setup_even_while_blockd_runs() {
    let mut p = Pair::new(PairOptions::default()).unwrap();

    // Fresh: no metadata yet.
    let o = p.blockctl(MASTER, &["check"]).unwrap();
    let report = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{report}");
    assert_problem(&report, "r0 metadata", "run `blockctl create-md r0`");
    assert_ok(&report, "r0 backing", "file, 64.0 MiB");
    assert_ok(&report, "address", "is on this host");
    assert_ok(&report, "secret", "mode 0600");
    assert!(report.ends_with("1 problem found\n"), "{report}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("1 of 5 checks failed"),
        "{o:?}"
    );

    // Metadata of another resource on r0's backing: a swapped path.
    let other = p.dir.path().join("other.toml");
    std::fs::copy(&p.config, &other).unwrap();
    edit_file(&other, "[resources.r0]", "[resources.r1]");
    let o = std::process::Command::new(bin("blockctl"))
        .arg("--config")
        .arg(&other)
        .args(["--node", MASTER, "create-md", "r1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let report = stdout(&p.blockctl(MASTER, &["check"]).unwrap());
    assert_problem(&report, "r0 metadata", "written for resource \"r1\"");

    // The right metadata: everything passes, and the check wrote nothing.
    p.blockctl_ok(MASTER, &["create-md", "--force", "r0"])
        .unwrap();
    let image = std::fs::read(p.backing(MASTER)).unwrap();
    let report = p.blockctl_ok(MASTER, &["check"]).unwrap();
    assert_ok(&report, "r0 metadata", "internal;");
    assert_ok(&report, "r0 metadata", "disk Inconsistent");
    assert!(report.ends_with("no problems found\n"), "{report}");
    assert!(
        std::fs::read(p.backing(MASTER)).unwrap() == image,
        "check changed the backing"
    );

    // While blockd serves the resource.
    p.start(MASTER).unwrap();
    let report = p.blockctl_ok(MASTER, &["check"]).unwrap();
    assert!(report.ends_with("no problems found\n"), "{report}");
    p.status(MASTER).unwrap();

    // A secret others can read, and the other node's address (the wrong --node's).
    let secret = p.dir.path().join("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = std::fs::read_to_string(&p.config).unwrap();
    let master_addr = text
        .lines()
        .find_map(|l| l.strip_prefix("address = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap()
        .to_string();
    edit_file(&p.config, &master_addr, "10.213.1.254");
    let o = p.blockctl(MASTER, &["check"]).unwrap();
    let report = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{report}");
    assert_problem(&report, "secret", "chmod 600");
    assert_problem(
        &report,
        "address",
        "10.213.1.254 is not an address of this host",
    );
    assert!(report.ends_with("2 problems found\n"), "{report}");

    // A file that does not load is bad configuration: exit 2, nothing checked.
    edit_file(
        &p.config,
        "protocol = \"C\"",
        "protocol = \"C\"\nno_such_key = 1",
    );
    let o = p.blockctl(MASTER, &["check"]).unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no_such_key"),
        "{o:?}"
    );
    assert!(o.stdout.is_empty(), "{o:?}");
}

#[test]
fn clusterctl_check_looks_at_what_each_group_needs_on_this_host() {
    let p = Pair::new(PairOptions::default()).unwrap();
    let srv = p.dir.path().join("srv");
    let group = format!(
        r#"
[groups.web]
preferred = "master"
resources = [
  {{ type = "block", resource = "r0" }},
  {{ type = "filesystem", device = "/dev/ublkb0", mountpoint = "{srv}", fstype = "ext4" }},
  {{ type = "vip", address = "10.213.0.50/24", interface = "lo" }},
  {{ type = "service", exec = "LANG=C /bin/sleep 1000", check = "http://10.213.0.50/" }},
]
"#,
        srv = srv.display()
    );
    let mut text = std::fs::read_to_string(&p.config).unwrap();
    text.push_str(&group);
    std::fs::write(&p.config, &text).unwrap();
    let clusterctl = |args: &[&str]| p.command("clusterctl", MASTER).args(args).output().unwrap();

    let o = clusterctl(&["check"]);
    let report = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{report}\n{o:?}");
    assert_ok(&report, "heartbeat link 1", "is on this host");
    assert_ok(&report, "web filesystem", "(created at the first mount)");
    assert_ok(&report, "web filesystem", "fsck.ext4 found");
    assert_ok(&report, "web vip", "10.213.0.50/24 on lo");
    assert_ok(&report, "web service", "/bin/sleep found");
    assert_ok(&report, "web check", "http://10.213.0.50/");

    // Each thing a group needs, missing.
    std::fs::write(&srv, "not a directory").unwrap();
    edit_file(&p.config, "fstype = \"ext4\"", "fstype = \"hablocknofs\"");
    edit_file(
        &p.config,
        "interface = \"lo\"",
        "interface = \"hablock-no0\"",
    );
    edit_file(&p.config, "/bin/sleep 1000", "/nonexistent/httpd -f");
    edit_file(
        &p.config,
        "auto_failback = true",
        "auto_failback = true\nfence = \"hablock-no-fence-agent {peer}\"",
    );
    let o = clusterctl(&["check"]);
    let report = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{report}");
    assert_problem(&report, "web filesystem", "is not a directory");
    assert_problem(&report, "web filesystem", "cannot mount hablocknofs");
    assert_problem(
        &report,
        "web filesystem",
        "fsck.hablocknofs is not installed",
    );
    assert_problem(&report, "web vip", "interface hablock-no0 does not exist");
    assert_problem(
        &report,
        "web service",
        "/nonexistent/httpd is not an executable",
    );
    assert_problem(
        &report,
        "fence",
        "hablock-no-fence-agent is not an executable",
    );
    assert!(report.ends_with("6 problems found\n"), "{report}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("6 of 10 checks failed"),
        "{o:?}"
    );
}
