//! Lookups: the name of every env's verifier endpoint and what it answers (the wire format is
//! [`rpc_proto::wire`]'s).

pub use rpc_proto::wire::VERIFIER_NAME;

/// The answer of a lookup.
pub(crate) use rpc_proto::LookupReply as Verified;
