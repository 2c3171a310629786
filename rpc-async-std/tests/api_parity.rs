//! `rpc-async-std` and `rpc-tokio` export the same API, so switching runtimes is switching
//! the crate. The runtime types are the one intended difference: `AsyncIoRuntime` here,
//! `TokioRuntime` there.
//!
//! Two checks, for each name in [`SHARED`]:
//!
//! - at compile time, [`every_shared_name_is_the_same_item_in_both_crates`] names it through
//!   both crates and requires the two to be one item: a missing or different re-export fails
//!   to compile;
//! - at run time, [`both_crates_declare_the_shared_names_and_only_them`] reads the top-level
//!   `pub` names of both `lib.rs` files: a name added to one crate only (or not added to
//!   [`SHARED`] and the compile-time check) fails the test.
//!
//! The source check is a plain reading of `pub use` lists and unindented `pub` items, not a
//! Rust parser; it fails loudly on shapes it does not know (nested braces).

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::marker::PhantomData as Of;
use std::sync::Arc;

/// The names both adapters export, with the same meaning.
const SHARED: &[&str] = &[
    // The control plane.
    "Ask",
    "BoxError",
    "Cancelled",
    "ConcurrentRpcEndpoint",
    "EndpointContext",
    "EndpointFailure",
    "EndpointKind",
    "EnvStats",
    "FileDownload",
    "FileServer",
    "FileServerError",
    "RpcCallContext",
    "RpcEndpoint",
    "RpcEndpointRef",
    "RpcEnv",
    "RpcEnvConfig",
    "RpcEnvConfigBuilder",
    "RpcError",
    "RpcMessage",
    "SetupError",
    // Addresses and outbox settings, from rpc-proto.
    "ConfigError",
    "OutboxConfig",
    "OutboxConfigBuilder",
    "RpcAddress",
    "RpcEndpointAddress",
    // Security.
    "security",
    "AuthMechanism",
    "SecretKeyHolder",
    "Security",
    "SecurityError",
    "TlsConfig",
    // The transport layer.
    "ConnectError",
    "RpcCall",
    "Ready",
    "FileSegment",
    "ManagedBuffer",
    "StreamCall",
    "UploadSink",
    "STREAM_BUFFER_LIMIT",
    "StreamManager",
    "OneForOneStreamManager",
    "RpcHandler",
    "RpcResponder",
    "MergedBlockMeta",
    "MergedBlockMetaCall",
    "MergedBlockMetaReqHandler",
    "MergedBlockMetaRequest",
    "MergedBlockMetaResponder",
    "TransportClient",
    "ConnectionId",
    "NoopRpcHandler",
    "UnmanagedClient",
    "TransportClientFactory",
    "TransportConfig",
    "TransportConfigBuilder",
    "TransportServer",
    "ServerStats",
    "DEFAULT_MAX_CONNECTIONS",
    // Blocks.
    "fetch_blocks",
    "BlockFetch",
    "BlockFetchConfig",
    "BlockFetchConfigBuilder",
    "BlockFetchError",
    "BlockFetchingListener",
    "BlockMessage",
    "BlockServer",
    "BlockServerBuilder",
    "BlockSource",
    "OpenBlocks",
    "RetryingBlockFetcher",
    "StreamHandle",
    // The runtime interface and the crates underneath.
    "AsyncListener",
    "AsyncStream",
    "AsyncTimer",
    "BoxFuture",
    "Runtime",
    "rpc_driver",
    "rpc_proto",
    "runtime",
];

/// Both arguments name the same type.
fn same<T: ?Sized>(_: Of<T>, _: Of<T>) {}

/// An endpoint implemented through our names, to be required through tokio's.
struct Nop;

impl rpc_async_std::RpcEndpoint for Nop {
    type Message = ();
    type Reply = ();
}

impl rpc_async_std::ConcurrentRpcEndpoint for Nop {
    type Message = ();
    type Reply = ();
}

/// Compiles only if `E` implements tokio's endpoint traits.
fn tokio_endpoint<E: rpc_tokio::RpcEndpoint + rpc_tokio::ConcurrentRpcEndpoint>() {}

