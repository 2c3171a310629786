//! tarpc (tokio, bincode over its length-delimited serde transport, TCP_NODELAY on) doing the
//! same work: W1, W2, W3, W5, W6, W8. tarpc has no one-way calls, so W3 sends calls answered with
//! `()`, 256 in flight; W6's bulk load is a call returning the 256 MiB block.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Future, StreamExt};
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::{Framed, LengthDelimitedCodec};
use tarpc::{client, context, serde_transport};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The bench service.
#[tarpc::service]
trait BenchService {
    /// Replies with the same bytes.
    async fn echo(payload: Bytes) -> Bytes;
    /// Counts a message.
    async fn push(payload: Bytes);
    /// The count so far.
    async fn count() -> u64;
    /// The block.
    async fn block() -> Bytes;
}

#[derive(Clone)]
struct Server {
    count: Arc<AtomicU64>,
    block: Bytes,
}

impl BenchService for Server {
    async fn echo(self, _: context::Context, payload: Bytes) -> Bytes {
        payload
    }

    async fn push(self, _: context::Context, _: Bytes) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    async fn count(self, _: context::Context) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    async fn block(self, _: context::Context) -> Bytes {
        self.block.clone()
    }
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(1 << 30)
        .new_codec()
}

async fn spawn(fut: impl Future<Output = ()> + Send + 'static) {
    tokio::spawn(fut);
}

/// Runs the server until the process is killed.
pub(crate) async fn server(opts: ServerOpts) -> Result<(), Error> {
    let listener = TcpListener::bind(("127.0.0.1", opts.port)).await?;
    let server = Server {
        count: Arc::new(AtomicU64::new(0)),
        block: block(opts.block),
    };
    crate::ready();
    while let Ok((stream, _)) = listener.accept().await {
        stream.set_nodelay(true)?;
        let transport = serde_transport::new(Framed::new(stream, codec()), Bincode::default());
        let channel = BaseChannel::with_defaults(transport);
        tokio::spawn(channel.execute(server.clone().serve()).for_each(spawn));
    }
    Ok(())
}

async fn connect(opts: &ClientOpts) -> Result<BenchServiceClient, Error> {
    let stream = TcpStream::connect(opts.control()).await?;
    stream.set_nodelay(true)?;
    let transport = serde_transport::new(Framed::new(stream, codec()), Bincode::default());
    Ok(BenchServiceClient::new(client::Config::default(), transport).spawn())
}

fn ctx() -> context::Context {
    let mut ctx = context::current();
    ctx.deadline = Instant::now() + Duration::from_secs(120);
    ctx
}

async fn round_trips(client: &BenchServiceClient, n: usize) -> Result<Vec<Duration>, Error> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let reply = client.echo(ctx(), payload()).await?;
        samples.push(start.elapsed());
        assert_eq!(reply.len(), PAYLOAD);
    }
    Ok(samples)
}

async fn latency_run(client: &BenchServiceClient, sizes: &Sizes) -> Result<Vec<Duration>, Error> {
    round_trips(client, sizes.warmup).await?;
    round_trips(client, sizes.latency).await
}

/// Runs one workload against a server.
pub(crate) async fn client(opts: ClientOpts) -> Result<(), Error> {
    let sizes = opts.sizes.clone();
    match opts.workload.as_str() {
        "W1" => {
            let client = connect(&opts).await?;
            let samples = latency_run(&client, &sizes).await?;
            latency(&opts, samples, true);
        }
        "W2" => {
            let client = connect(&opts).await?;
            let start = Instant::now();
            let mut replies = futures::stream::iter(0..sizes.pipelined)
                .map(|_| client.echo(ctx(), payload()))
                .buffer_unordered(PIPELINE);
            while let Some(reply) = replies.next().await {
                assert_eq!(reply?.len(), PAYLOAD);
            }
            rate(&opts, "req_per_s", sizes.pipelined, start.elapsed());
        }
        "W3" => {
            let client = connect(&opts).await?;
            let start = Instant::now();
            let mut acks = futures::stream::iter(0..sizes.one_way)
                .map(|_| client.push(ctx(), payload()))
                .buffer_unordered(256);
            while let Some(ack) = acks.next().await {
                ack?;
            }
            while client.count(ctx()).await? < sizes.one_way as u64 {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            rate(&opts, "msg_per_s", sizes.one_way, start.elapsed());
        }
        "W5" => {
            let mut clients = Vec::new();
            for _ in 0..FAN_IN {
                clients.push(connect(&opts).await?);
            }
            let calls = clients.iter().map(|c| round_trips(c, sizes.fan_in_asks));
            concurrent_asks(&opts, calls, FAN_IN * sizes.fan_in_asks).await?;
        }
        "W6" => {
            let client = connect(&opts).await?;
            let bulk = connect(&opts).await?;
            let meter = Arc::new(BulkMeter::default());
            let load_meter = meter.clone();
            let load = tokio::spawn(async move {
                while let Ok(block) = bulk.block(ctx()).await {
                    // The whole block arrives at once: the meter sees blocks, not pieces.
                    load_meter.add(block.len() as u64);
                }
            });
            round_trips(&client, sizes.warmup).await?;
            let from = Instant::now();
            let samples = round_trips(&client, sizes.latency).await;
            let to = Instant::now();
            load.abort();
            latency(&opts, samples?, false);
            meter.report(&opts, from, to);
        }
        "W8" => {
            check_nofile(sizes.many_connections)?;
            let start = Instant::now();
            let mut clients = Vec::with_capacity(sizes.many_connections);
            for _ in 0..sizes.many_connections {
                clients.push(connect(&opts).await?);
            }
            result(&opts, "connect_s", start.elapsed().as_secs_f64());
            let calls = clients.iter().map(|c| round_trips(c, sizes.many_asks));
            concurrent_asks(&opts, calls, sizes.many_connections * sizes.many_asks).await?;
            peak_rss(&opts);
        }
        other => return Err(format!("tarpc does not run {other}").into()),
    }
    Ok(())
}
