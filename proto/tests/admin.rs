//! The forwarded administrator request: golden bytes (MAC computed independently),
//! authentication, malformed fields, truncation and arbitrary input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hablock_proto::admin::{decode, encode, is_admin, AdminRequest, Command, MAX_LEN};
use hablock_proto::heartbeat::HeartbeatError;
use proptest::prelude::*;

const SECRET: &[u8] = b"test-secret";
const GOLDEN: &str = "48425251010106058877665544332211080706050403020107000000000000006d6173746572736c617665042f84281fd580a12d52d16b8e8b1f9cc9ae0c8fffd227828fc4d8a6abfe5c2c";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn sample() -> AdminRequest {
    AdminRequest {
        command: Command::Standby,
        cluster_id: 0x1122_3344_5566_7788,
        generation: 0x0102_0304_0506_0708,
        sequence: 7,
        sender: "master".into(),
        target: "slave".into(),
    }
}

#[test]
fn golden_vector() {
    let bytes = hex(GOLDEN);
    assert_eq!(encode(&sample(), SECRET).unwrap(), bytes);
    assert_eq!(decode(&bytes, SECRET).unwrap(), sample());
    assert!(is_admin(&bytes));
    assert!(!is_admin(b"HBHB"));
}

#[test]
fn refusals() {
    let bytes = hex(GOLDEN);
    assert_eq!(decode(&bytes, b"other"), Err(HeartbeatError::BadMac));
    assert_eq!(
        decode(&bytes[..10], SECRET),
        Err(HeartbeatError::TooShort(10))
    );
    assert!(matches!(
        decode(&[0u8; MAX_LEN + 1], SECRET),
        Err(HeartbeatError::TooLong(_))
    ));
    let mut v = bytes.clone();
    v[4] = 2;
    assert_eq!(
        decode(&v, SECRET),
        Err(HeartbeatError::UnsupportedVersion(2))
    );
    // An authenticated packet with an unknown command or inconsistent lengths.
    let resign = |mut body: Vec<u8>| {
        use hmac::{Hmac, Mac};
        let m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(SECRET)
            .unwrap()
            .chain_update(&body)
            .finalize()
            .into_bytes();
        body.extend_from_slice(&m);
        body
    };
    let body = bytes[..bytes.len() - 32].to_vec();
    let mut b = body.clone();
    b[5] = 9;
    assert_eq!(
        decode(&resign(b), SECRET),
        Err(HeartbeatError::Malformed("unknown command"))
    );
    let mut b = body.clone();
    b[7] = 4;
    assert_eq!(
        decode(&resign(b), SECRET),
        Err(HeartbeatError::Malformed("length does not match the names"))
    );
    let mut b = body;
    b[6] = 0;
    assert_eq!(
        decode(&resign(b), SECRET),
        Err(HeartbeatError::Malformed("name length out of range"))
    );
    let mut long = sample();
    long.target = "x".repeat(65);
    assert!(encode(&long, SECRET).is_err());
}

proptest! {
    #[test]
    fn round_trip(seq in any::<u64>(), gen in any::<u64>(), online in any::<bool>()) {
        let mut r = sample();
        r.sequence = seq;
        r.generation = gen;
        r.command = if online { Command::Online } else { Command::Standby };
        prop_assert_eq!(decode(&encode(&r, SECRET).unwrap(), SECRET).unwrap(), r);
    }

    #[test]
    fn any_flipped_bit_is_rejected(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut b = hex(GOLDEN);
        let i = pos.index(b.len());
        b[i] ^= 1 << bit;
        prop_assert!(decode(&b, SECRET).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode(&b, SECRET);
    }
}
