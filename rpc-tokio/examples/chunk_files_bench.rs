//! A/B measurement of file-backed chunk serving: a server (a child process, one tokio worker)
//! serves one file as chunks of a given size (`ManagedBuffer::File` segments, as a shuffle
//! service serves shuffle files), a client in this process fetches every chunk with a
//! number of fetches in flight, and the server reports the CPU time it spent.
//!
//! ```text
//! cargo run --release -p rpc-tokio --example chunk_files_bench -- \
//!     [--file /tmp/chunk-bench-1g] [--size-mib 1024] [--chunk-kib 256,1024] \
//!     [--rounds 3] [--depth 8] [--aes-gcm] [--verify]
//! ```
//!
//! The file is created (pseudo-random bytes) if missing and read once so it is in the page
//! cache. Server CPU is the sum over the server process's threads of their on-CPU time
//! (`/proc/self/task/*/schedstat`), and user/system time from `/proc/self/stat`, read
//! before and after each round through an RPC. Linux only.
#![allow(clippy::print_stdout)]

use std::collections::VecDeque;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rpc_tokio::{
    AuthMechanism, BoxError, FileSegment, ManagedBuffer, NoopRpcHandler, RpcHandler, RpcResponder,
    Security, StreamChunkId, StreamManager, TransportClient, TransportClientFactory,
    TransportConfig, TransportServer,
};

const GIB: f64 = (1u64 << 30) as f64;

/// Serves chunk `i` of stream `k` as bytes `i * k KiB..` of the file (at most `k` KiB).
struct Chunks {
    path: PathBuf,
    size: u64,
}

impl RpcHandler for Chunks {
    fn receive(&self, _: &TransportClient, _: Bytes, responder: RpcResponder) {
        let _ = responder.reply(cpu().into());
    }

    fn stream_manager(&self) -> Option<&dyn StreamManager> {
        Some(self)
    }
}

impl StreamManager for Chunks {
    fn chunk(&self, _: &TransportClient, chunk: StreamChunkId) -> Result<Bytes, BoxError> {
        Err(format!("no chunk {chunk}").into())
    }

    fn chunk_buffer(
        &self,
        _: &TransportClient,
        chunk: StreamChunkId,
    ) -> Result<ManagedBuffer, BoxError> {
        let len = chunk.stream_id * 1024;
        let offset = u64::from(chunk.chunk_index) * len;
        if offset >= self.size {
            return Err(format!("no chunk {chunk}").into());
        }
        // Opened per chunk, as Spark's FileSegmentManagedBuffer does.
        let segment = FileSegment::open_range(&self.path, offset, len.min(self.size - offset))?;
        Ok(ManagedBuffer::File(segment))
    }
}

/// "on-cpu-ns user-ticks system-ticks" of this process.
fn cpu() -> String {
    let mut on_cpu = 0u64;
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten() {
        let Ok(task) = task else { continue };
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
            on_cpu += stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which ends with the last ')'): utime is the 12th
    // of them, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime) = (
        fields.get(11).copied().unwrap_or("0"),
        fields.get(12).copied().unwrap_or("0"),
    );
    format!("{on_cpu} {utime} {stime}")
}

fn security() -> Security {
    Security::secret("bench-secret").with_mechanism(AuthMechanism::aes_gcm())
}

fn config(aes: bool) -> TransportConfig {
    let mut config = TransportConfig::builder();
    if aes {
        config = config.with_security(security());
    }
    config.build().expect("a valid config")
}

fn serve(path: PathBuf, aes: bool) -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let size = std::fs::metadata(&path)?.len();
        let server = TransportServer::bind(
            rpc_tokio::runtime(),
            "127.0.0.1:0".parse()?,
            Arc::new(Chunks { path, size }),
            config(aes),
        )?;
        println!("{}", server.local_addr());
        std::io::stdout().flush()?;
        // Until the parent closes our stdin.
        tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await??;
        server.close();
        Ok(())
    })
}

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn make_file(path: &Path, size: u64) -> std::io::Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == size) {
        return Ok(());
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()
}

