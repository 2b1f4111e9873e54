//! The example config loads as written; every class of error names its line and key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hablock_config::{
    AfterSb0Pri, AfterSb1Pri, Config, ConfigError, GroupResource, MetadataLocation,
};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

fn example_text() -> String {
    let shared =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/examples/hablock.toml");
    let copy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/hablock.toml");
    let copy_text = std::fs::read_to_string(&copy).unwrap();
    if let Ok(text) = std::fs::read_to_string(&shared) {
        assert_eq!(
            text, copy_text,
            "tests/data/hablock.toml must be a copy of shared/examples/hablock.toml"
        );
    }
    copy_text
}

#[test]
fn the_example_is_accepted_as_written() {
    let cfg = Config::parse_str(&example_text(), "hablock.toml", "master").unwrap();
    assert_eq!(cfg.nodes.len(), 2);
    let r = &cfg.resources["r0"];
    assert_eq!(r.port, 7789);
    assert_eq!(r.metadata, MetadataLocation::Internal);
    assert_eq!(r.resync_rate, 100 << 20);
    assert_eq!(r.after_sb_0pri, AfterSb0Pri::DiscardZeroChanges);
    assert_eq!(r.after_sb_1pri, AfterSb1Pri::DiscardSecondary);
    assert_eq!(r.ublk_id, Some(0));
    assert_eq!(cfg.heartbeat.keepalive.as_millis(), 500);
    let g = &cfg.groups["web"];
    assert_eq!(g.resources.len(), 4);
    assert!(
        matches!(&g.resources[2], GroupResource::Vip { address, .. } if address.prefix_len == 24)
    );
    assert_eq!(cfg.peer_of("master").unwrap().0, "slave");
}

#[test]
fn node_placeholder_is_expanded() {
    let text = example_text().replace(
        "backing = \"/dev/vdb\"",
        "backing = \"/var/tmp/lab/{node}.img\"",
    );
    let cfg = Config::parse_str(&text, "hablock.toml", "slave").unwrap();
    assert_eq!(
        cfg.resources["r0"].backing,
        PathBuf::from("/var/tmp/lab/slave.img")
    );
}

