//! The heartbeat packet: golden byte vectors, round trips, corruption, truncation and
//! arbitrary input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hablock_proto::heartbeat::{
    cluster_id, decode, encode, GroupView, Heartbeat, HeartbeatError, MoveTarget, NodeView,
    MAX_GROUPS, MAX_LEN, MAX_NAME, MIN_LEN,
};
use proptest::prelude::*;

const SECRET: &[u8] = b"lab-secret";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn golden() -> Vec<(Heartbeat, &'static str)> {
    vec![
        (
            Heartbeat {
                link: 0,
                cluster_id: 0x0102_0304_0506_0708,
                node: "m".into(),
                generation: 1,
                sequence: 2,
                view: NodeView::default(),
            },
            "48424842010000010807060504030201010000000000000002000000000000006d00f7baebd4d58ec182d4401844e0153e33fe47593d3e1e1676414b6070df231024",
        ),
        (
            Heartbeat {
                link: 1,
                cluster_id: cluster_id("web"),
                node: "master".into(),
                generation: 0x0000_018c_0000_beef,
                sequence: 42,
                view: NodeView {
                    standby: false,
                    sees_peer: true,
                    ping_ok: true,
                    groups: vec![
                        GroupView { name: "web".into(), held: true, failed: false, moved_to: None },
                        GroupView {
                            name: "db".into(),
                            held: false,
                            failed: false,
                            moved_to: Some(MoveTarget::Receiver),
                        },
                    ],
                },
            },
            "484248420106010645fbac3b88001409efbe00008c0100002a000000000000006d617374657202037765620102646204e1766608478de10467107b8000facb5ef03539cb4033818f2ab32fffaef5fdac",
        ),
        (
            Heartbeat {
                link: 2,
                cluster_id: 0,
                node: "slave".into(),
                generation: u64::MAX,
                sequence: u64::MAX,
                view: NodeView {
                    standby: true,
                    sees_peer: false,
                    ping_ok: false,
                    groups: vec![GroupView {
                        name: "web".into(),
                        held: false,
                        failed: true,
                        moved_to: Some(MoveTarget::Sender),
                    }],
                },
            },
            "48424842010102050000000000000000ffffffffffffffffffffffffffffffff736c61766501037765620a82d197b9be6db7c459999500aef0f423e0115b47bb19b1ec5558831434e73e24",
        ),
    ]
}

#[test]
fn golden_vectors() {
    for (hb, bytes) in golden() {
        let enc = encode(&hb, SECRET).unwrap();
        assert_eq!(to_hex(&enc), bytes, "encoding of {hb:?}");
        assert_eq!(decode(&hex(bytes), SECRET).unwrap(), hb);
    }
}

#[test]
fn cluster_id_is_stable() {
    // First 8 bytes of SHA-256("hablock-cluster-v1\0web"), little-endian.
    assert_eq!(cluster_id("web"), 0x0914_0088_3bac_fb45);
    assert_ne!(cluster_id("web"), cluster_id("db"));
}

#[test]
fn wrong_secret_is_bad_mac() {
    let (hb, _) = &golden()[1];
    let enc = encode(hb, SECRET).unwrap();
    assert_eq!(decode(&enc, b"other"), Err(HeartbeatError::BadMac));
    assert_eq!(decode(&enc, b""), Err(HeartbeatError::BadMac));
}

#[test]
fn header_errors_in_checking_order() {
    let (hb, _) = &golden()[1];
    let enc = encode(hb, SECRET).unwrap();
    assert_eq!(decode(&[], SECRET), Err(HeartbeatError::TooShort(0)));
    assert_eq!(
        decode(&enc[..MIN_LEN - 1], SECRET),
        Err(HeartbeatError::TooShort(MIN_LEN - 1))
    );
    assert_eq!(
        decode(&vec![0u8; MAX_LEN + 1], SECRET),
        Err(HeartbeatError::TooLong(MAX_LEN + 1))
    );
    let mut b = enc.clone();
    b[0] = b'X';
    assert_eq!(decode(&b, SECRET), Err(HeartbeatError::BadMagic));
    let mut b = enc.clone();
    b[4] = 2;
    assert_eq!(
        decode(&b, SECRET),
        Err(HeartbeatError::UnsupportedVersion(2))
    );
    let mut b = enc.clone();
    b[5] |= 0x80;
    assert_eq!(decode(&b, SECRET), Err(HeartbeatError::BadMac));
}

/// Builds a packet from a hand-written body with a valid MAC, to reach the field
/// checks behind the MAC.
fn signed(body: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(SECRET).unwrap();
    m.update(body);
    let mut out = body.to_vec();
    out.extend_from_slice(&m.finalize().into_bytes());
    out
}

fn head(flags: u8, name_len: u8) -> Vec<u8> {
    let mut b = b"HBHB".to_vec();
    b.extend_from_slice(&[1, flags, 0, name_len]);
    b.extend_from_slice(&[0u8; 24]);
    b
}

