//! libFuzzer target: arbitrary bytes through the frame decoder, the handshake and the job and
//! channel checks of `wire::fuzz_one`, which must never panic (a refused frame is a normal
//! outcome; an input starting with `+` is played after a valid handshake).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = corestream_netstack::wire::fuzz_one(data);
});