fn error_of(text: &str) -> (usize, String, String) {
    match Config::parse_str(text, "hablock.toml", "master") {
        Err(ConfigError::Invalid {
            line, key, message, ..
        }) => (line, key, message),
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

fn line_containing(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn unknown_key_names_line_and_key() {
    let text = example_text().replace("address = \"10.213.1.2\"", "adress = \"10.213.1.2\"");
    let (line, key, msg) = error_of(&text);
    assert_eq!(line, line_containing(&text, "adress ="));
    assert!(key.contains("nodes.master"), "{key}");
    assert!(msg.contains("adress") && msg.contains("address"), "{msg}");
    let full = Config::parse_str(&text, "hablock.toml", "master")
        .unwrap_err()
        .to_string();
    assert!(
        full.starts_with(&format!("hablock.toml:{line}: ")),
        "{full}"
    );
}

#[test]
fn bad_enum_value_lists_the_choices() {
    let text = example_text().replace(
        "after_sb_0pri = \"discard-zero-changes\"",
        "after_sb_0pri = \"merge\"",
    );
    let (line, key, msg) = error_of(&text);
    assert_eq!(line, line_containing(&text, "after_sb_0pri"));
    assert_eq!(key, "resources.r0.after_sb_0pri");
    assert!(msg.contains("discard-least-changes"), "{msg}");
}

#[test]
fn bad_duration_size_type_and_missing_key() {
    let text = example_text().replace("keepalive = \"500ms\"", "keepalive = \"soon\"");
    let (line, key, msg) = error_of(&text);
    assert_eq!(
        (line, key.as_str()),
        (line_containing(&text, "keepalive"), "heartbeat.keepalive")
    );
    assert!(msg.contains("duration"), "{msg}");
    let text = example_text().replace("resync_rate = \"100MiB\"", "resync_rate = \"fast\"");
    let (line, _, msg) = error_of(&text);
    assert_eq!(line, line_containing(&text, "resync_rate"));
    assert!(msg.contains("size"), "{msg}");
    let text = example_text().replace("port = 7789", "port = \"seven\"");
    let (line, key, _) = error_of(&text);
    assert_eq!(
        (line, key.as_str()),
        (
            line_containing(&text, "port = \"seven\""),
            "resources.r0.port"
        )
    );
    let text = example_text().replace("protocol = \"C\"", "protocol = \"A\"");
    assert_eq!(error_of(&text).1, "resources.r0.protocol");
    let text = example_text().replace("backing = \"/dev/vdb\"\n", "");
    let (_, _, msg) = error_of(&text);
    assert!(msg.contains("backing"), "{msg}");
}

#[test]
fn validation_errors_name_the_key() {
    let text = example_text().replace("deadtime = \"3s\"", "deadtime = \"100ms\"");
    let (line, key, msg) = error_of(&text);
    assert_eq!(
        (line, key.as_str()),
        (line_containing(&text, "deadtime"), "heartbeat.deadtime")
    );
    assert!(msg.contains("keepalive"), "{msg}");
    let text = example_text().replace("preferred = \"master\"", "preferred = \"third\"");
    assert_eq!(error_of(&text).1, "groups.web.preferred");
    let text = example_text().replace(
        "{ type = \"block\", resource = \"r0\" }",
        "{ type = \"block\", resource = \"r7\" }",
    );
    assert!(error_of(&text).2.contains("r7"));
    match Config::parse_str(&example_text(), "hablock.toml", "third") {
        Err(e @ ConfigError::UnknownNode { .. }) => {
            assert!(e.to_string().contains("master, slave"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn secret_file_modes() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let text = example_text().replace("/etc/hablock/secret", secret.to_str().unwrap());
    let cfg = Config::parse_str(&text, "hablock.toml", "master").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(cfg.read_secret().unwrap(), b"s3cret");
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = cfg.read_secret().unwrap_err().to_string();
        assert!(
            e.contains(&format!("{mode:04o}")) && e.contains("0600"),
            "{e}"
        );
    }
    std::fs::write(&secret, "\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(cfg.read_secret().unwrap_err().to_string().contains("empty"));
}

#[test]
fn heartbeat_ping_and_fence() {
    let cfg = Config::parse_str(&example_text(), "hablock.toml", "master").unwrap();
    assert!(cfg.heartbeat.ping.is_empty());
    assert_eq!(cfg.heartbeat.fence, None);
    let text = example_text().replace(
        "auto_failback = true",
        "auto_failback = true\nping = [\"10.213.0.1\"]\nfence = \"/usr/local/bin/fence {node} {peer}\"",
    );
    let cfg = Config::parse_str(&text, "hablock.toml", "slave").unwrap();
    assert_eq!(
        cfg.heartbeat.ping,
        vec!["10.213.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        cfg.heartbeat.fence.as_deref(),
        Some("/usr/local/bin/fence slave {peer}")
    );
    let text = example_text().replace(
        "auto_failback = true",
        "auto_failback = true\nping = [\"nope\"]",
    );
    assert_eq!(error_of(&text).1, "heartbeat.ping[0]");
    let text = example_text().replace(
        "auto_failback = true",
        "auto_failback = true\nfence = \" \"",
    );
    assert_eq!(error_of(&text).1, "heartbeat.fence");
}

#[test]
fn heartbeat_packet_limits_on_names_and_groups() {
    let long = "g".repeat(65);
    let text = example_text().replace("[groups.web]", &format!("[groups.{long}]"));
    let (_, key, msg) = error_of(&text);
    assert_eq!(key, format!("groups.{long}"));
    assert!(msg.contains("64"), "{msg}");
    let mut text = example_text();
    for i in 0..8 {
        text.push_str(&format!(
            "\n[groups.extra{i}]\nresources = [{{ type = \"block\", resource = \"r0\" }}]\n"
        ));
    }
    let (_, key, msg) = error_of(&text);
    assert_eq!(key, "groups");
    assert!(msg.contains("at most 8"), "{msg}");
}

#[test]
fn changed_keys_names_each_resource_key_that_differs() {
    let text = example_text();
    let old = Config::parse_str(&text, "hablock.toml", "master").unwrap();
    assert!(old.resources["r0"]
        .changed_keys(&old.resources["r0"])
        .is_empty());
    let edited = text
        .replace("resync_rate = \"100MiB\"", "resync_rate = \"16MiB\"")
        .replace("port = 7789", "port = 7790")
        .replace(
            "after_sb_1pri = \"discard-secondary\"",
            "after_sb_1pri = \"disconnect\"",
        );
    let new = Config::parse_str(&edited, "hablock.toml", "master").unwrap();
    assert_eq!(
        old.resources["r0"].changed_keys(&new.resources["r0"]),
        ["port", "resync_rate", "after_sb_1pri"]
    );
}
