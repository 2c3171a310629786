//! A driver endpoint receiving periodic heartbeats from executor envs, noticing one that dies
//! (Spark's `HeartbeatReceiver`, in miniature).
//!
//! Run with `cargo run -p rpc-tokio --example heartbeat`.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rpc_tokio::{
    BoxError, EndpointContext, RpcAddress, RpcCallContext, RpcEndpoint, RpcEnv, RpcEnvConfig,
    RpcMessage,
};
use serde::{Deserialize, Serialize};

const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
const EXECUTOR_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Serialize, Deserialize, RpcMessage)]
enum DriverMessage {
    /// From an executor: "I am alive".
    Heartbeat { executor_id: String },
    /// From the driver itself, periodically: expire executors not heard from.
    ExpireDeadHosts,
}

/// Whether the driver knows the executor (Spark's `HeartbeatResponse(reregisterBlockManager)`).
type Known = bool;

#[derive(Default)]
struct HeartbeatReceiver {
    last_seen: HashMap<String, Instant>,
}

impl RpcEndpoint for HeartbeatReceiver {
    type Message = DriverMessage;
    type Reply = Known;

    async fn on_start(
        &mut self,
        ctx: &EndpointContext<DriverMessage, Known>,
    ) -> Result<(), BoxError> {
        // A ticker that sends ExpireDeadHosts to ourselves; it ends when we stop.
        let me = ctx.self_ref().clone();
        tokio::spawn(async move {
            while me.send(DriverMessage::ExpireDeadHosts).is_ok() {
                tokio::time::sleep(HEARTBEAT_INTERVAL).await;
            }
        });
        Ok(())
    }

    async fn receive(
        &mut self,
        _: &EndpointContext<DriverMessage, Known>,
        message: DriverMessage,
    ) -> Result<(), BoxError> {
        if let DriverMessage::ExpireDeadHosts = message {
            let now = Instant::now();
            self.last_seen.retain(|executor, seen| {
                let alive = now.duration_since(*seen) < EXECUTOR_TIMEOUT;
                if !alive {
                    println!(
                        "[driver] executor {executor} lost: no heartbeat for {EXECUTOR_TIMEOUT:?}"
                    );
                }
                alive
            });
        }
        Ok(())
    }

    async fn receive_and_reply(
        &mut self,
        _: &EndpointContext<DriverMessage, Known>,
        message: DriverMessage,
        call: RpcCallContext<Known>,
    ) -> Result<(), BoxError> {
        if let DriverMessage::Heartbeat { executor_id } = message {
            let known = self
                .last_seen
                .insert(executor_id.clone(), Instant::now())
                .is_some();
            if !known {
                println!("[driver] executor {executor_id} registered");
            }
            call.reply(known);
        }
        Ok(())
    }

    async fn on_disconnected(
        &mut self,
        _: &EndpointContext<DriverMessage, Known>,
        remote: RpcAddress,
    ) {
        println!("[driver] connection from {remote} closed");
    }
}

/// An executor: a client-mode env that heartbeats until it is shut down.
async fn executor(id: &str, driver: RpcAddress) -> Result<RpcEnv, Box<dyn std::error::Error>> {
    let env = RpcEnv::create(rpc_tokio::runtime(), RpcEnvConfig::client(id).build()?)?;
    let receiver = env
        .setup_endpoint_ref::<DriverMessage, Known>(driver, "heartbeat-receiver")
        .await?;
    let executor_id = id.to_owned();
    tokio::spawn(async move {
        loop {
            let beat = DriverMessage::Heartbeat {
                executor_id: executor_id.clone(),
            };
            if let Err(e) = receiver.ask_with_timeout(beat, EXECUTOR_TIMEOUT).await {
                println!("[{executor_id}] heartbeat failed, stopping: {e}");
                break;
            }
            tokio::time::sleep(HEARTBEAT_INTERVAL).await;
        }
    });
    Ok(env)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let driver = RpcEnv::create(
        rpc_tokio::runtime(),
        RpcEnvConfig::server("driver", "127.0.0.1", 0).build()?,
    )?;
    driver.setup_endpoint("heartbeat-receiver", HeartbeatReceiver::default())?;
    let address = driver.address().expect("server env").clone();

    let executor_1 = executor("executor-1", address.clone()).await?;
    let executor_2 = executor("executor-2", address).await?;
    tokio::time::sleep(Duration::from_millis(400)).await;

    println!("[main] executor-2 dies");
    executor_2.shutdown();
    tokio::time::sleep(EXECUTOR_TIMEOUT * 2).await;

    for env in [executor_1, driver] {
        env.shutdown();
        env.await_termination().await;
    }
    Ok(())
}
