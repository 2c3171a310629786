//! Test oracles for `rpc-proto`: the invariants its fuzz targets and tests check.
//!
//! This crate is not shipped (`publish = false`) and `rpc-proto` does not depend on it: only
//! the fuzz targets in `fuzz/`, this crate's seed-replay test and the model test in `tests/`
//! build it. It uses `rpc-proto`'s public API only (with the numbers of the local ids, which
//! `rpc-proto` keeps public but hidden from its docs so that an oracle can name ids a
//! connection never issued).
//!
//! ```text
//!   fuzz/fuzz_targets/*.rs ──┐                      ┌──► decode_frames, connection, auth,
//!   tests/fuzz_seeds.rs ─────┼─► arbitrary bytes ───┤    gcm, sasl, handshake, wire: assert!
//!     (fuzz/seeds/<target>)  │                      │
//!   tests/tests/model.rs ────┴─► issued, cancelled, ┴──► CallLedger: Result<_, LedgerError>
//!                                events
//! ```
//!
//! Each oracle function takes arbitrary bytes and checks `rpc-proto`'s invariants with
//! `assert!`: a failed assertion is a bug in `rpc-proto`, whatever the input.
//!
//! - [`decode_frames`]: the [`FrameDecoder`](rpc_proto::FrameDecoder) conserves bytes,
//!   round-trips every frame, hands out no more body than announced, never reserves memory for
//!   a length the peer merely claims, keeps returning its first error, and gives the same
//!   results however the input is split.
//! - [`connection`]: two [`Connection`](rpc_proto::Connection)s wired back to back run a
//!   script of inputs and commands read from the bytes; every call resolves at most once
//!   (exactly once by [`Event::Closed`](rpc_proto::Event::Closed)), `Closed` is the last
//!   event, a closed connection refuses commands and has no deadline, and a connection fed
//!   only its peer's bytes never sees an invalid frame.
//! - [`gcm`]: the GCM transport cipher gives the same plaintext and error however its input
//!   is split, round-trips any messages, and detects a flipped byte.
//! - [`auth`]: the AES handshake's message codec round-trips and bounds its input, its roles
//!   accept only well-formed messages, and honest peers agree on keys.
//! - [`sasl`]: the SASL message codec round-trips and bounds its input, hostile tokens leave the
//!   DIGEST-MD5 roles failed for good or never complete them, honest peers always complete,
//!   and the `auth-conf` layer round-trips, detects a flipped byte and decrypts the same
//!   however its input is split.
//! - [`handshake`]: the connection handshake never lets a stranger in, answers it only with
//!   handshake replies within the protocol's rounds, behaves the same however its input is
//!   split, and always completes between honest peers.
//! - [`wire`]: every decoder of the envelope's contract (`rpc_proto::wire`, the envelope, the
//!   payload codec) on the same bytes: what decodes re-encodes, no longer, to the same value,
//!   an envelope's borrowed view and its owned decode agree, identities and failure texts
//!   write back to the text they were read from and keep their kind.
//!
//! - [`shuffle`]: Spark's shuffle service messages (`rpc_proto::shuffle`) re-encode what they
//!   decode to the same value; block ids write back to the text they were
//!   read from; a fetch plan keeps every id once; file paths stay in their dirs.
//!
//! [`CallLedger`] is the bookkeeping of "every pending call resolves exactly once" that both
//! the [`connection`] oracle and the model test keep their calls in; it returns a
//! [`LedgerError`] instead of panicking, so a property test can report and shrink.

#![forbid(unsafe_code)]

mod auth;
mod connection;
mod frame_decoder;
mod gcm;
mod handshake;
mod ledger;
mod rng;
mod sasl;
mod shuffle;
mod wire;

pub use auth::auth;
pub use connection::connection;
pub use frame_decoder::decode_frames;
pub use gcm::gcm;
pub use handshake::handshake;
pub use ledger::{CallLedger, CallState, LedgerError, Observed};
pub use sasl::sasl;
pub use shuffle::shuffle;
pub use wire::wire;
