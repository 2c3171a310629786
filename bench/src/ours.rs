//! Our framework: typed messages through `RpcEndpointRef::ask` / `send` to an endpoint on the
//! control plane (W1, W2, W3, W5, W6), streams on the transport layer (W4, W6, W7).
//!
//! The code is the same for every adapter (they export the same types); only the runtime
//! handed in differs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use rpc_tokio::StreamChunkId;
use rpc_tokio::{
    BoxError, EndpointContext, FileSegment, ManagedBuffer, RpcCallContext, RpcEndpoint,
    RpcEndpointRef, RpcEnv, RpcEnvConfig, RpcHandler, RpcMessage, RpcResponder, Runtime,
    StreamManager, TransportClient, TransportClientFactory, TransportConfig, TransportServer,
};
use serde::{Deserialize, Serialize};

use crate::common::*;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// What the bench endpoint takes.
#[derive(Debug, Serialize, Deserialize, RpcMessage)]
enum Msg {
    /// Ask: reply with the same bytes.
    Echo(Bytes),
    /// Send: count it.
    Data(Bytes),
    /// Ask: reply with the count so far (8 bytes, little-endian).
    Count,
}

struct Bench {
    count: u64,
}

impl RpcEndpoint for Bench {
    type Message = Msg;
    type Reply = Bytes;

    async fn receive(&mut self, _: &EndpointContext<Msg, Bytes>, _: Msg) -> Result<(), BoxError> {
        self.count += 1;
        Ok(())
    }

    async fn receive_and_reply(
        &mut self,
        _: &EndpointContext<Msg, Bytes>,
        message: Msg,
        call: RpcCallContext<Bytes>,
    ) -> Result<(), BoxError> {
        call.reply(match message {
            Msg::Echo(bytes) => bytes,
            Msg::Data(_) => Bytes::new(),
            Msg::Count => Bytes::copy_from_slice(&self.count.to_le_bytes()),
        });
        Ok(())
    }
}

/// Serves the block (`block`) and the file (`file`) as streams.
struct Data {
    block: Bytes,
    file: Option<PathBuf>,
}

impl RpcHandler for Data {
    fn receive(&self, _: &TransportClient, message: Bytes, responder: RpcResponder) {
        let _ = responder.reply(message);
    }

    fn stream_manager(&self) -> Option<&dyn StreamManager> {
        Some(self)
    }
}

impl StreamManager for Data {
    fn chunk(&self, _: &TransportClient, chunk: StreamChunkId) -> Result<Bytes, BoxError> {
        Err(format!("no chunk {chunk}").into())
    }

    fn open_stream_buffer(
        &self,
        _: &TransportClient,
        stream_id: &str,
    ) -> Result<ManagedBuffer, BoxError> {
        match (stream_id, &self.file) {
            ("block", _) => Ok(ManagedBuffer::Memory(self.block.clone())),
            ("file", Some(path)) => FileSegment::open(path)
                .map(ManagedBuffer::File)
                .map_err(Into::into),
            (other, _) => Err(format!("no stream {other}").into()),
        }
    }
}

/// The server env's connection limit: W8's 1,000 clients and room to spare.
const SERVER_MAX_CONNECTIONS: usize = 4_096;

/// Runs the server until the process is killed.
pub(crate) async fn server(rt: Arc<dyn Runtime>, opts: ServerOpts) -> Result<(), Error> {
    let security = opts.crypto.security(true)?;
    // W3 sends 1,000,000 one-way messages as fast as it can and counts them all: an inbox
    // that holds them all, as Spark's unbounded one does (the default of 10,000 would drop
    // what the endpoint has not caught up with).
    // W8 connects 1,000 clients: more than the default connection limit (512), so the env's
    // own transport settings with a higher limit.
    let defaults = RpcEnvConfig::server("bench-server", "127.0.0.1", opts.port).build()?;
    let env_transport = defaults
        .transport()
        .to_builder()
        .with_max_connections(SERVER_MAX_CONNECTIONS)
        .build()?;
    let mut config = RpcEnvConfig::server("bench-server", "127.0.0.1", opts.port)
        .with_inbox_capacity(2_000_000)
        .with_transport(env_transport);
    let mut transport = TransportConfig::builder();
    if security.is_enabled() {
        config = config.with_security(security.clone());
        transport = transport.with_security(security);
    }
    let transport = transport.build()?;
    let env = RpcEnv::create(rt.clone(), config.build()?)?;
    env.setup_endpoint("bench", Bench { count: 0 })?;
    let data = Arc::new(Data {
        block: block(opts.block),
        file: opts.file,
    });
    let _transport =
        TransportServer::bind(rt, ([127, 0, 0, 1], opts.port + 1).into(), data, transport)?;
    crate::ready();
    futures::future::pending::<()>().await;
    Ok(())
}

