#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

static BASE: OnceLock<Instant> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rpc_oracle::connection(*BASE.get_or_init(Instant::now), data)
});
