//! The raw-TCP floor: a minimal tokio length-prefixed echo (W1, W2, W3, W5, W6, W8) and one
//! `write_all` of the preallocated block (W4, W6) or `sendfile` of the file (W7), TCP_NODELAY
//! on.
//!
//! Frames are `[u32 length][kind byte][payload]`: kind 0 is echoed, kind 1 is counted, kind 2
//! is answered with the count (8 bytes). The server reads into one reused buffer and handles
//! every whole frame in it in place, answering them with one write. On the data port each
//! request byte (`B` block, `F` file) is answered with `[u64 length][bytes]`; the client reads
//! into one reused buffer of [`Floor::read`] bytes.
//!
//! [`Floor`] holds the variants that were measured for the bulk floor, chosen by environment
//! variables (read by both processes, so `rpc-bench all` passes them on): the defaults are the
//! fastest on the 2-core machine (bench/README.md).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The bulk floor's variants.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Floor {
    /// The client's read size on the data plane (`RPC_BENCH_RAW_READ`, bytes).
    read: usize,
    /// SO_SNDBUF and SO_RCVBUF of the data sockets, set before `listen` / `connect`
    /// (`RPC_BENCH_RAW_SOCKBUF`, bytes; 0 leaves the kernel's autotuning).
    sockbuf: u32,
    /// How the server sends W7's file (`RPC_BENCH_RAW_FILE`).
    file: FileSend,
}

/// How the raw server sends the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileSend {
    /// `sendfile(2)` from the file to the socket (`sendfile`).
    Sendfile,
    /// `splice(2)` from the file into a pipe and from the pipe to the socket (`splice`).
    Splice,
    /// Reads of 1 MiB into a reused buffer, each written with `write_all` (`read`).
    Read,
}

impl Floor {
    /// The variant the environment names, the defaults otherwise.
    pub(crate) fn from_env() -> Result<Self, Error> {
        let number = |name: &str, default: u64| -> Result<u64, Error> {
            match std::env::var(name) {
                Ok(v) => v.parse().map_err(|e| format!("{name}={v}: {e}").into()),
                Err(_) => Ok(default),
            }
        };
        let file = match std::env::var("RPC_BENCH_RAW_FILE").as_deref() {
            Err(_) | Ok("sendfile") => FileSend::Sendfile,
            Ok("splice") => FileSend::Splice,
            Ok("read") => FileSend::Read,
            Ok(other) => {
                return Err(format!("RPC_BENCH_RAW_FILE={other} (sendfile, splice or read)").into())
            }
        };
        Ok(Self {
            read: number("RPC_BENCH_RAW_READ", 1 << 20)?.max(1) as usize,
            sockbuf: number("RPC_BENCH_RAW_SOCKBUF", 0)? as u32,
            file,
        })
    }

    fn socket(&self) -> Result<tokio::net::TcpSocket, Error> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        if self.sockbuf > 0 {
            socket.set_send_buffer_size(self.sockbuf)?;
            socket.set_recv_buffer_size(self.sockbuf)?;
        }
        Ok(socket)
    }
}

const ECHO: u8 = 0;
const ONE_WAY: u8 = 1;
const COUNT: u8 = 2;

