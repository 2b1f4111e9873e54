//! Feeds arbitrary bytes to the control protocol decoders.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    while let Ok(Some((_, used))) = hablock_proto::control::decode_request(buf) {
        buf = &buf[used..];
    }
    let mut buf = data;
    while let Ok(Some((_, used))) = hablock_proto::control::decode_response(buf) {
        buf = &buf[used..];
    }
});
