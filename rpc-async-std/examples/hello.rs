//! Spark's `HelloEndpoint`: a server env hosts an endpoint that answers `SayHi` and `SayBye`;
//! a client env looks it up by address and name and talks to it.
//!
//! Run with `cargo run -p rpc-async-std --example hello`.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use rpc_async_std::{
    BoxError, EndpointContext, RpcCallContext, RpcEndpoint, RpcEnv, RpcEnvConfig, RpcMessage,
};
use serde::{Deserialize, Serialize};

/// Peers know it as "Hello" (its `RpcMessage` name), wherever the type lives in the code.
#[derive(Debug, Serialize, Deserialize, RpcMessage)]
enum Hello {
    SayHi(String),
    SayBye(String),
}

struct HelloEndpoint;

impl RpcEndpoint for HelloEndpoint {
    type Message = Hello;
    type Reply = String;

    async fn on_start(&mut self, ctx: &EndpointContext<Hello, String>) -> Result<(), BoxError> {
        println!("[server] {} started at {}", ctx.name(), ctx.self_ref());
        Ok(())
    }

    async fn receive_and_reply(
        &mut self,
        _: &EndpointContext<Hello, String>,
        message: Hello,
        call: RpcCallContext<String>,
    ) -> Result<(), BoxError> {
        println!(
            "[server] received {message:?} from {:?}",
            call.sender_address()
        );
        call.reply(match message {
            Hello::SayHi(name) => format!("hi, {name}"),
            Hello::SayBye(name) => format!("bye, {name}"),
        });
        Ok(())
    }

    async fn on_stop(&mut self, ctx: &EndpointContext<Hello, String>) {
        println!("[server] {} stopped", ctx.name());
    }
}

#[async_std::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The server: an env listening on a free port, with the endpoint registered.
    let server = RpcEnv::create(
        rpc_async_std::runtime(),
        RpcEnvConfig::server("hello-server", "127.0.0.1", 0).build()?,
    )?;
    server.setup_endpoint("hello-service", HelloEndpoint)?;
    let address = server
        .address()
        .expect("a server env has an address")
        .clone();

    // The client: a client-mode env that looks the endpoint up (checking that it exists and
    // takes our types) and asks it.
    let client = RpcEnv::create(
        rpc_async_std::runtime(),
        RpcEnvConfig::client("hello-client").build()?,
    )?;
    let hello = client
        .setup_endpoint_ref::<Hello, String>(address, "hello-service")
        .await?;
    let reply = hello
        .ask_with_timeout(Hello::SayHi("spark".into()), Duration::from_secs(5))
        .await?;
    println!("[client] {reply}");
    let reply = hello.ask(Hello::SayBye("spark".into())).await?;
    println!("[client] {reply}");

    client.shutdown();
    server.shutdown();
    client.await_termination().await;
    server.await_termination().await;
    Ok(())
}
