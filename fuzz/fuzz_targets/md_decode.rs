//! Feeds arbitrary bytes to the on-disk metadata decoders (superblock, activity log).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = blockd::md::Superblock::decode(data, "fuzz");
    let _ = blockd::md::decode_al_slot(data, "fuzz");
    let _ = blockd::md::detect_signature(data);
});
