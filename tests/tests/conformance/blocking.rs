//! Blocking work (name resolution, file reads where `sendfile` is unsupported, file-backed
//! chunks) runs on the runtime's blocking pool: held there, it stalls no other connection,
//! holds no connection's lock, and IP literals never reach it.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use rpc::StreamChunkId;
use rpc::{
    AsyncListener, AsyncStream, AsyncTimer, BoxFuture, RpcAddress, RpcEnv, Runtime,
    TransportClientFactory, TransportServer,
};

use super::files::{contents, temp_file, FileStreams, Plain, PlainListener};
use super::transport::{localhost, Echo};
use super::util::*;

/// Where blocking work waits until the test opens it.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    opened: Condvar,
}

#[derive(Default)]
struct GateState {
    open: bool,
    /// Jobs that reached the gate.
    entered: usize,
    /// Jobs waiting at it now.
    waiting: usize,
}

impl Gate {
    fn pass(&self) {
        let mut state = self.state.lock().unwrap();
        state.entered += 1;
        state.waiting += 1;
        // Bounded only to turn a hung test into a failure: the test opens the gate.
        let (mut state, _) = self
            .opened
            .wait_timeout_while(state, LONG, |s| !s.open)
            .unwrap();
        state.waiting -= 1;
    }

    fn open(&self) {
        self.state.lock().unwrap().open = true;
        self.opened.notify_all();
    }

    fn entered(&self) -> usize {
        self.state.lock().unwrap().entered
    }

    fn waiting(&self) -> usize {
        self.state.lock().unwrap().waiting
    }
}

/// The adapter's runtime, whose blocking work waits at a [`Gate`]; with `plain`, its sockets
/// cannot `sendfile`, so file bodies are read and written.
struct Gated {
    inner: Arc<dyn Runtime>,
    gate: Arc<Gate>,
    plain: bool,
}

impl fmt::Debug for Gated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gated").field("inner", &self.inner).finish()
    }
}

impl Runtime for Gated {
    fn spawn(&self, future: BoxFuture<()>) {
        self.inner.spawn(future)
    }

    fn spawn_isolated(&self, future: BoxFuture<()>) {
        self.inner.spawn_isolated(future)
    }

    fn spawn_blocking(&self, f: Box<dyn FnOnce() + Send>) {
        let gate = self.gate.clone();
        self.inner.spawn_blocking(Box::new(move || {
            gate.pass();
            f()
        }))
    }

    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>> {
        self.inner.new_timer(deadline)
    }

    fn connect(&self, addr: SocketAddr) -> BoxFuture<io::Result<Box<dyn AsyncStream>>> {
        let connect = self.inner.connect(addr);
        let plain = self.plain;
        Box::pin(async move {
            let stream = connect.await?;
            Ok(if plain {
                Box::new(Plain(stream)) as Box<dyn AsyncStream>
            } else {
                stream
            })
        })
    }

    fn listen(&self, listener: std::net::TcpListener) -> io::Result<Box<dyn AsyncListener>> {
        let listener = self.inner.listen(listener)?;
        Ok(if self.plain {
            Box::new(PlainListener(listener))
        } else {
            listener
        })
    }
}