/// A message derived through our name (which implements our trait), to be required
/// through tokio's.
#[derive(rpc_async_std::RpcMessage)]
#[allow(dead_code)]
struct Ping<T>(T);

/// A message derived through tokio's name.
#[derive(rpc_tokio::RpcMessage)]
#[rpc(name = "Ping")]
#[allow(dead_code)]
struct TokioPing<T>(T);

/// Compiles only if `M` implements both crates' message traits.
fn message<M: rpc_tokio::RpcMessage + rpc_async_std::RpcMessage>() -> [String; 2] {
    [
        <M as rpc_tokio::RpcMessage>::identity(),
        <M as rpc_async_std::RpcMessage>::identity(),
    ]
}

/// A runtime type as both crates expect one.
fn is_runtime<R: rpc_async_std::Runtime + rpc_tokio::Runtime + Clone + Debug>() {}

#[test]
fn every_shared_name_is_the_same_item_in_both_crates() {
    use rpc_async_std as a;
    use rpc_tokio as t;
    type Msg = ();
    type Reply = u8;

    same(Of::<t::Ask<Reply>>, Of::<a::Ask<Reply>>);
    same(Of::<t::BoxError>, Of::<a::BoxError>);
    same(Of::<t::Cancelled>, Of::<a::Cancelled>);
    same(
        Of::<t::EndpointContext<Msg, Reply>>,
        Of::<a::EndpointContext<Msg, Reply>>,
    );
    same(Of::<t::EndpointFailure>, Of::<a::EndpointFailure>);
    same(Of::<t::EndpointKind>, Of::<a::EndpointKind>);
    same(Of::<t::EnvStats>, Of::<a::EnvStats>);
    same(Of::<t::FileDownload>, Of::<a::FileDownload>);
    same(Of::<t::FileServer>, Of::<a::FileServer>);
    same(Of::<t::FileServerError>, Of::<a::FileServerError>);
    same(
        Of::<t::RpcCallContext<Reply>>,
        Of::<a::RpcCallContext<Reply>>,
    );
    same(
        Of::<t::RpcEndpointRef<Msg, Reply>>,
        Of::<a::RpcEndpointRef<Msg, Reply>>,
    );
    same(Of::<t::RpcEnv>, Of::<a::RpcEnv>);
    same(Of::<t::RpcEnvConfig>, Of::<a::RpcEnvConfig>);
    same(Of::<t::RpcEnvConfigBuilder>, Of::<a::RpcEnvConfigBuilder>);
    same(Of::<t::RpcError>, Of::<a::RpcError>);
    same(Of::<t::SetupError>, Of::<a::SetupError>);
    tokio_endpoint::<Nop>();
    // One trait, and one derive writing the same identities through either name.
    assert_eq!(message::<Ping<u8>>(), ["Ping<u8>", "Ping<u8>"]);
    assert_eq!(message::<TokioPing<u8>>(), ["Ping<u8>", "Ping<u8>"]);

    same(Of::<t::ConfigError>, Of::<a::ConfigError>);
    same(Of::<t::OutboxConfig>, Of::<a::OutboxConfig>);
    same(Of::<t::OutboxConfigBuilder>, Of::<a::OutboxConfigBuilder>);
    same(Of::<t::RpcAddress>, Of::<a::RpcAddress>);
    same(Of::<t::RpcEndpointAddress>, Of::<a::RpcEndpointAddress>);

    same(Of::<t::AuthMechanism>, Of::<a::AuthMechanism>);
    same(Of::<dyn t::SecretKeyHolder>, Of::<dyn a::SecretKeyHolder>);
    same(Of::<t::Security>, Of::<a::Security>);
    same(Of::<t::SecurityError>, Of::<a::SecurityError>);
    same(Of::<t::TlsConfig>, Of::<a::TlsConfig>);
    same(Of::<t::security::Secret>, Of::<a::security::Secret>);

    same(Of::<t::ConnectError>, Of::<a::ConnectError>);
    same(Of::<t::RpcCall>, Of::<a::RpcCall>);
    same(Of::<t::Ready>, Of::<a::Ready>);
    same(Of::<t::FileSegment>, Of::<a::FileSegment>);
    same(Of::<t::ManagedBuffer>, Of::<a::ManagedBuffer>);
    same(Of::<t::StreamCall>, Of::<a::StreamCall>);
    same(Of::<dyn t::UploadSink>, Of::<dyn a::UploadSink>);
    assert_eq!(t::STREAM_BUFFER_LIMIT, a::STREAM_BUFFER_LIMIT);
    same(
        Of::<t::OneForOneStreamManager>,
        Of::<a::OneForOneStreamManager>,
    );
    same(Of::<dyn t::RpcHandler>, Of::<dyn a::RpcHandler>);
    same(Of::<dyn t::StreamManager>, Of::<dyn a::StreamManager>);
    same(Of::<t::RpcResponder>, Of::<a::RpcResponder>);
    same(Of::<t::MergedBlockMeta>, Of::<a::MergedBlockMeta>);
    same(Of::<t::MergedBlockMetaCall>, Of::<a::MergedBlockMetaCall>);
    same(
        Of::<dyn t::MergedBlockMetaReqHandler>,
        Of::<dyn a::MergedBlockMetaReqHandler>,
    );
    same(
        Of::<t::MergedBlockMetaRequest>,
        Of::<a::MergedBlockMetaRequest>,
    );
    same(
        Of::<t::MergedBlockMetaResponder>,
        Of::<a::MergedBlockMetaResponder>,
    );
    same(Of::<t::TransportClient>, Of::<a::TransportClient>);
    same(Of::<t::ConnectionId>, Of::<a::ConnectionId>);
    same(Of::<t::NoopRpcHandler>, Of::<a::NoopRpcHandler>);
    same(Of::<t::UnmanagedClient>, Of::<a::UnmanagedClient>);
    same(
        Of::<t::TransportClientFactory>,
        Of::<a::TransportClientFactory>,
    );
    same(Of::<t::TransportConfig>, Of::<a::TransportConfig>);
    same(
        Of::<t::TransportConfigBuilder>,
        Of::<a::TransportConfigBuilder>,
    );
    same(Of::<t::TransportServer>, Of::<a::TransportServer>);
    same(Of::<t::ServerStats>, Of::<a::ServerStats>);
    assert_eq!(t::DEFAULT_MAX_CONNECTIONS, a::DEFAULT_MAX_CONNECTIONS);

    same(Of::<t::BlockFetch>, Of::<a::BlockFetch>);
    same(Of::<t::BlockFetchConfig>, Of::<a::BlockFetchConfig>);
    same(
        Of::<t::BlockFetchConfigBuilder>,
        Of::<a::BlockFetchConfigBuilder>,
    );
    same(Of::<t::BlockFetchError>, Of::<a::BlockFetchError>);
    same(
        Of::<dyn t::BlockFetchingListener>,
        Of::<dyn a::BlockFetchingListener>,
    );
    same(Of::<t::BlockMessage>, Of::<a::BlockMessage>);
    same(Of::<t::BlockServer>, Of::<a::BlockServer>);
    same(Of::<t::BlockServerBuilder>, Of::<a::BlockServerBuilder>);
    same(Of::<dyn t::BlockSource>, Of::<dyn a::BlockSource>);
    same(Of::<t::OpenBlocks>, Of::<a::OpenBlocks>);
    same(Of::<t::RetryingBlockFetcher>, Of::<a::RetryingBlockFetcher>);
    same(Of::<t::StreamHandle>, Of::<a::StreamHandle>);
    let _ = [t::fetch_blocks, a::fetch_blocks];

    same(Of::<dyn t::AsyncListener>, Of::<dyn a::AsyncListener>);
    same(Of::<dyn t::AsyncStream>, Of::<dyn a::AsyncStream>);
    same(Of::<dyn t::AsyncTimer>, Of::<dyn a::AsyncTimer>);
    same(Of::<t::BoxFuture<Msg>>, Of::<a::BoxFuture<Msg>>);
    same(Of::<dyn t::Runtime>, Of::<dyn a::Runtime>);
    same(
        Of::<t::rpc_driver::env::RpcEnv>,
        Of::<a::rpc_driver::env::RpcEnv>,
    );
    same(Of::<t::rpc_proto::Config>, Of::<a::rpc_proto::Config>);
    // Not called: tokio's panics outside a tokio runtime.
    let _: [fn() -> Arc<dyn a::Runtime>; 2] = [t::runtime, a::runtime];

    // The one intended difference.
    is_runtime::<t::TokioRuntime>();
    is_runtime::<a::AsyncIoRuntime>();
}

