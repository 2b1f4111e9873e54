//! Bad input is refused with a clear message and the daemon keeps serving: wrong
//! secret, wrong resource, garbage and truncated frames on the replication port and on
//! the control socket, a config with an unknown key, a secret file readable by others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hablock_proto::peer::{self, Frame, Hello, Message};
use hablock_tests::{bin, qemu_io, Pair, PairOptions, NODES};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

const MASTER: &str = NODES[0];
const SLAVE: &str = NODES[1];

fn wait_log(p: &Pair, node: &str, needle: &str) {
    for _ in 0..100 {
        if std::fs::read_to_string(p.log(node))
            .unwrap_or_default()
            .contains(needle)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{node}'s log never said {needle:?}:\n{}", p.tail(node));
}

#[test]
fn wrong_secret_is_refused_and_the_primary_keeps_serving() {
    let mut p = Pair::new(PairOptions {
        size_bytes: 16 << 20,
        ..Default::default()
    })
    .unwrap();
    let secret = p.dir.path().join("secret");
    std::fs::write(p.dir.path().join("master.secret"), "one secret\n").unwrap();
    std::fs::write(p.dir.path().join("slave.secret"), "another secret\n").unwrap();
    for n in NODES {
        let f = p.dir.path().join(format!("{n}.secret"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let text = std::fs::read_to_string(&p.config).unwrap();
    let text = text.replace(
        &format!("{}", secret.display()),
        &format!("{}/{{node}}.secret", p.dir.path().display()),
    );
    std::fs::write(&p.config, text).unwrap();
    for n in NODES {
        p.blockctl_ok(n, &["create-md", "r0"]).unwrap();
        p.start(n).unwrap();
    }
    p.blockctl_ok(MASTER, &["primary", "--force", "r0"])
        .unwrap();
    wait_log(&p, SLAVE, "authentication failed");
    wait_log(&p, MASTER, "authentication failed");
    qemu_io(&p.nbd_uri(MASTER), &["write -P 7 0 64k", "read -P 7 0 64k"]).unwrap();
    assert_eq!(p.status(MASTER).unwrap()["connection"], "Connecting");
    assert_eq!(p.status(SLAVE).unwrap()["connection"], "Connecting");
}

#[test]
fn wrong_resource_name_is_refused() {
    let mut p = Pair::new(PairOptions {
        size_bytes: 16 << 20,
        ..Default::default()
    })
    .unwrap();
    // The slave serves a resource with another name on the same port.
    let other = p.dir.path().join("other.toml");
    let text = std::fs::read_to_string(&p.config)
        .unwrap()
        .replace("[resources.r0]", "[resources.r9]");
    std::fs::write(&other, text).unwrap();
    p.blockctl_ok(MASTER, &["create-md", "r0"]).unwrap();
    let out = Command::new(bin("blockctl"))
        .args(["--config"])
        .arg(&other)
        .args(["--node", SLAVE, "create-md", "r9"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.start(MASTER).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p.log(SLAVE))
        .unwrap();
    let mut slave = Command::new(bin("blockd"))
        .arg("--config")
        .arg(&other)
        .args(["--node", SLAVE, "--run-dir"])
        .arg(p.run_dir(SLAVE))
        .stderr(log)
        .spawn()
        .unwrap();
    wait_log(&p, SLAVE, "wrong resource");
    wait_log(&p, MASTER, "wrong resource");
    p.blockctl_ok(MASTER, &["primary", "--force", "r0"])
        .unwrap();
    qemu_io(&p.nbd_uri(MASTER), &["write -P 7 0 64k"]).unwrap();
    let _ = slave.kill();
    let _ = slave.wait();
}

#[test]
fn garbage_and_truncated_frames_on_the_replication_port_do_not_disturb_the_session() {
    let p = Pair::synced(PairOptions {
        size_bytes: 16 << 20,
        ..Default::default()
    })
    .unwrap();
    // The slave listens (it sorts after master).
    let addr = format!("{}:{}", p.slave_addr, p.port);
    let mut garbage = TcpStream::connect(&addr).unwrap();
    let noise: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let _ = garbage.write_all(&noise);
    let mut buf = [0u8; 64];
    garbage
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = garbage.read(&mut buf);
    wait_log(&p, SLAVE, "refused a connection");

    // A valid Hello cut in the middle, then silence: the handshake times out.
    let hello = Frame {
        id: 0,
        msg: Message::Hello(Hello {
            min_version: peer::MIN_PROTOCOL_VERSION,
            max_version: peer::PROTOCOL_VERSION,
            features: 0,
            resource: "r0".into(),
            node: "master".into(),
            nonce: [1; 32],
        }),
    };
    let mut bytes = Vec::new();
    peer::encode(&hello, &mut bytes);
    let mut cut = TcpStream::connect(&addr).unwrap();
    cut.write_all(&bytes[..bytes.len() / 2]).unwrap();
    drop(cut);
    // A Hello with a wrong checksum.
    let mut bad = bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let mut c = TcpStream::connect(&addr).unwrap();
    c.write_all(&bad).unwrap();
    drop(c);
    // An impostor with the right names but no secret.
    let mut imp = TcpStream::connect(&addr).unwrap();
    imp.write_all(&bytes).unwrap();
    let mut auth = Vec::new();
    peer::encode(
        &Frame {
            id: 0,
            msg: Message::Auth { mac: [0; 32] },
        },
        &mut auth,
    );
    imp.write_all(&auth).unwrap();
    wait_log(&p, SLAVE, "authentication failed");
    drop(imp);

    std::thread::sleep(Duration::from_millis(500));
    for n in NODES {
        assert_eq!(
            p.status(n).unwrap()["connection"],
            "Connected",
            "the real session survives"
        );
    }
    qemu_io(&p.nbd_uri(MASTER), &["write -P 3 0 64k", "read -P 3 0 64k"]).unwrap();
}

#[test]
fn garbage_on_the_control_socket_is_refused_and_the_daemon_keeps_answering() {
    let p = Pair::started(PairOptions {
        size_bytes: 16 << 20,
        ..Default::default()
    })
    .unwrap();
    let sock = p.run_dir(MASTER).join("blockd.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the control socket is root-only");
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\nthis is not a control frame at all")
        .unwrap();
    let mut reply = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.contains("malformed request"),
        "expected a refusal, got {text:?}"
    );
    // A truncated frame, then hang up.
    let frame = hablock_proto::control::encode_request(&hablock_proto::control::Request::Status {
        resource: None,
    });
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(&frame[..frame.len() - 3]).unwrap();
    drop(s);
    // An unknown command from a "newer" client gets an answer, the connection stays.
    let body = br#"{"cmd":"teleport","resource":"r0"}"#;
    let mut framed = frame[..4].to_vec();
    framed.extend_from_slice(&1u16.to_le_bytes());
    framed.extend_from_slice(&0u16.to_le_bytes());
    framed.extend_from_slice(&(body.len() as u32).to_le_bytes());
    framed.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    framed.extend_from_slice(body);
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(&framed).unwrap();
    s.write_all(&frame).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = vec![0u8; 65536];
    let mut n = 0;
    while n < got.len() {
        match s.read(&mut got[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
        let t = String::from_utf8_lossy(&got[..n]);
        if t.contains("unknown command") && t.contains("resources") {
            break;
        }
    }
    let t = String::from_utf8_lossy(&got[..n]);
    assert!(
        t.contains("unknown command") && t.contains("\"resources\""),
        "{t}"
    );
    assert_eq!(p.status(MASTER).unwrap()["connection"], "Connected");
    // Unknown resource and bad usage exit codes.
    assert_eq!(
        p.blockctl(MASTER, &["primary", "nope"])
            .unwrap()
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        p.blockctl(MASTER, &["frobnicate"]).unwrap().status.code(),
        Some(2)
    );
}

#[test]
fn config_with_an_unknown_key_is_refused_naming_key_and_line() {
    let p = Pair::new(PairOptions {
        extra: "resync_rat = \"10MiB\"".into(),
        ..Default::default()
    })
    .unwrap();
    let out = p.command("blockd", MASTER).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let line = std::fs::read_to_string(&p.config)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("resync_rat "))
        .unwrap()
        + 1;
    assert!(err.contains("resync_rat"), "{err}");
    assert!(
        err.contains(&line.to_string()),
        "the error names line {line}: {err}"
    );
    let out = p.blockctl(MASTER, &["create-md", "r0"]).unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn secret_file_readable_by_others_is_refused() {
    let p = Pair::new(PairOptions::default()).unwrap();
    p.blockctl_ok(MASTER, &["create-md", "r0"]).unwrap();
    let secret = p.dir.path().join("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = p.command("blockd", MASTER).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("0644") && err.contains("0600"), "{err}");
}

#[test]
fn create_md_refuses_a_filesystem_and_existing_metadata() {
    hablock_tests::require_tool("mkfs.ext4");
    let p = Pair::new(PairOptions::default()).unwrap();
    let img = p.backing(MASTER);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = p.blockctl(MASTER, &["create-md", "r0"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ext4"), "{err}");
    p.blockctl_ok(MASTER, &["create-md", "--force", "r0"])
        .unwrap();
    // Existing metadata on a clean device.
    p.blockctl_ok(SLAVE, &["create-md", "r0"]).unwrap();
    let out = p.blockctl(SLAVE, &["create-md", "r0"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("metadata"), "{err}");
    p.blockctl_ok(SLAVE, &["create-md", "--force", "r0"])
        .unwrap();
}
