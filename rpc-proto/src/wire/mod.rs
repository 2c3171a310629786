//! The rules of our wire above Spark's frames, in one place.
//!
//! Spark's frames ([`Frame`](crate::Frame)) carry opaque bodies and failure strings. What we
//! put in them is specified here and in [`Envelope`](crate::Envelope), and pinned by golden
//! vectors (tests that spell out the exact bytes or text), so that a change of the wire is a
//! visible change of a test. Every reader here takes bytes or text from a peer and never
//! panics on them.
//!
//! | What | Where it travels | Encoding | Type |
//! |------|------------------|----------|------|
//! | envelope | body of `RpcRequest` / `OneWayMessage` | version byte, postcard header, payload | [`Envelope`](crate::Envelope) |
//! | payload | after the envelope header; `RpcResponse` body | postcard, exactly one value | [`encode_payload`](crate::encode_payload) |
//! | failure kind | error text of `RpcFailure` | UTF-8 text, tagged by a prefix | [`RemoteFailure`] |
//! | lookup | an ask with kind `Verify`; its reply | empty payload; postcard enum | [`LookupReply`] |
//! | message identity | `message_type` of an envelope | UTF-8 text, grammar below | [`TypeIdentity`] |
//! | block messages | body of `RpcRequest` / `RpcResponse` to a block server | Spark's `BlockTransferMessage` | [`BlockTransferMessage`](crate::shuffle::BlockTransferMessage) |
//! | block failure | error text of `RpcFailure` from a block server | UTF-8 text, prefix | [`TooManyStreams`] |
//!
//! # Failure kinds
//!
//! An `RpcFailure` carries a string. Spark peers put a Java stack trace there; our peers put
//! one of these texts when the failure is the system's, not the endpoint's, so the caller can
//! give back a typed error:
//!
//! | Kind | Text |
//! |------|------|
//! | endpoint not found | `[rpc:endpoint-not-found] <endpoint name>` |
//! | type mismatch | `[rpc:type-mismatch] <identity the caller used>` |
//! | endpoint stopped | `[rpc:endpoint-stopped] <endpoint name>` |
//! | endpoint busy | `[rpc:endpoint-busy] <which limit was reached>` |
//! | bad message | `[rpc:bad-message] <why the message could not be read>` |
//! | anything else | the endpoint's own text, as is |
//!
//! A reader recognises a kind by its prefix alone (the prefix ends with one space); the rest
//! is the kind's detail. Peers built before issue 11 sent `<expected> | <found>` after the
//! type-mismatch prefix; readers still split it off. Text that starts with no known prefix is
//! a plain remote failure. A new kind is a new prefix: older readers see it as a plain remote
//! failure, which is what it was to them.
//!
//! # Lookup
//!
//! A lookup (Spark's `RpcEndpointVerifier`) asks another env whether an endpoint exists and
//! takes the caller's types. It is an ask (`RpcRequest`) whose envelope has kind
//! [`Verify`](crate::EnvelopeKind::Verify), the endpoint's name as receiver, the caller's
//! [endpoint identity](endpoint_identity) as message type, no deadline and an empty payload
//! (see [`lookup_request`]; a reader ignores the payload). The reply is a [`LookupReply`],
//! postcard-encoded: tag `0` found, `1` not found, `2` type mismatch followed by a string
//! (empty from current peers, which do not tell other envs an endpoint's types; older peers
//! sent them). Every env hosts a local endpoint named [`VERIFIER_NAME`], as Spark does.
//!
//! # Message identity
//!
//! Every envelope's message type is the identity of the endpoint's message and reply types,
//! which both sides compare as strings. It follows this grammar (`SP` is one space, the only
//! whitespace an identity has):
//!
//! ```text
//!   endpoint = type SP "->" SP type
//!   type     = name [ "<" type *( "," SP type ) ">" ]     ; Batch<Option<u64>>
//!            | "(" ")"                                    ; the unit type
//!            | "(" type "," ")"                           ; a 1-tuple
//!            | "(" type 1*( "," SP type ) ")"             ; (u32, bool)
//!            | "[" type ";" SP length "]"                 ; [u8; 16]
//!   name     = 1*( any character but whitespace and < > , ( ) [ ] ; )
//!   length   = "0" | nonzero-digit *digit                 ; decimal, no leading zero
//! ```
//!
//! A name is what a program chose for a type (`spark.RegisterExecutor`), or the value of a
//! const generic parameter (`4`). The writers ([`write_generic`], [`write_tuple`],
//! [`write_array`], [`endpoint_identity`]) produce it and [`TypeIdentity::parse`] reads it
//! back, exactly: a string that parses is the one its tree writes.
//!
//! # Block messages
//!
//! The bodies of the block protocol's RPCs are Spark's own `BlockTransferMessage`s
//! ([`shuffle`](crate::shuffle)): a type byte and the fields, big-endian, as Spark 4.3.0
//! writes them, so a Spark executor's block server and the external shuffle service
//! understand our fetchers, and Spark's fetchers our block servers. (Until issue 14 they were a
//! postcard enum of our own; that encoding is gone.) A server that refuses an `OpenBlocks`
//! because the connection has too many streams open fails it with a text starting with
//! [`TooManyStreams::PREFIX`].
//!
//! # Versioning, in short
//!
//! The envelope has a version byte; postcard enums (envelope kinds, lookup replies) only ever
//! get new variants appended; block messages are Spark's; failure kinds only ever get new
//! prefixes; identities are whatever names the programs choose, so changing one is a protocol
//! change of that program.

mod block;
mod failure;
mod identity;
mod lookup;

pub use block::TooManyStreams;
pub use failure::RemoteFailure;
pub use identity::{
    endpoint_identity, is_valid_name, write_array, write_generic, write_tuple, IdentityError,
    TypeIdentity, ENDPOINT_ARROW,
};
pub use lookup::{lookup_request, LookupReply, VERIFIER_NAME};
