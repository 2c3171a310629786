//! Serving and fetching blocks: a block server serves the files of a directory (read into
//! memory first), and a retrying fetcher fetches them over chunk streams.
//!
//! Run with `cargo run -p rpc-tokio --example fetch_blocks`.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rpc_tokio::{
    BlockFetchConfig, BlockServer, NoopRpcHandler, RetryingBlockFetcher, TransportClientFactory,
    TransportConfig, TransportServer,
};

/// Reads every file of `dir` into memory, by name: a block server must not block on I/O.
fn read_blocks(dir: &Path) -> std::io::Result<HashMap<String, Bytes>> {
    let mut blocks = HashMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        blocks.insert(name, Bytes::from(std::fs::read(entry.path())?));
    }
    Ok(blocks)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Some blocks on disk, of various sizes, one of them empty.
    let dir = std::env::temp_dir().join(format!("fetch-blocks-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for (i, size) in [0usize, 10, 4096, 1 << 20].into_iter().enumerate() {
        let bytes: Vec<u8> = (0..size).map(|b| (b % 251) as u8).collect();
        std::fs::write(dir.join(format!("rdd_0_{i}")), bytes)?;
    }

    // The server: blocks of app-1's executor 1, from the files.
    let blocks = read_blocks(&dir)?;
    let source = move |app: &str, exec: &str, block: &str| {
        if (app, exec) != ("app-1", "1") {
            return Err(format!("no blocks of app {app}, executor {exec}"));
        }
        blocks
            .get(block)
            .cloned()
            .ok_or_else(|| format!("no such block {block}"))
    };
    // The server starts a moment after the client's first attempt, which is refused: the
    // fetcher retries after `retry_wait`.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let handler = Arc::new(BlockServer::new(source));
    let shown = dir.display().to_string();
    let starting = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let server = TransportServer::bind(
            rpc_tokio::runtime(),
            addr,
            handler,
            TransportConfig::default(),
        )?;
        println!("[server] serving {shown} at {addr}");
        Ok::<_, std::io::Error>(server)
    });

    // The client: fetch every block, two chunks in flight, retrying I/O failures.
    let factory = TransportClientFactory::new(
        rpc_tokio::runtime(),
        Arc::new(NoopRpcHandler),
        TransportConfig::default(),
    );
    let config = BlockFetchConfig::builder()
        .with_max_chunks_in_flight(2)
        .with_max_retries(3)
        .with_retry_wait(Duration::from_millis(200))
        .build()?;
    let ids: Vec<String> = (0..4).map(|i| format!("rdd_0_{i}")).collect();
    let mut fetch = RetryingBlockFetcher::one_for_one(
        rpc_tokio::runtime(),
        &factory,
        addr,
        "app-1",
        "1",
        ids,
        &config,
    );
    while let Some((block_id, result)) = fetch.next_block().await {
        match result {
            Ok(bytes) => println!("[client] {block_id}: {} bytes", bytes.len()),
            Err(error) => println!("[client] {block_id} failed: {error}"),
        }
    }
    println!(
        "[client] done after {} retries (the first connect was refused)",
        fetch.retries()
    );
    let server = starting.await??;

    // A block the server does not have fails the open, and so every block of the request;
    // the server's refusal is final, not retried.
    let ids = vec!["rdd_0_1".to_owned(), "rdd_9_9".to_owned()];
    let mut fetch = RetryingBlockFetcher::one_for_one(
        rpc_tokio::runtime(),
        &factory,
        addr,
        "app-1",
        "1",
        ids,
        &config,
    );
    while let Some((block_id, result)) = fetch.next_block().await {
        match result {
            Ok(bytes) => println!("[client] {block_id}: {} bytes", bytes.len()),
            Err(error) => println!(
                "[client] {block_id} failed after {} retries: {error}",
                fetch.retries()
            ),
        }
    }

    factory.close();
    server.close();
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