fn parse_cpu(reply: &[u8]) -> (f64, f64, f64) {
    let text = String::from_utf8_lossy(reply);
    let v: Vec<f64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap_or(0.0))
        .collect();
    // Clock ticks are 100 per second on Linux.
    (v[0] / 1e9, v[1] / 100.0, v[2] / 100.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let aes = args.iter().any(|a| a == "--aes-gcm");
    if args.get(1).map(String::as_str) == Some("serve") {
        return serve(PathBuf::from(&args[2]), aes);
    }
    let file = PathBuf::from(arg(&args, "--file").unwrap_or("/tmp/chunk-bench-1g"));
    let size_mib: u64 = arg(&args, "--size-mib").unwrap_or("1024").parse()?;
    let chunk_kibs: Vec<u64> = arg(&args, "--chunk-kib")
        .unwrap_or("256,1024")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let rounds: usize = arg(&args, "--rounds").unwrap_or("3").parse()?;
    let depth: usize = arg(&args, "--depth").unwrap_or("8").parse()?;
    let verify = args.iter().any(|a| a == "--verify");
    let size = size_mib << 20;
    make_file(&file, size)?;
    // Into the page cache.
    let contents = std::fs::read(&file)?;

    let mut child = Command::new(std::env::current_exe()?)
        .arg("serve")
        .arg(&file)
        .args(aes.then_some("--aes-gcm"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    let addr: std::net::SocketAddr = line.trim().parse()?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let factory = TransportClientFactory::new(
            rpc_tokio::runtime(),
            Arc::new(NoopRpcHandler),
            config(aes),
        );
        let client = factory.create_client(addr).await?;
        println!(
            "file {} ({size_mib} MiB), {} , {depth} fetches in flight, {rounds} rounds",
            file.display(),
            if aes { "AES-GCM" } else { "plain TCP" }
        );
        println!("chunk_kib  round  secs   GiB/s  server_cpu_s/GiB (on-cpu; user+sys)");
        for &kib in &chunk_kibs {
            let chunk = kib * 1024;
            let count = size.div_ceil(chunk) as u32;
            for round in 0..rounds {
                let before = parse_cpu(&client.send_rpc(Bytes::new(), None).await?);
                let started = Instant::now();
                let mut calls = VecDeque::new();
                let mut next = 0u32;
                let mut received = 0u64;
                while received < size {
                    while next < count && calls.len() < depth {
                        calls.push_back((
                            next,
                            client.fetch_chunk(StreamChunkId::new(kib, next), None),
                        ));
                        next += 1;
                    }
                    let (index, call) = calls.pop_front().expect("a call in flight");
                    let bytes = call.await?;
                    let at = u64::from(index) * chunk;
                    let expected = &contents[at as usize..(at + chunk).min(size) as usize];
                    assert_eq!(bytes.len(), expected.len(), "chunk {index}");
                    if verify {
                        assert!(bytes[..] == expected[..], "chunk {index}");
                    } else {
                        assert_eq!(bytes[..8], expected[..8], "chunk {index}");
                        assert_eq!(bytes[bytes.len() - 8..], expected[expected.len() - 8..]);
                    }
                    received += bytes.len() as u64;
                }
                let secs = started.elapsed().as_secs_f64();
                let after = parse_cpu(&client.send_rpc(Bytes::new(), None).await?);
                let gib = size as f64 / GIB;
                println!(
                    "{kib:>9}  {round:>5}  {secs:5.2}  {:5.2}  {:6.3}; {:6.3}",
                    gib / secs,
                    (after.0 - before.0) / gib,
                    (after.1 + after.2 - before.1 - before.2) / gib,
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        factory.close();
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    drop(child.stdin.take());
    child.wait()?;
    Ok(())
}