async fn connect(
    rt: &Arc<dyn Runtime>,
    opts: &ClientOpts,
) -> Result<(RpcEnv, RpcEndpointRef<Msg, Bytes>), Error> {
    let security = opts.crypto.security(false)?;
    let mut config = RpcEnvConfig::client("bench-client");
    if security.is_enabled() {
        config = config.with_security(security);
    }
    let env = RpcEnv::create(rt.clone(), config.build()?)?;
    let address = rpc_tokio::RpcAddress::new("127.0.0.1", opts.port);
    let bench = env
        .setup_endpoint_ref::<Msg, Bytes>(address, "bench")
        .await?;
    Ok((env, bench))
}

async fn round_trips(bench: &RpcEndpointRef<Msg, Bytes>, n: usize) -> Result<Vec<Duration>, Error> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let reply = bench.ask(Msg::Echo(payload())).await?;
        samples.push(start.elapsed());
        assert_eq!(reply.len(), PAYLOAD);
    }
    Ok(samples)
}

async fn latency_run(
    bench: &RpcEndpointRef<Msg, Bytes>,
    sizes: &Sizes,
) -> Result<Vec<Duration>, Error> {
    round_trips(bench, sizes.warmup).await?;
    round_trips(bench, sizes.latency).await
}

/// Reads a whole stream, discarding it (and logging each piece with `meter`); returns its
/// length.
async fn drain(
    client: &TransportClient,
    id: &str,
    meter: Option<&BulkMeter>,
) -> Result<u64, Error> {
    let mut call = client.stream(id, None);
    let mut n = 0u64;
    while let Some(piece) = call.next().await {
        let k = piece?.len() as u64;
        if let Some(meter) = meter {
            meter.add(k);
        }
        n += k;
    }
    Ok(n)
}

async fn nap(rt: &Arc<dyn Runtime>) {
    let mut timer = rt.new_timer(Instant::now() + Duration::from_micros(200));
    rpc_tokio::timer_fired(timer.as_mut()).await;
}