/// The top-level `pub` names of a crate's `lib.rs`: items re-exported by `pub use` and
/// unindented `pub` items (indented ones are methods).
fn pub_names(source: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let lines = format!("\n{source}");
    let mut rest = lines.as_str();
    while let Some(start) = rest.find("\npub use ") {
        let stmt = &rest[start + "\npub use ".len()..];
        let end = stmt.find(';').expect("a `pub use` ends with `;`");
        let (stmt, after) = (stmt[..end].trim(), &stmt[end..]);
        rest = after;
        let (prefix, leaves) = match stmt.split_once('{') {
            Some((prefix, leaves)) => {
                let leaves = leaves
                    .strip_suffix('}')
                    .expect("one brace group at the end");
                assert!(!leaves.contains('{'), "nested braces in `pub use {stmt}`");
                (prefix.trim_end_matches("::"), leaves.split(',').collect())
            }
            None => ("", vec![stmt]),
        };
        for leaf in leaves.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
            let name = match leaf.rsplit_once(" as ") {
                Some((_, alias)) => alias,
                None if leaf == "self" => prefix.rsplit("::").next().unwrap(),
                None => leaf.rsplit("::").next().unwrap(),
            };
            names.insert(name.trim().to_owned());
        }
    }
    for line in source.lines() {
        let Some(item) = line.strip_prefix("pub ") else {
            continue;
        };
        let mut words = item.split_whitespace();
        let keyword = words.next().unwrap_or_default();
        if [
            "fn", "struct", "enum", "trait", "type", "mod", "const", "static",
        ]
        .contains(&keyword)
        {
            let name = words.next().expect("an item has a name");
            let end = name.find(|c: char| !c.is_alphanumeric() && c != '_');
            names.insert(name[..end.unwrap_or(name.len())].to_owned());
        }
    }
    names
}

