//! Feeds arbitrary bytes to the NBD request, option and GO parsers.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = blockd::nbd::proto::parse_request(data);
    let _ = blockd::nbd::proto::parse_option(data);
    let _ = blockd::nbd::proto::parse_go(data);
});
