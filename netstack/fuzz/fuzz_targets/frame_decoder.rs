//! libFuzzer target: arbitrary bytes through the frame decoder and the receive path of
//! `wire::fuzz_one`, which must never panic (a refused frame is a normal outcome).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = corestream_netstack::wire::fuzz_one(data);
});
