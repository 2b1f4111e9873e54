//! Feeds arbitrary bytes to what clusterd reads from the network and its socket: the
//! heartbeat and admin-request datagrams and clusterd's control bodies.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hablock_proto::heartbeat::decode(data, b"fuzz-secret");
    let _ = hablock_proto::admin::decode(data, b"fuzz-secret");
    let mut buf = data;
    while let Ok(Some((_, used))) = hablock_proto::control::decode_cluster_request(buf) {
        buf = &buf[used..];
    }
    let mut buf = data;
    while let Ok(Some((_, used))) = hablock_proto::control::decode_cluster_response(buf) {
        buf = &buf[used..];
    }
});
