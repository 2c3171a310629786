//! Server CPU per pending ask (issue 11): a client parks N asks on a serial endpoint that
//! keeps their call contexts, then the endpoint answers them all. The figure is the server
//! process's CPU seconds (user + system) per 10,000 asks, for each N; with O(1) work per
//! call it stays flat as N grows (it grew with N when every ask scanned the pending ones).
//!
//! `flood` measures the other side of the same issue: a client sends one-way messages to a
//! slow serial endpoint (1 ms a message) and leaves; the figure is the server's resident
//! memory growth once every message has arrived, with the inbox bounded (the default
//! capacity) and unbounded (`--inbox` larger than the flood, as Spark's inbox is).
//!
//! ```text
//! rpc-bench pending [--asks 10000,100000] [--contender rpc-tokio]
//! rpc-bench flood [--messages 1000000] [--inbox N] [--contender rpc-tokio]
//! rpc-bench pending-server --port P --contender C --asks N [--inbox N] [--slow]   # spawned
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

async fn nap(rt: &dyn Runtime, duration: Duration) {
    rpc_tokio::sleep_until(rt, rt.now() + duration).await
}

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

/// Takes one-way messages slowly (1 ms each).
struct Slow;

impl RpcEndpoint for Slow {
    type Message = Park;
    type Reply = u32;

    async fn receive(&mut self, ctx: &EndpointContext<Park, u32>, _: Park) -> Result<(), BoxError> {
        nap(&**ctx.env().runtime(), Duration::from_millis(1)).await;
        Ok(())
    }
}

/// Answers with how many messages the env has received from other envs.
struct Counter;

impl RpcEndpoint for Counter {
    type Message = Park;
    type Reply = u64;

    async fn receive_and_reply(
        &mut self,
        ctx: &EndpointContext<Park, u64>,
        _: Park,
        call: RpcCallContext<u64>,
    ) -> Result<(), BoxError> {
        call.reply(ctx.env().stats().received);
        Ok(())
    }
}

/// The server: an env whose limits admit `asks` pending asks, with the parking endpoint,
/// or (`slow`) with a slow endpoint whose inbox holds `inbox` messages and a counter.
pub(crate) async fn server(
    rt: Arc<dyn Runtime>,
    port: u16,
    asks: usize,
    inbox: Option<usize>,
    slow: bool,
) -> Result<(), Error> {
    // Zero asks still take one: what the env's inbox did with a zero capacity before it
    // was refused as an error.
    let mut config = RpcEnvConfig::server("pending-server", "127.0.0.1", port)
        .with_inbox_capacity(asks.max(1))
        .with_max_pending_asks(asks.max(1));
    if let Some(inbox) = inbox {
        config = config.with_inbox_capacity(inbox);
    } else if slow {
        config = config.with_inbox_capacity(rpc_tokio::DEFAULT_INBOX_CAPACITY);
    }
    // The asks all arrive on one connection: let it hold that many unanswered (an env keeps
    // its idle accepted connections, as its default transport settings do).
    let connection = rpc_tokio::Config::builder()
        .with_close_idle_accepted(false)
        .with_max_pending_requests(asks.max(1))
        .build()?;
    let transport = RpcEnvConfig::client("defaults")
        .build()?
        .transport()
        .to_builder()
        .with_connection(connection)
        .build()?;
    let env = RpcEnv::create(rt, config.with_transport(transport).build()?)?;
    if slow {
        env.setup_endpoint("slow", Slow)?;
        env.setup_endpoint("count", Counter)?;
    } else {
        env.setup_endpoint(
            "park",
            Parking {
                target: asks,
                parked: Vec::with_capacity(asks),
            },
        )?;
    }
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

/// Spawns a pending server with `args`, and waits until it is ready; returns it and its
/// port.
fn spawn_server(contender: &str, args: &[String]) -> Result<(Child, u16), Error> {
    let exe = std::env::current_exe()?;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    let mut child = Child(
        Command::new(&exe)
            .args(["pending-server", "--port", &port.to_string()])
            .args(["--contender", contender])
            .args(args)
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
    Ok((child, port))
}

/// VmRSS of `/proc/<pid>/status`, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Sends `messages` one-way messages to a slow endpoint whose inbox holds `inbox` (the
/// default when `None`), waits until the server has received them all, and prints the
/// growth of its resident memory.
pub(crate) fn flood(contender: &str, messages: usize, inbox: Option<usize>) -> Result<(), Error> {
    let mut args = vec!["--asks".to_owned(), "1".to_owned(), "--slow".to_owned()];
    if let Some(inbox) = inbox {
        args.extend(["--inbox".to_owned(), inbox.to_string()]);
    }
    let (child, port) = spawn_server(contender, &args)?;
    let pid = child.0.id();
    let before = rss_kib(pid).ok_or("could not read the server's memory (/proc)")?;
    let measured = Arc::new(std::sync::Mutex::new(None));
    let slot = measured.clone();
    crate::on_runtime(contender, move |rt| async move {
        let rt = rt.ok_or("our contenders have a runtime")?;
        let env = RpcEnv::create(rt.clone(), RpcEnvConfig::client("flood-client").build()?)?;
        let address: rpc_tokio::RpcAddress = format!("127.0.0.1:{port}").parse()?;
        let slow = env
            .setup_endpoint_ref::<Park, u32>(address.clone(), "slow")
            .await?;
        let count = env
            .setup_endpoint_ref::<Park, u64>(address, "count")
            .await?;
        let start = Instant::now();
        for i in 0..messages {
            // A full outbox (the connection lags) is waited out, not counted as sent.
            while slow.send(Park(i as u32)).is_err() {
                nap(&*rt, Duration::from_millis(1)).await;
            }
        }
        // Every message sent, plus the lookups and the counting asks themselves.
        while count.ask(Park(0)).await? < messages as u64 {
            nap(&*rt, Duration::from_millis(50)).await;
        }
        *slot.lock().unwrap() = Some((rss_kib(pid), start.elapsed()));
        env.shutdown();
        Ok(())
    })?;
    let (after, elapsed) = measured.lock().unwrap().take().ok_or("no figure")?;
    let after = after.ok_or("could not read the server's memory (/proc)")?;
    let growth_mib = after.saturating_sub(before) as f64 / 1024.0;
    let inbox = inbox.map_or_else(|| "default".to_owned(), |n| n.to_string());
    let result = serde_json::json!({
        "contender": contender,
        "workload": format!("flood-{messages}-inbox-{inbox}"),
        "metric": "server_rss_growth_mib",
        "value": growth_mib,
    });
    println!("RESULT {result}");
    println!(
        "{messages} one-way messages to a slow endpoint (inbox {inbox}): server RSS grew \
         {growth_mib:.1} MiB ({} B a message), all received after {:.2} s",
        (after.saturating_sub(before) * 1024) / messages.max(1) as u64,
        elapsed.as_secs_f64()
    );
    Ok(())
}

/// Runs one server per N in `asks` and prints, for each, a `RESULT` line with the server's
/// CPU seconds per 10,000 asks.
pub(crate) fn run(contender: &str, asks: &[usize]) -> Result<(), Error> {
    for &n in asks {
        let (child, port) = spawn_server(contender, &["--asks".to_owned(), n.to_string()])?;
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
            .with_lookup_timeout(timeout)
            .build()?,
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