/// Runs the server until the process is killed.
pub(crate) async fn server(opts: ServerOpts) -> Result<(), Error> {
    let floor = Floor::from_env()?;
    let control = TcpListener::bind(("127.0.0.1", opts.port)).await?;
    let data = floor.socket()?;
    data.set_reuseaddr(true)?;
    data.bind(([127, 0, 0, 1], opts.port + 1).into())?;
    let data = data.listen(1024)?;
    let count = Arc::new(AtomicU64::new(0));
    let block = block(opts.block);
    let file = opts.file;
    crate::ready();
    tokio::spawn(async move {
        while let Ok((stream, _)) = data.accept().await {
            let (block, file) = (block.clone(), file.clone());
            tokio::spawn(async move {
                let _ = serve_data(stream, block, file, floor).await;
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

async fn serve_control(mut stream: TcpStream, count: Arc<AtomicU64>) -> Result<(), Error> {
    stream.set_nodelay(true)?;
    // One reused input buffer; every whole frame in it is handled in place and the replies
    // to all of them go out in one write.
    let mut buf = vec![0u8; 64 << 10];
    let mut have = 0;
    let mut out = Vec::with_capacity(64 << 10);
    loop {
        let n = stream.read(&mut buf[have..]).await?;
        if n == 0 {
            return Ok(());
        }
        have += n;
        let mut at = 0;
        while have - at >= 4 {
            let len = u32::from_be_bytes(buf[at..at + 4].try_into()?) as usize;
            if len > 1 << 20 {
                return Err("frame too long".into());
            }
            if have - at - 4 < len {
                break;
            }
            let body = &buf[at + 4..at + 4 + len];
            match body.first() {
                Some(&ECHO) => out.extend_from_slice(&buf[at..at + 4 + len]),
                Some(&ONE_WAY) => {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Some(&COUNT) => {
                    out.extend_from_slice(&9u32.to_be_bytes());
                    out.push(COUNT);
                    out.extend_from_slice(&count.load(Ordering::Relaxed).to_le_bytes());
                }
                _ => return Err("bad frame".into()),
            }
            at += 4 + len;
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        buf.copy_within(at..have, 0);
        have -= at;
        if have == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

async fn serve_data(
    mut stream: TcpStream,
    block: Bytes,
    file: Option<PathBuf>,
    floor: Floor,
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
                let f = std::fs::File::open(path)?;
                let len = f.metadata()?.len();
                stream.write_u64(len).await?;
                match floor.file {
                    FileSend::Sendfile => send_file(&stream, &f, len).await?,
                    FileSend::Splice => splice_file(&stream, &f, len).await?,
                    FileSend::Read => {
                        let mut f = tokio::fs::File::from_std(f);
                        let mut buf = vec![0u8; 1 << 20];
                        loop {
                            let n = f.read(&mut buf).await?;
                            if n == 0 {
                                break;
                            }
                            stream.write_all(&buf[..n]).await?;
                        }
                    }
                }
            }
            _ => return Err("bad request".into()),
        }
    }
}

/// `sendfile(2)` of `len` bytes of `file` to the (non-blocking) socket, waiting for it to
/// be writable whenever it is full.
async fn send_file(stream: &TcpStream, file: &std::fs::File, len: u64) -> Result<(), Error> {
    let mut offset = 0u64;
    while offset < len {
        let left = (len - offset).min(1 << 30) as usize;
        let n = stream
            .async_io(tokio::io::Interest::WRITABLE, || {
                rustix::fs::sendfile(stream, file, Some(&mut offset), left).map_err(Into::into)
            })
            .await?;
        if n == 0 {
            return Err("the file ended early".into());
        }
    }
    Ok(())
}

/// `splice(2)` of `len` bytes of `file` into a pipe and from the pipe to the socket.
async fn splice_file(stream: &TcpStream, file: &std::fs::File, len: u64) -> Result<(), Error> {
    use rustix::pipe::{splice, SpliceFlags};
    let (pipe_r, pipe_w) = rustix::pipe::pipe()?;
    let size = rustix::pipe::fcntl_setpipe_size(&pipe_w, 1 << 20).unwrap_or(64 << 10);
    let mut offset = 0u64;
    while offset < len {
        let want = (len - offset).min(size as u64) as usize;
        let mut filled = splice(
            file,
            Some(&mut offset),
            &pipe_w,
            None,
            want,
            SpliceFlags::MORE,
        )?;
        if filled == 0 {
            return Err("the file ended early".into());
        }
        while filled > 0 {
            let n = stream
                .async_io(tokio::io::Interest::WRITABLE, || {
                    splice(
                        &pipe_r,
                        None,
                        stream,
                        None,
                        filled,
                        SpliceFlags::NONBLOCK | SpliceFlags::MORE,
                    )
                    .map_err(Into::into)
                })
                .await?;
            filled -= n;
        }
    }
    Ok(())
}

async fn connect(addr: std::net::SocketAddr) -> Result<TcpStream, Error> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A data-plane connection, with the floor's socket buffers.
async fn connect_data(opts: &ClientOpts, floor: &Floor) -> Result<TcpStream, Error> {
    let stream = floor.socket()?.connect(opts.data()).await?;
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

/// Sequential echoes; each reply is read with as few reads as it arrives in (usually one).
async fn round_trips(stream: &mut TcpStream, n: usize) -> Result<Vec<Duration>, Error> {
    let request = frame(ECHO);
    let mut buf = [0u8; 4 + 1 + PAYLOAD];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        stream.write_all(&request).await?;
        stream.read_exact(&mut buf).await?;
        samples.push(start.elapsed());
        assert_eq!(buf[..4], request[..4]);
    }
    Ok(samples)
}

async fn latency_run(stream: &mut TcpStream, sizes: &Sizes) -> Result<Vec<Duration>, Error> {
    round_trips(stream, sizes.warmup).await?;
    round_trips(stream, sizes.latency).await
}

/// Fetches one block or file (`what`), discarding it into `buf` (and logging each read with
/// `meter`); returns its length.
async fn fetch(
    stream: &mut TcpStream,
    what: u8,
    buf: &mut [u8],
    meter: Option<&BulkMeter>,
) -> Result<u64, Error> {
    stream.write_u8(what).await?;
    let len = stream.read_u64().await?;
    let mut left = len;
    while left > 0 {
        let k = (left as usize).min(buf.len());
        let n = stream.read(&mut buf[..k]).await?;
        if n == 0 {
            return Err("eof in a block".into());
        }
        if let Some(meter) = meter {
            meter.add(n as u64);
        }
        left -= n as u64;
    }
    Ok(len)
}

/// Runs one workload against a server.
pub(crate) async fn client(opts: ClientOpts) -> Result<(), Error> {
    let sizes = opts.sizes.clone();
    let floor = Floor::from_env()?;
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
            let mut stream = connect_data(&opts, &floor).await?;
            let mut buf = vec![0u8; floor.read];
            let mut times = Vec::new();
            for _ in 0..W4_REPS {
                let start = Instant::now();
                let n = fetch(&mut stream, b'B', &mut buf, None).await?;
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
            let clients = streams
                .iter_mut()
                .map(|s| round_trips(s, sizes.fan_in_asks));
            concurrent_asks(&opts, clients, FAN_IN * sizes.fan_in_asks).await?;
        }
        "W6" => {
            let mut stream = connect(opts.control()).await?;
            let mut data = connect_data(&opts, &floor).await?;
            let meter = Arc::new(BulkMeter::default());
            let load_meter = meter.clone();
            let load = tokio::spawn(async move {
                let mut buf = vec![0u8; floor.read];
                while fetch(&mut data, b'B', &mut buf, Some(&load_meter))
                    .await
                    .is_ok()
                {}
            });
            round_trips(&mut stream, sizes.warmup).await?;
            let from = Instant::now();
            let samples = round_trips(&mut stream, sizes.latency).await;
            let to = Instant::now();
            load.abort();
            latency(&opts, samples?, false);
            meter.report(&opts, from, to);
        }
        "W7" => {
            let mut stream = connect_data(&opts, &floor).await?;
            let mut buf = vec![0u8; floor.read];
            let timer = FileTimer::start(&opts);
            let n = fetch(&mut stream, b'F', &mut buf, None).await?;
            assert_eq!(n, sizes.file);
            timer.finish(&opts, n);
        }
        "W8" => {
            check_nofile(sizes.many_connections)?;
            let start = Instant::now();
            let mut streams = Vec::with_capacity(sizes.many_connections);
            for _ in 0..sizes.many_connections {
                streams.push(connect(opts.control()).await?);
            }
            result(&opts, "connect_s", start.elapsed().as_secs_f64());
            let clients = streams.iter_mut().map(|s| round_trips(s, sizes.many_asks));
            concurrent_asks(&opts, clients, sizes.many_connections * sizes.many_asks).await?;
            peak_rss(&opts);
        }
        other => return Err(format!("unknown workload {other}").into()),
    }
    Ok(())
}
