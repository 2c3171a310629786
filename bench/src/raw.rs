//! The raw-TCP floor: a minimal tokio length-prefixed echo (W1, W2, W3, W5, W6) and a plain
//! `write_all` of the block or file (W4, W6, W7), TCP_NODELAY on.
//!
//! Frames are `[u32 length][kind byte][payload]`: kind 0 is echoed, kind 1 is counted, kind 2
//! is answered with the count (8 bytes). On the data port each request byte (`B` block, `F`
//! file) is answered with `[u64 length][bytes]`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

type Error = Box<dyn std::error::Error + Send + Sync>;

const ECHO: u8 = 0;
const ONE_WAY: u8 = 1;
const COUNT: u8 = 2;

/// Runs the server until the process is killed.
pub(crate) async fn server(opts: ServerOpts) -> Result<(), Error> {
    let control = TcpListener::bind(("127.0.0.1", opts.port)).await?;
    let data = TcpListener::bind(("127.0.0.1", opts.port + 1)).await?;
    let count = Arc::new(AtomicU64::new(0));
    let block = block(opts.block);
    let file = opts.file;
    crate::ready();
    tokio::spawn(async move {
        while let Ok((stream, _)) = data.accept().await {
            let (block, file) = (block.clone(), file.clone());
            tokio::spawn(async move {
                let _ = serve_data(stream, block, file).await;
            });
        }
    });
    while let Ok((stream, _)) = control.accept().await {
        let count = count.clone();
        tokio::spawn(async move {
            let _ = serve_control(stream, count).await;
        });
    }
    Ok(())
}

async fn serve_control(stream: TcpStream, count: Arc<AtomicU64>) -> Result<(), Error> {
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let mut r = BufReader::with_capacity(64 << 10, r);
    let mut w = BufWriter::with_capacity(64 << 10, w);
    let mut body = Vec::new();
    loop {
        let len = r.read_u32().await? as usize;
        body.resize(len, 0);
        r.read_exact(&mut body).await?;
        match body.first() {
            Some(&ECHO) => {
                w.write_u32(len as u32).await?;
                w.write_all(&body).await?;
            }
            Some(&ONE_WAY) => {
                count.fetch_add(1, Ordering::Relaxed);
            }
            Some(&COUNT) => {
                w.write_u32(9).await?;
                w.write_u8(COUNT).await?;
                w.write_u64_le(count.load(Ordering::Relaxed)).await?;
            }
            _ => return Err("bad frame".into()),
        }
        // Flush once nothing more is waiting to be read: pipelined requests share writes.
        if r.buffer().is_empty() {
            w.flush().await?;
        }
    }
}

async fn serve_data(
    mut stream: TcpStream,
    block: Bytes,
    file: Option<PathBuf>,
) -> Result<(), Error> {
    stream.set_nodelay(true)?;
    loop {
        match stream.read_u8().await? {
            b'B' => {
                stream.write_u64(block.len() as u64).await?;
                stream.write_all(&block).await?;
            }
            b'F' => {
                let path = file.as_ref().ok_or("no file")?;
                let mut f = tokio::fs::File::open(path).await?;
                stream.write_u64(f.metadata().await?.len()).await?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    stream.write_all(&buf[..n]).await?;
                }
            }
            _ => return Err("bad request".into()),
        }
    }
}

async fn connect(addr: std::net::SocketAddr) -> Result<TcpStream, Error> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn frame(kind: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(4 + 1 + PAYLOAD);
    f.extend_from_slice(&((1 + PAYLOAD) as u32).to_be_bytes());
    f.push(kind);
    f.extend_from_slice(&[7; PAYLOAD]);
    f
}

async fn read_frame(
    stream: &mut (impl AsyncReadExt + Unpin),
    body: &mut Vec<u8>,
) -> Result<(), Error> {
    let len = stream.read_u32().await? as usize;
    body.resize(len, 0);
    stream.read_exact(body).await?;
    Ok(())
}

async fn round_trips(stream: &mut TcpStream, n: usize) -> Result<Vec<Duration>, Error> {
    let request = frame(ECHO);
    let mut body = Vec::new();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        stream.write_all(&request).await?;
        read_frame(stream, &mut body).await?;
        samples.push(start.elapsed());
        assert_eq!(body.len(), 1 + PAYLOAD);
    }
    Ok(samples)
}

async fn latency_run(stream: &mut TcpStream, sizes: &Sizes) -> Result<Vec<Duration>, Error> {
    round_trips(stream, sizes.warmup).await?;
    round_trips(stream, sizes.latency).await
}

