//! The same env code under smol: once with the env's tasks on the global thread pool
//! ([`rpc_async_std::runtime`]), once on a smol executor that this thread runs
//! ([`AsyncIoRuntime::with_executor`]).
//!
//! Run with `cargo run -p rpc-async-std --example hello_smol`.
#![allow(clippy::print_stdout)]

use std::sync::Arc;

use rpc_async_std::{
    AsyncIoRuntime, BoxError, EndpointContext, RpcCallContext, RpcEndpoint, RpcEnv, RpcEnvConfig,
    Runtime,
};

struct Greeter;

impl RpcEndpoint for Greeter {
    type Message = String;
    type Reply = String;

    async fn receive_and_reply(
        &mut self,
        _: &EndpointContext<String, String>,
        name: String,
        call: RpcCallContext<String>,
    ) -> Result<(), BoxError> {
        call.reply(format!("hi, {name}"));
        Ok(())
    }
}

/// A server env and a client env, one ask between them: no executor named anywhere.
async fn hello(rt: Arc<dyn Runtime>) -> Result<String, Box<dyn std::error::Error>> {
    let server = RpcEnv::create(
        rt.clone(),
        RpcEnvConfig::server("server", "127.0.0.1", 0).build()?,
    )?;
    server.setup_endpoint("greeter", Greeter)?;
    let address = server.address().expect("server env").clone();
    let client = RpcEnv::create(rt, RpcEnvConfig::client("client").build()?)?;
    let greeter = client
        .setup_endpoint_ref::<String, String>(address, "greeter")
        .await?;
    let reply = greeter.ask("smol".to_owned()).await?;
    for env in [client, server] {
        env.shutdown();
        env.await_termination().await;
    }
    Ok(reply)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Tasks on the global pool; this thread only waits.
    println!(
        "[global pool] {}",
        smol::block_on(hello(rpc_async_std::runtime()))?
    );

    // Tasks on a smol executor, which this thread runs while it waits.
    let executor = Arc::new(smol::Executor::new());
    let rt = Arc::new(AsyncIoRuntime::with_executor(executor.clone()));
    println!(
        "[own executor] {}",
        smol::block_on(executor.run(hello(rt)))?
    );
    Ok(())
}