/// Runs one workload against a server.
pub(crate) async fn client(rt: Arc<dyn Runtime>, opts: ClientOpts) -> Result<(), Error> {
    let sizes = opts.sizes.clone();
    match opts.workload.as_str() {
        "W1" => {
            let (_env, bench) = connect(&rt, &opts).await?;
            let samples = latency_run(&bench, &sizes).await?;
            latency(&opts, samples, true);
        }
        "W2" => {
            let (_env, bench) = connect(&rt, &opts).await?;
            let start = Instant::now();
            let mut replies = futures::stream::iter(0..sizes.pipelined)
                .map(|_| bench.ask(Msg::Echo(payload())))
                .buffer_unordered(PIPELINE);
            while let Some(reply) = replies.next().await {
                assert_eq!(reply?.len(), PAYLOAD);
            }
            rate(&opts, "req_per_s", sizes.pipelined, start.elapsed());
        }
        "W3" => {
            let (_env, bench) = connect(&rt, &opts).await?;
            let start = Instant::now();
            let mut refused = 0u64;
            for _ in 0..sizes.one_way {
                while bench.send(Msg::Data(payload())).is_err() {
                    // The send buffer is full: let the connection drain it.
                    refused += 1;
                    nap(&rt).await;
                }
            }
            loop {
                let reply = bench.ask(Msg::Count).await?;
                let count = u64::from_le_bytes(reply[..8].try_into()?);
                if count >= sizes.one_way as u64 {
                    break;
                }
                nap(&rt).await;
            }
            rate(&opts, "msg_per_s", sizes.one_way, start.elapsed());
            result(&opts, "send_refusals", refused as f64);
        }
        "W4" => {
            let client = data_client(&rt, &opts).await?;
            let mut times = Vec::new();
            for _ in 0..W4_REPS {
                let start = Instant::now();
                let n = drain(&client, "block", None).await?;
                times.push(start.elapsed());
                assert_eq!(n, sizes.block as u64);
            }
            bulk(&opts, sizes.block as u64, &mut times);
        }
        "W5" => {
            let mut benches = Vec::new();
            let mut envs = Vec::new();
            for _ in 0..FAN_IN {
                let (env, bench) = connect(&rt, &opts).await?;
                envs.push(env);
                benches.push(bench);
            }
            let clients = benches.iter().map(|b| round_trips(b, sizes.fan_in_asks));
            concurrent_asks(&opts, clients, FAN_IN * sizes.fan_in_asks).await?;
        }
        "W6" => {
            let (_env, bench) = connect(&rt, &opts).await?;
            let client = data_client(&rt, &opts).await?;
            // The load runs as a task of its own (as it does for tarpc and raw), so the
            // latency loop is never held up by draining buffered pieces.
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stopped = stop.clone();
            let meter = Arc::new(BulkMeter::default());
            let load_meter = meter.clone();
            rt.spawn(Box::pin(async move {
                while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    if drain(&client, "block", Some(&load_meter)).await.is_err() {
                        break;
                    }
                }
            }));
            round_trips(&bench, sizes.warmup).await?;
            let from = Instant::now();
            let samples = round_trips(&bench, sizes.latency).await;
            let to = Instant::now();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let samples = samples?;
            latency(&opts, samples, false);
            meter.report(&opts, from, to);
        }
        "W7" => {
            let client = data_client(&rt, &opts).await?;
            let timer = FileTimer::start(&opts);
            let n = drain(&client, "file", None).await?;
            assert_eq!(n, sizes.file);
            timer.finish(&opts, n);
        }
        "W8" => {
            check_nofile(sizes.many_connections)?;
            // One client env per connection: an env keeps one connection per peer address
            // (its pool picks among `connections_per_peer` in turn, not one per endpoint
            // ref), so distinct connections need distinct envs. An env spawns no task until
            // it connects; `connect_s` shows what making them and connecting costs.
            let start = Instant::now();
            let connected: Vec<_> = futures::stream::iter(0..sizes.many_connections)
                .map(|_| connect(&rt, &opts))
                .buffer_unordered(FAN_IN)
                .collect()
                .await;
            let mut envs = Vec::with_capacity(connected.len());
            let mut benches = Vec::with_capacity(connected.len());
            for c in connected {
                let (env, bench) = c?;
                envs.push(env);
                benches.push(bench);
            }
            result(&opts, "connect_s", start.elapsed().as_secs_f64());
            let clients = benches.iter().map(|b| round_trips(b, sizes.many_asks));
            concurrent_asks(&opts, clients, sizes.many_connections * sizes.many_asks).await?;
            peak_rss(&opts);
        }
        other => return Err(format!("unknown workload {other}").into()),
    }
    Ok(())
}

async fn data_client(rt: &Arc<dyn Runtime>, opts: &ClientOpts) -> Result<TransportClient, Error> {
    let security = opts.crypto.security(false)?;
    let mut transport = TransportConfig::builder();
    if security.is_enabled() {
        transport = transport.with_security(security);
    }
    let transport = transport.build()?;
    let factory = TransportClientFactory::new(
        rt.clone(),
        Arc::new(Data {
            block: Bytes::new(),
            file: None,
        }),
        transport,
    );
    Ok(factory.create_client(opts.data()).await?)
}