#[test]
fn both_crates_declare_the_shared_names_and_only_them() {
    let shared: BTreeSet<String> = SHARED.iter().map(|s| s.to_string()).collect();
    let mut tokio = pub_names(include_str!("../../rpc-tokio/src/lib.rs"));
    assert!(tokio.remove("TokioRuntime"));
    // `#[cfg(doctest)]` only: runs the workspace README's examples, which use rpc-tokio.
    assert!(tokio.remove("ReadmeDoctests"));
    let mut async_std = pub_names(include_str!("../src/lib.rs"));
    assert!(async_std.remove("AsyncIoRuntime"));

    assert_eq!(
        tokio.difference(&shared).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "rpc-tokio exports names missing from SHARED (and from rpc-async-std?)"
    );
    assert_eq!(
        async_std.difference(&shared).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "rpc-async-std exports names missing from SHARED (and from rpc-tokio?)"
    );
    assert_eq!(tokio, shared, "SHARED names that rpc-tokio lacks");
    assert_eq!(async_std, shared, "SHARED names that rpc-async-std lacks");
}

#[test]
fn the_source_reader_sees_use_lists_aliases_self_and_items() {
    let source = "\
pub use a::{self, b::C, D as E};
pub use f::G;
pub fn h() {}
pub struct I<T>(T);
    pub fn method() {}
use private::J;
";
    let names: Vec<_> = pub_names(source).into_iter().collect();
    assert_eq!(names, ["C", "E", "G", "I", "a", "h"]);
}
