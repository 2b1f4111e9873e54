//! Golden byte vectors, unknown commands and corruption of clusterd's control bodies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hablock_proto::control::{self, ClusterRequest, ClusterResponse, ControlError};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn frame_with_body(body: &[u8]) -> Vec<u8> {
    let mut out = b"HBC1".to_vec();
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

#[test]
fn cluster_golden_vectors() {
    let cases = [
        (
            ClusterRequest::Move {
                group: "web".into(),
                node: "slave".into(),
            },
            "48424331010000002b00000065129c5d7b22636d64223a226d6f7665222c2267726f7570223a22776562222c226e6f6465223a22736c617665227d",
        ),
        (
            ClusterRequest::Standby { node: None },
            "48424331010000001d000000c73adb727b22636d64223a227374616e646279222c226e6f6465223a6e756c6c7d",
        ),
    ];
    for (req, h) in cases {
        let bytes = hex(h);
        assert_eq!(control::encode_cluster_request(&req), bytes);
        assert_eq!(
            control::decode_cluster_request(&bytes).unwrap().unwrap(),
            (req, bytes.len())
        );
    }
    let resp = ClusterResponse::Ok {
        warnings: vec!["forwarded".into()],
    };
    let bytes = hex("4842433101000000270000004a2ea0317b227265706c79223a226f6b222c227761726e696e6773223a5b22666f72776172646564225d7d");
    assert_eq!(control::encode_cluster_response(&resp), bytes);
    assert_eq!(
        control::decode_cluster_response(&bytes).unwrap().unwrap(),
        (resp, bytes.len())
    );
}

#[test]
fn cluster_unknown_fields_commands_and_garbage() {
    let f = frame_with_body(br#"{"cmd":"online","future":1}"#);
    assert_eq!(
        control::decode_cluster_request(&f).unwrap().unwrap().0,
        ClusterRequest::Online { node: None }
    );
    let f = frame_with_body(br#"{"cmd":"teleport"}"#);
    assert_eq!(
        control::decode_cluster_request(&f),
        Err(ControlError::UnknownCommand("teleport".into()))
    );
    let f = frame_with_body(br#"{"cmd":"move","group":"web"}"#);
    assert!(matches!(
        control::decode_cluster_request(&f),
        Err(ControlError::InvalidBody(_))
    ));
    assert_eq!(
        control::decode_cluster_request(b"\x00\x01garbage"),
        Err(ControlError::BadMagic)
    );
    let f = control::encode_cluster_request(&ClusterRequest::Status);
    for n in 0..f.len() {
        assert_eq!(control::decode_cluster_request(&f[..n]).unwrap(), None);
    }
    let mut bad = f.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(
        control::decode_cluster_request(&bad),
        Err(ControlError::BadChecksum)
    );
}

#[test]
fn cluster_reload_bodies() {
    let req = frame_with_body(br#"{"cmd":"reload"}"#);
    assert_eq!(
        control::encode_cluster_request(&ClusterRequest::Reload),
        req
    );
    assert_eq!(
        control::decode_cluster_request(&req).unwrap().unwrap(),
        (ClusterRequest::Reload, req.len())
    );
    let resp = ClusterResponse::Reloaded {
        config: "/etc/hablock/hablock.toml".into(),
        changes: vec!["heartbeat.deadtime 3s -> 5s".into()],
    };
    let bytes = frame_with_body(
        br#"{"reply":"reloaded","config":"/etc/hablock/hablock.toml","changes":["heartbeat.deadtime 3s -> 5s"]}"#,
    );
    assert_eq!(control::encode_cluster_response(&resp), bytes);
    assert_eq!(
        control::decode_cluster_response(&bytes).unwrap().unwrap(),
        (resp, bytes.len())
    );
}
