//! A hostile peer against a server in another process (`src/bin/rpc-hostile-server.rs`, on
//! the suite's adapter, with a low open-file limit): descriptors exhausted by held
//! connections, connections beyond the server's cap, floods of unsolicited replies and of
//! undecodable frames and envelopes. The server must keep serving a well-behaved client,
//! must not spin, must recover once the attacker leaves, and must count what the attacker
//! did rather than log it line by line.
//!
//! The attacker uses raw blocking sockets; every wait is bounded by [`WAIT`] only to catch
//! a hang. The one fixed window is the CPU sample, which measures, never synchronises.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rpc::{RequestId};
use rpc_proto::{Frame};

use super::util::*;
use super::wire::{encode, raw_connect, read_frames};

/// The server process, killed when dropped.
struct Hostile {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    transport: SocketAddr,
    env: SocketAddr,
}

impl Hostile {
    /// Starts the server with an open-file limit of `nofile` and at most `max_connections`
    /// per server, and waits until it listens.
    fn start(nofile: u64, max_connections: usize) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rpc-hostile-server"))
            .args([ADAPTER, &nofile.to_string(), &max_connections.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting rpc-hostile-server");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines.recv_timeout(WAIT).expect("the server's ports");
        let ports: Vec<u16> = first
            .strip_prefix("ports ")
            .map(|p| p.split(' ').map(|n| n.parse().unwrap()).collect())
            .unwrap_or_else(|| panic!("expected the ports, got {first:?}"));
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Self {
            child,
            stdin,
            lines,
            transport: at(ports[0]),
            env: at(ports[1]),
        }
    }

    /// The server's counters now.
    fn stats(&mut self) -> HashMap<String, u64> {
        writeln!(self.stdin, "stats").expect("asking for stats");
        let line = self.lines.recv_timeout(WAIT).expect("the stats line");
        line.strip_prefix("stats ")
            .unwrap_or_else(|| panic!("expected stats, got {line:?}"))
            .split(' ')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_owned(), v.parse().unwrap())
            })
            .collect()
    }

    /// Polls the counters until `f` holds of them, failing after [`WAIT`].
    fn wait_for(&mut self, what: &str, f: impl Fn(&HashMap<String, u64>) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let stats = self.stats();
            if f(&stats) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {stats:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The share of one core the server used over about a second.
    fn cpu_share(&self) -> f64 {
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let start = Instant::now();
        let before = cpu_ticks(self.child.id());
        std::thread::sleep(Duration::from_secs(1));
        let used = cpu_ticks(self.child.id()) - before;
        used as f64 / ticks / start.elapsed().as_secs_f64()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User plus system CPU time of process `pid`, in clock ticks (`/proc/<pid>/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// An RPC over a raw connection: the echo server answers with the body.
fn echo(peer: &mut TcpStream, id: u64, body: &'static [u8]) {
    let request = Frame::RpcRequest {
        request: RequestId(id),
        body: Bytes::from_static(body),
    };
    peer.write_all(&encode(&[request])).expect("sending an rpc");
    let reply = read_frames(peer, 1, 4096).remove(0);
    assert_eq!(
        reply,
        Frame::RpcResponse {
            request: RequestId(id),
            body: Bytes::from_static(body),
        }
    );
}

/// Whether the server closed `peer` (end of file or a reset), without blocking.
fn closed_by_server(peer: &mut TcpStream) -> bool {
    peer.set_nonblocking(true).unwrap();
    let mut byte = [0];
    let closed = match peer.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    };
    peer.set_nonblocking(false).unwrap();
    closed
}

/// Under a soft limit of 64 descriptors, connections held on both of the server's
/// listeners (its transport server's and its env's) leave it none: every accept fails with
/// `EMFILE`. Before accepts backed off, on async-io each failing accept loop kept an executor
/// thread forever, and with both threads taken no connection task ran again: the open
/// connection went unserved and the server never recovered.
#[test]
fn descriptors_exhausted_pause_accepts_without_spinning_and_the_server_recovers_when_they_free_up(
) {
    let mut server = Hostile::start(64, 512);
    let mut client = raw_connect(server.transport);
    echo(&mut client, 1, b"before");

    // More connections on each listener than the server may have descriptors, so both keep
    // some waiting whichever accepts first; the listen backlogs hold what is not accepted, so
    // connects never wait for an accept.
    let attackers: Vec<TcpStream> = [server.env, server.transport]
        .iter()
        .flat_map(|&addr| (0..70).map(move |_| addr))
        .map(|addr| TcpStream::connect(addr).expect("an attacker's connection"))
        .collect();
    server.wait_for("accepts to fail on both listeners", |s| {
        s["accept_errors"] > 0 && s["env_accept_errors"] > 0
    });

    let logged_before = server.stats()["log_lines"];
    let busy = server.cpu_share();
    let logged = server.stats()["log_lines"] - logged_before;
    assert!(
        busy < 0.25,
        "the server used {:.0}% of a core while out of descriptors, logging {logged} lines",
        busy * 100.0
    );
    // Ten lines per ten seconds per kind: a second may straddle two windows.
    assert!(logged <= 20, "{logged} lines logged in a second");
    // The connection open before the attack is served throughout.
    echo(&mut client, 2, b"during");

    drop(attackers);
    // A new client is served once the attacker's descriptors are free (read bounded by WAIT).
    let mut late = raw_connect(server.transport);
    echo(&mut late, 3, b"after");
    echo(&mut client, 4, b"still");
    server.wait_for("the attacker's connections to close", |s| {
        s["open"] == 2 && s["env_open"] == 0
    });
    let stats = server.stats();
    assert!(stats["log_lines"] < 100, "one line per failed accept: {stats:?}");
}

/// With a cap of 8 connections, 30 more are accepted and closed at once, and counted; the
/// connections within the cap keep working, and the cap frees up as they close.
#[test]
fn connections_beyond_the_cap_are_closed_at_once_and_counted_while_open_ones_keep_working() {
    let mut server = Hostile::start(256, 8);
    let mut client = raw_connect(server.transport);
    echo(&mut client, 1, b"first");

    let mut attackers: Vec<TcpStream> = (0..30)
        .map(|_| raw_connect(server.transport))
        .collect();
    server.wait_for("7 more accepted and 23 refused", |s| {
        s["accepted"] == 8 && s["refused"] == 23
    });
    let deadline = Instant::now() + WAIT;
    let closed = loop {
        let closed = attackers
            .iter_mut()
            .filter(|a| closed_by_server(&mut (*a).try_clone().unwrap()))
            .count();
        if closed >= 23 || Instant::now() > deadline {
            break closed;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(closed, 23, "the refused connections are closed, the others not");
    echo(&mut client, 2, b"served throughout");
    let stats = server.stats();
    assert_eq!(stats["open"], 8, "{stats:?}");
    assert!(stats["log_lines"] < 20, "one line per refusal: {stats:?}");

    drop(attackers);
    server.wait_for("the attacker's connections to close", |s| s["open"] == 1);
    let mut late = raw_connect(server.transport);
    echo(&mut late, 3, b"room again");
}

/// 20,000 replies to no request on one connection, 20 connections sending an undecodable
/// frame, 200 RPCs with an undecodable envelope to the env: every one counted, a bounded
/// number of lines logged, and a well-behaved client served throughout.
#[test]
fn floods_of_unsolicited_replies_and_undecodable_frames_are_counted_not_logged_line_by_line() {
    let mut server = Hostile::start(256, 512);
    let mut client = raw_connect(server.transport);
    echo(&mut client, 1, b"before");

    let mut flood = raw_connect(server.transport);
    let replies: Vec<Frame> = (0..20_000)
        .map(|i| Frame::RpcResponse {
            request: RequestId(1_000_000 + i),
            body: Bytes::from_static(b"unsolicited"),
        })
        .collect();
    flood.write_all(&encode(&replies)).unwrap();
    // Answered in order: once this echo is back, every reply before it was handled.
    echo(&mut flood, 1, b"after the flood");
    echo(&mut client, 2, b"during");

    let mut garbage: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut peer = raw_connect(server.transport);
            // A frame length of 0: below the 9-byte minimum.
            peer.write_all(&[0; 16]).unwrap();
            peer
        })
        .collect();
    for peer in &mut garbage {
        let mut rest = Vec::new();
        // End of file or a reset, within WAIT (the read timeout).
        let outcome = peer.read_to_end(&mut rest);
        assert!(
            !matches!(&outcome, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "the server closes a connection that sent garbage"
        );
    }

    let mut env = raw_connect(server.env);
    let requests: Vec<Frame> = (0..200)
        .map(|i| Frame::RpcRequest {
            request: RequestId(i),
            body: Bytes::from_static(b"\xffnot an envelope"),
        })
        .collect();
    env.write_all(&encode(&requests)).unwrap();
    let failures = read_frames(&mut env, 200, 64 * 1024);
    assert!(
        failures
            .iter()
            .all(|f| matches!(f, Frame::RpcFailure { .. })),
        "each undecodable envelope is refused"
    );

    server.wait_for("every event counted", |s| {
        s["unmatched_replies"] == 20_000 && s["protocol_errors"] == 20 && s["env_failed"] == 200
    });
    echo(&mut client, 3, b"after");
    let stats = server.stats();
    let events = 20_000 + 20 + 200;
    assert!(stats["log_lines"] < 60, "{stats:?}");
    assert!(
        stats["log_bytes"] < events,
        "less than a log byte per event (a line is some 150): {stats:?}"
    );
}
