//! Golden byte vectors, round trips, corruption and truncation of both codecs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use hablock_proto::control::{self, ControlError, Request, Response};
use hablock_proto::peer::{
    auth_mac, block_layout, decode, decode_from, decode_parts, encode, encode_parts, kind_of,
    negotiate, verify_auth_mac, Decoded, Frame, FrameError, Hello, Message, NodeState, HEADER_LEN,
    MAX_BLOCK_HEAD_LEN, MAX_PAYLOAD,
};
use hablock_proto::types::{DiskState, Role, Uuids};
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn enc(f: &Frame) -> Vec<u8> {
    let mut o = Vec::new();
    encode(f, &mut o);
    o
}

fn golden() -> Vec<(Frame, &'static str)> {
    vec![
        (
            Frame {
                id: 0,
                msg: Message::Hello(Hello {
                    min_version: 2,
                    max_version: 2,
                    features: 3,
                    resource: "r0".into(),
                    node: "master".into(),
                    nonce: [0x11; 32],
                }),
            },
            "48424c5002010000000000000000000036000000b9a3389e92ae82140a4eab15020203000000000000000200723006006d61737465721111111111111111111111111111111111111111111111111111111111111111",
        ),
        (
            Frame { id: 0, msg: Message::Auth { mac: [0xab; 32] } },
            "48424c50020200000000000000000000200000009f84d3d0450f50ef07c1e9baabababababababababababababababababababababababababababababababab",
        ),
        (
            Frame {
                id: 0,
                msg: Message::State(NodeState {
                    role: Role::Primary,
                    disk: DiskState::UpToDate,
                    usable_bytes: 1 << 30,
                    uuids: Uuids { current: 0x1111, bitmap: 0x2222, history: [0x3333, 0] },
                    flags: 1,
                    primary_since_ms: 1_700_000_000_000,
                    dirty_bits: 5,
                }),
            },
            "48424c500204000000000000000000003e000000f718d54d55cea8ace428497a010300000040000000001111000000000000222200000000000033330000000000000000000000000000010000000068e5cf8b0100000500000000000000",
        ),
        (
            Frame { id: 7, msg: Message::Data { offset: 4096, fua: true, payload: Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef]) } },
            "48424c500210000007000000000000000d00000066e8a0ddfaf4345c8822b758001000000000000001deadbeef",
        ),
        (
            Frame { id: 3, msg: Message::RsData { offset: 65536, payload: Bytes::from_static(&[1, 2, 3, 4, 5, 6, 7, 8]) } },
            "48424c500230000003000000000000001000000091463c2e704c8c4f7f03d85600000100000000000102030405060708",
        ),
        (
            Frame { id: 21, msg: Message::ReadReq { offset: 8192, len: 4096 } },
            "48424c500216000015000000000000000c000000ce742ce33e9af742cc4a0d73002000000000000000100000",
        ),
        (
            Frame { id: 21, msg: Message::ReadReply { offset: 8192, payload: Bytes::from_static(&[9, 8, 7, 6]) } },
            "48424c500217000015000000000000000c0000002a28d415550c7649df8936d0002000000000000009080706",
        ),
        (
            Frame { id: 22, msg: Message::ReadError { errno: 5 } },
            "48424c500218000016000000000000000400000039b9d2792f8bd4c381c240bc05000000",
        ),
        (
            Frame { id: 7, msg: Message::DataAck },
            "48424c500211000007000000000000000000000099e9d85137db46efff32457d",
        ),
        (
            Frame { id: 9, msg: Message::Trim { offset: 8192, len: 65536, zeroes: true } },
            "48424c5002130000090000000000000011000000ae4e23d4f8399cccae3d00e70020000000000000000001000000000001",
        ),
        (
            Frame { id: 0, msg: Message::BitmapChunk { first_word: 2, words: vec![1, u64::MAX], last: true } },
            "48424c500205000000000000000000001d000000c4a3cac1779d4b033540a775020000000000000001020000000100000000000000ffffffffffffffff",
        ),
        (
            Frame { id: 12, msg: Message::VerifyReply { offset: 0, checksums: vec![0xdeadbeef, 1] } },
            "48424c50024100000c000000000000001400000020607e221360530d36cf216e000000000000000002000000efbeadde01000000",
        ),
    ]
}