#[test]
fn authenticated_but_malformed_fields() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            [head(0x08, 1), b"m\0".to_vec()].concat(),
            "unknown flag bits",
        ),
        (
            [head(0, 0), b"m\0".to_vec()].concat(),
            "name length out of range",
        ),
        (
            [head(0, 65), vec![b'a'; 66]].concat(),
            "name length out of range",
        ),
        (
            [head(0, 2), vec![0xff, 0xfe, 0]].concat(),
            "name is not UTF-8",
        ),
        (
            [head(0, 1), b"m\x09".to_vec()].concat(),
            "more than 8 groups",
        ),
        ([head(0, 1), b"m\x01\x03web".to_vec()].concat(), "truncated"),
        (
            [head(0, 1), b"m\x01\x03web\x10".to_vec()].concat(),
            "unknown group flag bits",
        ),
        (
            [head(0, 1), b"m\x01\x03web\x06".to_vec()].concat(),
            "group moved to both nodes",
        ),
        (
            [head(0, 1), b"m\x00\x00".to_vec()].concat(),
            "trailing bytes",
        ),
        ([head(0, 3), b"m\x00".to_vec()].concat(), "truncated"),
    ];
    for (body, reason) in cases {
        assert_eq!(
            decode(&signed(&body), SECRET),
            Err(HeartbeatError::Malformed(reason)),
            "body {}",
            to_hex(&body)
        );
    }
}

#[test]
fn limits_are_refused_when_encoding() {
    let (hb, _) = &golden()[1];
    let mut h = hb.clone();
    h.node = String::new();
    assert!(matches!(
        encode(&h, SECRET),
        Err(HeartbeatError::Unencodable(_))
    ));
    h.node = "n".repeat(MAX_NAME + 1);
    assert!(matches!(
        encode(&h, SECRET),
        Err(HeartbeatError::Unencodable(_))
    ));
    let mut h = hb.clone();
    h.view.groups[0].name = "g".repeat(MAX_NAME + 1);
    assert!(matches!(
        encode(&h, SECRET),
        Err(HeartbeatError::Unencodable(_))
    ));
    let mut h = hb.clone();
    h.view.groups = vec![h.view.groups[0].clone(); MAX_GROUPS + 1];
    assert!(matches!(
        encode(&h, SECRET),
        Err(HeartbeatError::Unencodable(_))
    ));
}

#[test]
fn the_largest_packet_fits_max_len() {
    let hb = Heartbeat {
        link: 255,
        cluster_id: u64::MAX,
        node: "n".repeat(MAX_NAME),
        generation: 1,
        sequence: 1,
        view: NodeView {
            standby: true,
            sees_peer: true,
            ping_ok: true,
            groups: (0..MAX_GROUPS)
                .map(|i| GroupView {
                    name: format!("{i}").repeat(MAX_NAME),
                    held: true,
                    failed: true,
                    moved_to: Some(MoveTarget::Receiver),
                })
                .collect(),
        },
    };
    let enc = encode(&hb, SECRET).unwrap();
    assert_eq!(enc.len(), MAX_LEN);
    assert_eq!(decode(&enc, SECRET).unwrap(), hb);
}

fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{1,64}",
        // Multi-byte UTF-8, at most 64 bytes (4 bytes per char).
        "[αβγ日本]{1,16}",
    ]
}

fn arb_heartbeat() -> impl Strategy<Value = Heartbeat> {
    let group = (
        arb_name(),
        any::<(bool, bool)>(),
        prop_oneof![
            Just(None),
            Just(Some(MoveTarget::Sender)),
            Just(Some(MoveTarget::Receiver))
        ],
    )
        .prop_map(|(name, (held, failed), moved_to)| GroupView {
            name,
            held,
            failed,
            moved_to,
        });
    (
        any::<u8>(),
        any::<u64>(),
        arb_name(),
        any::<u64>(),
        any::<u64>(),
        any::<(bool, bool, bool)>(),
        proptest::collection::vec(group, 0..=MAX_GROUPS),
    )
        .prop_map(
            |(
                link,
                cluster_id,
                node,
                generation,
                sequence,
                (standby, sees_peer, ping_ok),
                groups,
            )| {
                Heartbeat {
                    link,
                    cluster_id,
                    node,
                    generation,
                    sequence,
                    view: NodeView {
                        standby,
                        sees_peer,
                        ping_ok,
                        groups,
                    },
                }
            },
        )
}

proptest! {
    #[test]
    fn round_trip(hb in arb_heartbeat(), secret in proptest::collection::vec(any::<u8>(), 0..80)) {
        let enc = encode(&hb, &secret).unwrap();
        prop_assert!((MIN_LEN..=MAX_LEN).contains(&enc.len()));
        prop_assert_eq!(decode(&enc, &secret).unwrap(), hb);
    }

    #[test]
    fn any_single_flipped_bit_is_rejected(hb in arb_heartbeat(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut enc = encode(&hb, SECRET).unwrap();
        let i = pos.index(enc.len());
        enc[i] ^= 1 << bit;
        prop_assert!(decode(&enc, SECRET).is_err());
    }

    #[test]
    fn every_truncation_is_rejected(hb in arb_heartbeat(), cut in any::<prop::sample::Index>()) {
        let enc = encode(&hb, SECRET).unwrap();
        let n = cut.index(enc.len());
        prop_assert!(decode(&enc[..n], SECRET).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..800)) {
        let _ = decode(&b, SECRET);
        // Also behind a valid magic and version, and behind a valid MAC.
        let mut c = b"HBHB\x01".to_vec();
        c.extend_from_slice(&b);
        let _ = decode(&c, SECRET);
        let _ = decode(&signed(&c), SECRET);
    }
}