/// Fetches one block or file (`what`), discarding it; returns its length.
async fn fetch(stream: &mut TcpStream, what: u8, buf: &mut [u8]) -> Result<u64, Error> {
    stream.write_u8(what).await?;
    let len = stream.read_u64().await?;
    let mut left = len;
    while left > 0 {
        let k = (left as usize).min(buf.len());
        let n = stream.read(&mut buf[..k]).await?;
        if n == 0 {
            return Err("eof in a block".into());
        }
        left -= n as u64;
    }
    Ok(len)
}

/// Runs one workload against a server.
pub(crate) async fn client(opts: ClientOpts) -> Result<(), Error> {
    let sizes = opts.sizes.clone();
    match opts.workload.as_str() {
        "W1" => {
            let mut stream = connect(opts.control()).await?;
            let samples = latency_run(&mut stream, &sizes).await?;
            latency(&opts, samples, true);
        }
        "W2" => {
            let stream = connect(opts.control()).await?;
            let (mut r, mut w) = stream.into_split();
            let request = frame(ECHO);
            let n = sizes.pipelined;
            let start = Instant::now();
            // The window: at most PIPELINE requests are sent and not yet answered.
            let window = Arc::new(tokio::sync::Semaphore::new(PIPELINE));
            let permits = window.clone();
            let writer = tokio::spawn(async move {
                let mut w = BufWriter::new(&mut w);
                for _ in 0..n {
                    let permit = match permits.try_acquire() {
                        Ok(p) => p,
                        Err(_) => {
                            w.flush().await?;
                            permits.acquire().await.map_err(std::io::Error::other)?
                        }
                    };
                    permit.forget();
                    w.write_all(&request).await?;
                }
                w.flush().await?;
                Ok::<_, std::io::Error>(())
            });
            let mut r = BufReader::new(&mut r);
            let mut body = Vec::new();
            for _ in 0..n {
                read_frame(&mut r, &mut body).await?;
                window.add_permits(1);
            }
            writer.await??;
            rate(&opts, "req_per_s", n, start.elapsed());
        }
        "W3" => {
            let mut stream = connect(opts.control()).await?;
            let start = Instant::now();
            {
                let mut w = BufWriter::with_capacity(64 << 10, &mut stream);
                let message = frame(ONE_WAY);
                for _ in 0..sizes.one_way {
                    w.write_all(&message).await?;
                }
                w.flush().await?;
            }
            let ask = {
                let mut f = Vec::new();
                f.extend_from_slice(&1u32.to_be_bytes());
                f.push(COUNT);
                f
            };
            let mut body = Vec::new();
            loop {
                stream.write_all(&ask).await?;
                read_frame(&mut stream, &mut body).await?;
                let count = u64::from_le_bytes(body[1..9].try_into()?);
                if count >= sizes.one_way as u64 {
                    break;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            rate(&opts, "msg_per_s", sizes.one_way, start.elapsed());
        }
        "W4" => {
            let mut stream = connect(opts.data()).await?;
            let mut buf = vec![0u8; 1 << 20];
            let mut times = Vec::new();
            for _ in 0..W4_REPS {
                let start = Instant::now();
                let n = fetch(&mut stream, b'B', &mut buf).await?;
                times.push(start.elapsed());
                assert_eq!(n, sizes.block as u64);
            }
            bulk(&opts, sizes.block as u64, &mut times);
        }
        "W5" => {
            let mut streams = Vec::new();
            for _ in 0..FAN_IN {
                streams.push(connect(opts.control()).await?);
            }
            let start = Instant::now();
            let results = futures::future::join_all(
                streams
                    .iter_mut()
                    .map(|s| round_trips(s, sizes.fan_in_asks)),
            )
            .await;
            let elapsed = start.elapsed();
            for r in results {
                r?;
            }
            rate(&opts, "asks_per_s", FAN_IN * sizes.fan_in_asks, elapsed);
        }
        "W6" => {
            let mut stream = connect(opts.control()).await?;
            let mut data = connect(opts.data()).await?;
            let load = tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    if fetch(&mut data, b'B', &mut buf).await.is_err() {
                        break;
                    }
                }
            });
            let samples = latency_run(&mut stream, &sizes).await;
            load.abort();
            latency(&opts, samples?, false);
        }
        "W7" => {
            let mut stream = connect(opts.data()).await?;
            let mut buf = vec![0u8; 1 << 20];
            let timer = FileTimer::start(&opts);
            let n = fetch(&mut stream, b'F', &mut buf).await?;
            assert_eq!(n, sizes.file);
            timer.finish(&opts, n);
        }
        other => return Err(format!("unknown workload {other}").into()),
    }
    Ok(())
}