#[test]
fn peer_golden_vectors() {
    for (frame, vector) in golden() {
        let bytes = hex(vector);
        assert_eq!(enc(&frame), bytes, "encoding of {:?}", frame.msg);
        let (d, used) = decode(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(d, Decoded::Frame(frame));
        // The layout: magic, version, kind at fixed offsets.
        assert_eq!(&bytes[0..4], b"HBLP");
        assert_eq!(bytes[4], 2);
    }
}

#[test]
fn control_golden_vectors() {
    let req = Request::Primary {
        resource: "r0".into(),
        force: true,
    };
    let bytes = hex("48424331010000002e0000006243733a7b22636d64223a227072696d617279222c227265736f75726365223a227230222c22666f726365223a747275657d");
    assert_eq!(control::encode_request(&req), bytes);
    assert_eq!(
        control::decode_request(&bytes).unwrap().unwrap(),
        (req, bytes.len())
    );
    let resp = Response::Refused {
        message: "no".into(),
    };
    let bytes = hex("484243310100000022000000c8afa2717b227265706c79223a2272656675736564222c226d657373616765223a226e6f227d");
    assert_eq!(control::encode_response(&resp), bytes);
    assert_eq!(
        control::decode_response(&bytes).unwrap().unwrap(),
        (resp, bytes.len())
    );
}

#[test]
fn control_detach_and_attach_bodies() {
    for (req, body) in [
        (
            Request::Detach {
                resource: "r0".into(),
            },
            &br#"{"cmd":"detach","resource":"r0"}"#[..],
        ),
        (
            Request::Attach {
                resource: "r0".into(),
            },
            &br#"{"cmd":"attach","resource":"r0"}"#[..],
        ),
    ] {
        let bytes = frame_with_body(body);
        assert_eq!(control::encode_request(&req), bytes);
        assert_eq!(
            control::decode_request(&bytes).unwrap().unwrap(),
            (req, bytes.len())
        );
    }
}

#[test]
fn control_reload_bodies() {
    let req = frame_with_body(br#"{"cmd":"reload"}"#);
    assert_eq!(control::encode_request(&Request::Reload), req);
    assert_eq!(
        control::decode_request(&req).unwrap().unwrap(),
        (Request::Reload, req.len())
    );
    let resp = Response::Reloaded {
        config: "/etc/hablock/hablock.toml".into(),
        changes: vec!["r0: resync_rate 100.0 MiB/s -> 16.0 MiB/s".into()],
    };
    let bytes = frame_with_body(
        br#"{"reply":"reloaded","config":"/etc/hablock/hablock.toml","changes":["r0: resync_rate 100.0 MiB/s -> 16.0 MiB/s"]}"#,
    );
    assert_eq!(control::encode_response(&resp), bytes);
    assert_eq!(
        control::decode_response(&bytes).unwrap().unwrap(),
        (resp, bytes.len())
    );
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
fn control_skips_unknown_fields_and_names_unknown_commands() {
    let f = frame_with_body(br#"{"cmd":"secondary","resource":"r0","since":"v2","extra":{"a":1}}"#);
    let (r, _) = control::decode_request(&f).unwrap().unwrap();
    assert_eq!(
        r,
        Request::Secondary {
            resource: "r0".into()
        }
    );
    let f = frame_with_body(br#"{"cmd":"teleport","resource":"r0"}"#);
    assert_eq!(
        control::decode_request(&f),
        Err(ControlError::UnknownCommand("teleport".into()))
    );
    let f = frame_with_body(br#"{"cmd":"primary"}"#);
    assert!(matches!(
        control::decode_request(&f),
        Err(ControlError::InvalidBody(_))
    ));
    let f = frame_with_body(br#"{"reply":"ok","warnings":[],"new_field":true}"#);
    assert_eq!(
        control::decode_response(&f).unwrap().unwrap().0,
        Response::Ok { warnings: vec![] }
    );
}

#[test]
fn control_truncation_and_corruption() {
    let f = control::encode_request(&Request::Status { resource: None });
    for n in 0..f.len() {
        assert_eq!(
            control::decode_request(&f[..n]).unwrap(),
            None,
            "prefix of {n} bytes"
        );
    }
    let mut bad = f.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(
        control::decode_request(&bad),
        Err(ControlError::BadChecksum)
    );
    assert_eq!(
        control::decode_request(b"GET / HTTP/1.0"),
        Err(ControlError::BadMagic)
    );
    let mut huge = f.clone();
    huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        control::decode_request(&huge),
        Err(ControlError::TooLarge(_))
    ));
}

#[test]
fn payload_corruption_is_reported_with_kind_and_id() {
    let f = Frame {
        id: 42,
        msg: Message::Data {
            offset: 0,
            fua: false,
            payload: Bytes::from(vec![7; 4096]),
        },
    };
    let mut b = enc(&f);
    b[HEADER_LEN + 100] ^= 0x40;
    let (d, used) = decode(&b).unwrap().unwrap();
    assert_eq!(d, Decoded::Corrupt { kind: 16, id: 42 });
    assert_eq!(used, b.len());
}

#[test]
fn header_errors() {
    let f = enc(&Frame {
        id: 1,
        msg: Message::Ping,
    });
    let mut b = f.clone();
    b[0] = b'X';
    assert_eq!(decode(&b), Err(FrameError::BadMagic));
    let mut b = f.clone();
    b[9] ^= 1;
    assert_eq!(decode(&b), Err(FrameError::BadHeaderChecksum));
    // An oversized length is refused before any allocation.
    let mut b = f.clone();
    b[16..20].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
    let crc = crc32c::crc32c(&b[0..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(
        decode(&b),
        Err(FrameError::PayloadTooLarge(MAX_PAYLOAD + 1))
    );
    let mut b = f.clone();
    b[5] = 200;
    let crc = crc32c::crc32c(&b[0..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(decode(&b), Err(FrameError::UnknownKind(200)));
}

#[test]
fn split_decoding_refuses_parts_that_are_not_the_frame() {
    let data = enc(&Frame {
        id: 3,
        msg: Message::Data {
            offset: 4096,
            fua: false,
            payload: Bytes::from(vec![9u8; 8192]),
        },
    });
    let l = block_layout(&data).unwrap().unwrap();
    assert_eq!((l.head_len, l.block_len), (HEADER_LEN + 9, 8192));
    let block = Bytes::copy_from_slice(&data[l.head_len..]);
    // A block one byte short, a head one byte long, a head cut inside the header.
    for (head, block) in [
        (&data[..l.head_len], block.slice(1..)),
        (&data[..=l.head_len], block.slice(1..)),
        (&data[..HEADER_LEN - 1], block.clone()),
    ] {
        assert!(
            matches!(decode_parts(head, block), Err(FrameError::Malformed { .. })),
            "head of {} bytes",
            head.len()
        );
    }
    // A frame without a block has no layout and cannot be decoded in parts.
    let ping = enc(&Frame {
        id: 1,
        msg: Message::Ping,
    });
    assert_eq!(block_layout(&ping), Ok(None));
    assert!(decode_parts(&ping, Bytes::new()).is_err());
}

#[test]
fn authentication() {
    let c = [5u8; 32];
    let mac = auth_mac(b"secret", &c, "r0", "slave");
    assert!(verify_auth_mac(b"secret", &c, "r0", "slave", &mac));
    assert!(!verify_auth_mac(b"other", &c, "r0", "slave", &mac));
    assert!(!verify_auth_mac(b"secret", &[6; 32], "r0", "slave", &mac));
    assert!(!verify_auth_mac(b"secret", &c, "r1", "slave", &mac));
    assert!(
        !verify_auth_mac(b"secret", &c, "r0", "master", &mac),
        "an answer cannot be reflected back"
    );
}

#[test]
fn version_negotiation() {
    let h = |min, max| Hello {
        min_version: min,
        max_version: max,
        features: 3,
        resource: "r".into(),
        node: "n".into(),
        nonce: [0; 32],
    };
    assert_eq!(negotiate(&h(1, 3), &h(2, 5)).unwrap(), (3, 3));
    assert!(negotiate(&h(1, 1), &h(2, 2)).is_err());
}

fn arb_uuids() -> impl Strategy<Value = Uuids> {
    (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(c, b, h0, h1)| Uuids {
        current: c,
        bitmap: b,
        history: [h0, h1],
    })
}

fn arb_msg() -> impl Strategy<Value = Message> {
    let name = "[a-z0-9]{0,20}";
    prop_oneof![
        (
            any::<u8>(),
            any::<u8>(),
            any::<u64>(),
            name,
            name,
            any::<[u8; 32]>()
        )
            .prop_map(|(a, b, f, r, n, nonce)| {
                Message::Hello(Hello {
                    min_version: a,
                    max_version: b,
                    features: f,
                    resource: r,
                    node: n,
                    nonce,
                })
            }),
        any::<[u8; 32]>().prop_map(|mac| Message::Auth { mac }),
        ".{0,100}".prop_map(|reason| Message::Refuse { reason }),
        (
            0u8..3,
            0u8..5,
            any::<u64>(),
            arb_uuids(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(
                |(r, d, u, uuids, flags, since, dirty)| Message::State(NodeState {
                    role: Role::from_wire(r).unwrap(),
                    disk: DiskState::from_wire(d).unwrap(),
                    usable_bytes: u,
                    uuids,
                    flags,
                    primary_since_ms: since,
                    dirty_bits: dirty,
                })
            ),
        (
            any::<u64>(),
            proptest::collection::vec(any::<u64>(), 0..50),
            any::<bool>()
        )
            .prop_map(|(first_word, words, last)| Message::BitmapChunk {
                first_word,
                words,
                last
            }),
        (
            any::<u64>(),
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..600)
        )
            .prop_map(|(offset, fua, payload)| Message::Data {
                offset,
                fua,
                payload: payload.into()
            }),
        Just(Message::DataAck),
        Just(Message::DataNack),
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(offset, len, zeroes)| {
            Message::Trim {
                offset,
                len,
                zeroes,
            }
        }),
        Just(Message::Flush),
        Just(Message::FlushAck),
        Just(Message::Ping),
        Just(Message::PingAck),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..600)).prop_map(
            |(offset, payload)| Message::RsData {
                offset,
                payload: payload.into()
            }
        ),
        (any::<u64>(), any::<u32>()).prop_map(|(offset, len)| Message::ReadReq { offset, len }),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..600)).prop_map(
            |(offset, payload)| Message::ReadReply {
                offset,
                payload: payload.into()
            }
        ),
        any::<u32>().prop_map(|errno| Message::ReadError { errno }),
        Just(Message::RsAck),
        Just(Message::RsNack),
        arb_uuids().prop_map(|uuids| Message::ResyncDone { uuids }),
        (any::<u64>(), any::<u64>()).prop_map(|(offset, len)| Message::OutOfSync { offset, len }),
        (any::<u64>(), any::<u32>()).prop_map(|(offset, len)| Message::VerifyReq { offset, len }),
        (any::<u64>(), proptest::collection::vec(any::<u32>(), 0..70))
            .prop_map(|(offset, checksums)| Message::VerifyReply { offset, checksums }),
        Just(Message::VerifyStart),
        any::<u64>().prop_map(|out_of_sync_bytes| Message::VerifyDone { out_of_sync_bytes }),
    ]
}

proptest! {
    #[test]
    fn parts_are_the_frame_and_share_the_block(id in any::<u64>(), msg in arb_msg()) {
        let f = Frame { id, msg };
        let parts = encode_parts(&f);
        prop_assert_eq!([&parts.head[..], &parts.bulk[..]].concat(), enc(&f));
        if let Message::Data { payload, .. } | Message::RsData { payload, .. } | Message::ReadReply { payload, .. } = &f.msg {
            prop_assert_eq!(parts.bulk.as_ptr(), payload.as_ptr());
        } else {
            prop_assert!(parts.bulk.is_empty());
        }
    }

    #[test]
    fn a_stream_of_frames_decodes_in_any_split(frames in proptest::collection::vec((any::<u64>(), arb_msg()), 1..6), cut in any::<prop::sample::Index>()) {
        let mut wire = Vec::new();
        for (id, msg) in &frames {
            encode(&Frame { id: *id, msg: msg.clone() }, &mut wire);
        }
        // Fed in two pieces, cut anywhere: the same frames, and the buffer ends empty.
        let at = cut.index(wire.len() + 1);
        let mut buf = BytesMut::from(&wire[..at]);
        let mut got = Vec::new();
        while let Some(d) = decode_from(&mut buf).unwrap() {
            got.push(d);
        }
        buf.extend_from_slice(&wire[at..]);
        while let Some(d) = decode_from(&mut buf).unwrap() {
            got.push(d);
        }
        prop_assert!(buf.is_empty());
        let want: Vec<Decoded> = frames.into_iter().map(|(id, msg)| Decoded::Frame(Frame { id, msg })).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn round_trip(id in any::<u64>(), msg in arb_msg()) {
        let f = Frame { id, msg };
        let b = enc(&f);
        prop_assert_eq!(b[5], kind_of(&f.msg));
        let (d, used) = decode(&b).unwrap().unwrap();
        prop_assert_eq!(used, b.len());
        prop_assert_eq!(d, Decoded::Frame(f));
    }

    #[test]
    fn every_truncation_is_incomplete(id in any::<u64>(), msg in arb_msg()) {
        let b = enc(&Frame { id, msg });
        for n in 0..b.len() {
            prop_assert_eq!(decode(&b[..n]), Ok(None));
        }
    }

    #[test]
    fn a_flipped_bit_is_never_a_wrong_frame(id in any::<u64>(), msg in arb_msg(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let f = Frame { id, msg };
        let mut b = enc(&f);
        let i = pos.index(b.len());
        b[i] ^= 1 << bit;
        match decode(&b) {
            Ok(Some((Decoded::Frame(g), _))) => prop_assert!(g == f && (6..8).contains(&i), "flip at {} gave {:?}", i, g),
            Ok(Some((Decoded::Corrupt { .. }, _))) => prop_assert!(i >= HEADER_LEN),
            Ok(None) | Err(_) => {}
        }
    }

    #[test]
    fn a_frame_split_at_its_block_decodes_as_the_whole(id in any::<u64>(), msg in arb_msg(), flip in any::<Option<(prop::sample::Index, u8)>>()) {
        let mut wire = enc(&Frame { id, msg });
        if let Some((pos, bit)) = flip.filter(|_| wire.len() > HEADER_LEN) {
            let i = pos.index(wire.len() - HEADER_LEN) + HEADER_LEN;
            wire[i] ^= 1 << (bit % 8);
        }
        let whole = decode(&wire).unwrap().unwrap().0;
        // Every prefix at least a header long gives the same layout (or none).
        let layout = block_layout(&wire).unwrap();
        for n in HEADER_LEN..wire.len() {
            prop_assert_eq!(block_layout(&wire[..n]).unwrap(), layout);
        }
        match layout {
            Some(l) => {
                prop_assert_eq!(l.head_len + l.block_len, wire.len());
                prop_assert!(l.head_len <= MAX_BLOCK_HEAD_LEN);
                let block = Bytes::copy_from_slice(&wire[l.head_len..]);
                let ptr = block.as_ptr();
                let split = decode_parts(&wire[..l.head_len], block).unwrap();
                if let Decoded::Frame(Frame { msg: Message::Data { payload, .. } | Message::RsData { payload, .. } | Message::ReadReply { payload, .. }, .. }) = &split {
                    prop_assert_eq!(payload.as_ptr(), ptr);
                }
                prop_assert_eq!(split, whole);
            }
            None => {
                let carries_block = matches!(&whole, Decoded::Frame(Frame { msg: Message::Data { .. } | Message::RsData { .. } | Message::ReadReply { .. }, .. }));
                prop_assert!(!carries_block, "a data frame without a layout");
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = decode(&b);
        let _ = control::decode_request(&b);
        let _ = control::decode_response(&b);
        let mut with_magic = b"HBLP".to_vec();
        with_magic.extend_from_slice(&b);
        let _ = decode(&with_magic);
        let _ = block_layout(&b);
        let at = b.len() / 2;
        let _ = decode_parts(&b[..at], Bytes::copy_from_slice(&b[at..]));
        let mut c = b"HBC1\x01\x00\x00\x00".to_vec();
        c.extend_from_slice(&b);
        let _ = control::decode_request(&c);
    }
}