#[test]
fn file_reads_held_on_the_blocking_pool_stall_no_other_connection() {
    block_on(async {
        const CONNECTIONS: usize = 4;
        let n = 3 * 1024 * 1024 + 11;
        let path = temp_file(n);
        let gate = Arc::new(Gate::default());
        let server = TransportServer::bind(
            Arc::new(Gated {
                inner: rt(),
                gate: gate.clone(),
                plain: true,
            }),
            localhost(),
            Arc::new(FileStreams { path: path.clone() }),
            transport_config(),
        )
        .unwrap();
        let connect = || async {
            let factory = TransportClientFactory::new(
                rt(),
                Arc::new(Echo::default()),
                transport_config(),
            );
            let client = within("a connection", factory.create_client(server.local_addr()))
                .await
                .unwrap();
            (factory, client)
        };
        // Each connection asks for the whole file: the read of its first piece waits at the
        // gate (four reads: more than the two workers of the test's tokio runtime, so reads
        // on the workers themselves would leave none to serve the next connection).
        let mut streams = Vec::new();
        let mut held = Vec::new();
        for _ in 0..CONNECTIONS {
            let (factory, client) = connect().await;
            let stream = client.stream("whole", None);
            streams.push(spawn(stream.read_to_end()));
            held.push((factory, client));
        }
        eventually("every stream's first read to wait at the gate", || {
            gate.waiting() == CONNECTIONS
        })
        .await;
        // The reads hold no connection's lock: every served connection answers at once ...
        for served in server.connections() {
            let _ = served.buffered_bytes();
            assert!(served.is_active());
        }
        // ... and no worker: another connection to the same server is served, ...
        let (_factory, other) = connect().await;
        let answer = within("an rpc while reads wait", other.send_rpc("here".into(), None)).await;
        assert_eq!(answer.unwrap(), "here");
        // A file-backed chunk is read on the blocking pool too (its body is written from the
        // file behind its frame's head, as a stream body is): while its read waits, yet
        // another connection is served. What its own connection answers after it waits
        // behind it, in wire order (as Spark's file regions hold a channel's outbound queue).
        let chunk = spawn(other.fetch_chunk(StreamChunkId::new(1, 0), None));
        eventually("the chunk's read to wait at the gate", || {
            gate.waiting() == CONNECTIONS + 1
        })
        .await;
        let behind = spawn(other.send_rpc("too".into(), None));
        let (_factory, third) = connect().await;
        let answer = within(
            "an rpc while a chunk read waits",
            third.send_rpc("three".into(), None),
        )
        .await;
        assert_eq!(answer.unwrap(), "three");
        // One piece in flight per body, however long its read takes.
        assert_eq!(gate.entered(), CONNECTIONS + 1);
        gate.open();
        let all = contents(n);
        for stream in streams {
            let bytes = within("a stream", stream).await.unwrap();
            assert!(bytes[..] == all[..], "{} of {n} bytes, or other bytes", bytes.len());
        }
        let chunk = within("the chunk", chunk).await.unwrap();
        assert_eq!(&chunk[..], &all[10..110]);
        let answer = within("the rpc behind the chunk", behind).await;
        assert_eq!(answer.unwrap(), "too");
        // Every piece was read on the blocking pool: 13 pieces of 256 KiB per stream.
        assert_eq!(gate.entered(), CONNECTIONS * n.div_ceil(256 * 1024) + 1);
        assert_eq!(server.connections().pop().unwrap().zero_copy_bytes(), 0);
        server.close();
        let _ = std::fs::remove_file(path);
    })
}

#[test]
fn a_host_name_resolving_on_the_blocking_pool_stalls_no_other_ask() {
    block_on(async {
        let gate = Arc::new(Gate::default());
        let server = server_env("resolve-server");
        let rec = Recorder::default();
        server.setup_endpoint("probe", Probe::new(&rec)).unwrap();
        // Binding an IP literal touches no resolver, not even through the blocking pool.
        let gated: Arc<dyn Runtime> = Arc::new(Gated {
            inner: rt(),
            gate: gate.clone(),
            plain: false,
        });
        let client = RpcEnv::create(gated, server_config("resolve-client")).unwrap();
        assert_eq!(gate.entered(), 0);
        // A lookup by host name: its connect waits at the gate, resolving.
        let by_name = RpcAddress::new("localhost", addr(&server).port);
        let named = spawn({
            let client = client.clone();
            async move {
                client
                    .setup_endpoint_ref::<Cmd, String>(by_name, "probe")
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        });
        eventually("the host name's resolution to wait at the gate", || {
            gate.waiting() == 1
        })
        .await;
        // Meanwhile the same env reaches the same server by IP, past no gate.
        let probe = lookup(&client, &server, "probe").await;
        let answer = within("an ask by ip", probe.ask(Cmd::Quiet("by ip".into()))).await;
        assert_eq!(answer.unwrap(), "by ip");
        assert_eq!(gate.entered(), 1);
        gate.open();
        shutdown(&[&client, &server]).await;
        // Resolved (or not: `localhost` may be `::1`, where nothing listens), the lookup by
        // name ended: with an answer, a failed connect, or the env's stop.
        let _ = within("the lookup by name to end", named).await;
    })
}
