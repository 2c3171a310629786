//! Lookups: the name of every env's verifier endpoint and what it answers.

use serde::{Deserialize, Serialize};

/// The name of every env's built-in lookup endpoint (Spark's `RpcEndpointVerifier`).
pub const VERIFIER_NAME: &str = "endpoint-verifier";

/// The answer of a lookup.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Verified {
    Found,
    NotFound,
    TypeMismatch(String),
}
