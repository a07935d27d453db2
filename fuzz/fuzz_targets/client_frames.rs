//! The bytes a WebSocket client sends, parsed by the hub's frame parser:
//! never a panic, the same frames and errors however the stream is cut, no
//! kept message over the size limit, and keeping messages changes nothing
//! else (see `ocha_realtime::fuzzing`, exposed only under `--cfg fuzzing`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ocha_realtime::fuzzing::client_frames(data));
