//! Server CPU per pending ask (issue 11): a client parks N asks on a serial endpoint that
//! keeps their call contexts, then the endpoint answers them all. The figure is the server
//! process's CPU seconds (user + system) per 10,000 asks, for each N; with O(1) work per
//! call it stays flat as N grows (it grew with N when every ask scanned the pending ones).
//!
//! ```text
//! rpc-bench pending [--asks 10000,100000] [--contender rpc-tokio]
//! rpc-bench pending-server --port P --contender C --asks N     # spawned by `pending`
//! ```

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rpc_tokio::{
    BoxError, EndpointContext, RpcCallContext, RpcEndpoint, RpcEnv, RpcEnvConfig, RpcMessage,
    Runtime,
};
use serde::{Deserialize, Serialize};

use crate::common::cpu_seconds;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// An ask to park.
#[derive(Debug, Serialize, Deserialize, RpcMessage)]
struct Park(u32);

/// Keeps every call context until it holds `target`, then answers them all.
struct Parking {
    target: usize,
    parked: Vec<RpcCallContext<u32>>,
}

impl RpcEndpoint for Parking {
    type Message = Park;
    type Reply = u32;

    async fn receive_and_reply(
        &mut self,
        _: &EndpointContext<Park, u32>,
        Park(n): Park,
        call: RpcCallContext<u32>,
    ) -> Result<(), BoxError> {
        let _ = n;
        self.parked.push(call);
        if self.parked.len() >= self.target {
            for (i, call) in self.parked.drain(..).enumerate() {
                call.reply(i as u32);
            }
        }
        Ok(())
    }
}

/// The server: an env whose limits admit `asks` pending asks, with the parking endpoint.
pub(crate) async fn server(rt: Arc<dyn Runtime>, port: u16, asks: usize) -> Result<(), Error> {
    let config = RpcEnvConfig::server("pending-server", "127.0.0.1", port)
        .with_inbox_capacity(asks)
        .with_max_pending_asks(asks);
    let env = RpcEnv::create(rt, config)?;
    env.setup_endpoint(
        "park",
        Parking {
            target: asks,
            parked: Vec::with_capacity(asks),
        },
    )?;
    crate::ready();
    futures::future::pending::<()>().await;
    Ok(())
}

/// Kills the server when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs one server per N in `asks` and prints, for each, a `RESULT` line with the server's
/// CPU seconds per 10,000 asks.
pub(crate) fn run(contender: &str, asks: &[usize]) -> Result<(), Error> {
    let exe = std::env::current_exe()?;
    for &n in asks {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.local_addr()?.port()
        };
        let mut child = Child(
            Command::new(&exe)
                .args(["pending-server", "--port", &port.to_string()])
                .args(["--contender", contender, "--asks", &n.to_string()])
                .stdout(Stdio::piped())
                .spawn()?,
        );
        let mut lines = BufReader::new(child.0.stdout.take().ok_or("no server stdout")?);
        let mut line = String::new();
        while line.trim() != "READY" {
            line.clear();
            if lines.read_line(&mut line)? == 0 {
                return Err("the pending server exited before it was ready".into());
            }
        }
        let pid = child.0.id();
        let measured = Arc::new(std::sync::Mutex::new(None));
        let slot = measured.clone();
        crate::on_runtime(contender, move |rt| async move {
            let rt = rt.ok_or("our contenders have a runtime")?;
            *slot.lock().unwrap() = client(rt, port, n, pid).await?;
            Ok(())
        })
        .map_err(|e| format!("{n} asks: {e}"))?;
        let (cpu, elapsed) = measured
            .lock()
            .unwrap()
            .take()
            .ok_or("could not read the server's CPU time (/proc)")?;
        let per_10k = cpu / (n as f64 / 10_000.0);
        let result = serde_json::json!({
            "contender": contender,
            "workload": format!("pending-{n}"),
            "metric": "server_cpu_s_per_10k_asks",
            "value": per_10k,
        });
        println!("RESULT {result}");
        println!(
            "{n} pending asks: server CPU {cpu:.2} s ({per_10k:.3} s per 10k), {:.2} s wall",
            elapsed.as_secs_f64()
        );
    }
    Ok(())
}

/// Parks `n` asks on the server, waits for every answer; returns the server's CPU seconds
/// meanwhile and the wall time.
async fn client(
    rt: Arc<dyn Runtime>,
    port: u16,
    n: usize,
    server_pid: u32,
) -> Result<Option<(f64, Duration)>, Error> {
    let timeout = Duration::from_secs(600);
    let env = RpcEnv::create(
        rt,
        RpcEnvConfig::client("pending-client")
            .with_ask_timeout(timeout)
            .with_lookup_timeout(timeout),
    )?;
    let address = format!("127.0.0.1:{port}").parse()?;
    let park = env.setup_endpoint_ref::<Park, u32>(address, "park").await?;
    let before = cpu_seconds(server_pid);
    let start = Instant::now();
    let asks: Vec<_> = (0..n).map(|i| park.ask(Park(i as u32))).collect();
    let replies = futures::future::join_all(asks).await;
    let elapsed = start.elapsed();
    let after = cpu_seconds(server_pid);
    if let Some(error) = replies.into_iter().find_map(Result::err) {
        return Err(format!("an ask failed: {error}").into());
    }
    env.shutdown();
    Ok(before.zip(after).map(|(b, a)| (a - b, elapsed)))
}
