//! Feeds arbitrary bytes to the peer protocol decoder, frame after frame.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    while let Ok(Some((decoded, used))) = hablock_proto::peer::decode(buf) {
        if let hablock_proto::peer::Decoded::Frame(f) = decoded {
            // A decoded frame re-encodes to the same bytes (flags aside).
            let mut out = Vec::new();
            hablock_proto::peer::encode(&f, &mut out);
            assert_eq!(out.len(), used);
        }
        buf = &buf[used..];
    }
});
