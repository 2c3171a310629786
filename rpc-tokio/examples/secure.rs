//! Securing a deployment: a server env that requires Spark's AES authentication with AES-GCM
//! on every connection, a client env holding the same secret that talks to it, and a client
//! with the wrong secret that is refused before it reaches any endpoint.
//!
//! Run with `cargo run -p rpc-tokio --example secure`.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use rpc_tokio::{
    AuthMechanism, BoxError, EndpointContext, RpcCallContext, RpcEndpoint, RpcEnv, RpcEnvConfig,
    RpcError, RpcMessage, Security, SecurityError, SetupError,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, RpcMessage)]
struct Greet(String);

struct Greeter;

impl RpcEndpoint for Greeter {
    type Message = Greet;
    type Reply = String;

    async fn receive_and_reply(
        &mut self,
        _: &EndpointContext<Greet, String>,
        Greet(name): Greet,
        call: RpcCallContext<String>,
    ) -> Result<(), BoxError> {
        call.reply(format!(
            "hello, {name}, over an authenticated and encrypted connection"
        ));
        Ok(())
    }
}

/// The same settings on both sides: in a real deployment, the secret comes from a file or a
/// secret store, never from the code.
fn security(secret: &str) -> Security {
    Security::secret(secret)
        // AES authentication (key schedule v2) then AES-GCM: the default, spelled out.
        .with_mechanism(AuthMechanism::aes_gcm())
        .with_handshake_timeout(Duration::from_secs(10))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = RpcEnv::create(
        rpc_tokio::runtime(),
        RpcEnvConfig::server("secure-server", "127.0.0.1", 0)
            .with_security(security("s3cret"))
            .build()?,
    )?;
    server.setup_endpoint("greeter", Greeter)?;
    let address = server.address().expect("a server env").clone();

    // A client with the secret: the handshake runs on connect, then everything is encrypted.
    let client = RpcEnv::create(
        rpc_tokio::runtime(),
        RpcEnvConfig::client("trusted")
            .with_security(security("s3cret"))
            .build()?,
    )?;
    let greeter = client
        .setup_endpoint_ref::<Greet, String>(address.clone(), "greeter")
        .await?;
    println!("[trusted] {}", greeter.ask(Greet("spark".into())).await?);

    // A client with the wrong secret: refused during the handshake, with a typed error; the
    // server served it nothing (not even the lookup).
    let stranger = RpcEnv::create(
        rpc_tokio::runtime(),
        RpcEnvConfig::client("stranger")
            .with_security(security("guess"))
            .build()?,
    )?;
    match stranger
        .setup_endpoint_ref::<Greet, String>(address, "greeter")
        .await
    {
        Err(SetupError::Lookup(RpcError::Security {
            cause: error @ SecurityError::AuthenticationFailed { .. },
            ..
        })) => println!("[stranger] refused: {error}"),
        other => return Err(format!("the stranger was not refused: {other:?}").into()),
    }

    for env in [&stranger, &client, &server] {
        env.shutdown();
    }
    for env in [&stranger, &client, &server] {
        env.await_termination().await;
    }
    Ok(())
}
