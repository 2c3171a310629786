//! What the service tests share: sort-shuffle files written as Spark writes them, a plain
//! transport client, and BTM helpers.
#![allow(dead_code, unreachable_pub)]

pub mod spark;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rpc_shuffle::protocol::{
    executor_file_path, shuffle_data_file, shuffle_index_file, BlockTransferMessage,
    ExecutorShuffleInfo, RegisterExecutor, StreamHandle,
};
use rpc_tokio::{
    NoopRpcHandler, RequestError, Security, StreamChunkId, TransportClient, TransportClientFactory,
    TransportConfig,
};

/// Every wait is bounded by this: it only catches hangs.
pub const WAIT: Duration = Duration::from_secs(20);

/// A service root with one executor's local dirs under it.
pub struct Disk {
    pub root: tempfile::TempDir,
    pub dirs: Vec<String>,
    pub sub_dirs: i32,
}

impl Disk {
    pub fn new(executor_dirs: usize) -> Self {
        let root = tempfile::tempdir().unwrap();
        let dirs = (0..executor_dirs)
            .map(|i| {
                let dir = root.path().join(format!("blockmgr-{i}"));
                fs::create_dir(&dir).unwrap();
                dir.display().to_string()
            })
            .collect();
        Self {
            root,
            dirs,
            sub_dirs: 8,
        }
    }

    pub fn info(&self) -> ExecutorShuffleInfo {
        ExecutorShuffleInfo {
            local_dirs: self.dirs.clone(),
            sub_dirs_per_local_dir: self.sub_dirs,
            shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        executor_file_path(&self.dirs, self.sub_dirs, name).unwrap()
    }

    /// Writes map `map_id`'s output of `blocks` (one per reduce partition), as Spark's
    /// `IndexShuffleBlockResolver` does: the data file and its offsets.
    pub fn write_map_output(&self, shuffle_id: i32, map_id: i64, blocks: &[Vec<u8>]) {
        let data = self.path(&shuffle_data_file(shuffle_id, map_id));
        let index = self.path(&shuffle_index_file(shuffle_id, map_id));
        let mut offsets = vec![0i64];
        let mut bytes = Vec::new();
        for block in blocks {
            bytes.extend_from_slice(block);
            offsets.push(bytes.len() as i64);
        }
        write(&data, &bytes);
        write(
            &index,
            &offsets
                .iter()
                .flat_map(|o| o.to_be_bytes())
                .collect::<Vec<_>>(),
        );
    }
}

pub fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

/// The bytes of block (map, reduce): distinct for every block, some empty.
pub fn block(map_id: i64, reduce_id: i32) -> Vec<u8> {
    if (map_id + i64::from(reduce_id)) % 3 == 0 {
        return Vec::new();
    }
    let len = 100 + (map_id as usize * 7919 + reduce_id as usize * 104_729) % 5000;
    (0..len)
        .map(|i| (i as u64 * 31 + map_id as u64 * 7 + reduce_id as u64) as u8)
        .collect()
}

pub fn register(app_id: &str, exec_id: &str, info: ExecutorShuffleInfo) -> BlockTransferMessage {
    BlockTransferMessage::RegisterExecutor(RegisterExecutor {
        app_id: app_id.into(),
        exec_id: exec_id.into(),
        executor_info: info,
    })
}

pub async fn connect(addr: SocketAddr, security: Security) -> TransportClient {
    let factory = TransportClientFactory::new(
        rpc_tokio::runtime(),
        Arc::new(NoopRpcHandler),
        TransportConfig::builder()
            .with_connect_timeout(WAIT)
            .with_security(security)
            .build()
            .unwrap(),
    );
    factory.create_client(addr).await.unwrap()
}

pub async fn rpc(
    client: &TransportClient,
    message: &BlockTransferMessage,
) -> Result<Bytes, String> {
    match client.send_rpc(message.encode(), Some(WAIT)).await {
        Ok(reply) => Ok(reply),
        Err(RequestError::Remote(text)) => Err(text.to_string()),
        Err(other) => panic!("not an RpcFailure: {other}"),
    }
}

/// Sends a request that must be refused; returns the failure's text.
pub async fn refused(client: &TransportClient, message: &BlockTransferMessage) -> String {
    match rpc(client, message).await {
        Err(text) => text,
        Ok(reply) => panic!("{} was answered: {reply:?}", message.name()),
    }
}

pub fn stream_handle(reply: &[u8]) -> StreamHandle {
    match BlockTransferMessage::decode(reply).unwrap() {
        BlockTransferMessage::StreamHandle(h) => h,
        other => panic!("not a stream handle: {other:?}"),
    }
}

pub async fn chunk(client: &TransportClient, stream_id: u64, index: u32) -> Result<Bytes, String> {
    match client
        .fetch_chunk(
            StreamChunkId {
                stream_id,
                chunk_index: index,
            },
            Some(WAIT),
        )
        .await
    {
        Ok(bytes) => Ok(bytes),
        Err(RequestError::Remote(text)) => Err(text.to_string()),
        Err(other) => panic!("not a chunk failure: {other}"),
    }
}

/// Opens a stream with `message` and reads every chunk, in order.
pub async fn fetch_all(client: &TransportClient, message: &BlockTransferMessage) -> Vec<Bytes> {
    let handle = stream_handle(&rpc(client, message).await.unwrap());
    let mut chunks = Vec::new();
    for i in 0..handle.num_chunks {
        chunks.push(chunk(client, handle.stream_id, i).await.unwrap());
    }
    chunks
}
