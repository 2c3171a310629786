//! A peer in another process (`src/bin/rpc-peer.rs`, on the same adapter) killed with
//! SIGKILL while it holds our asks, then restarted on the same port.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rpc::{RpcAddress, RpcError};

use super::util::*;

/// A running `rpc-peer`, killed when dropped.
struct PeerProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    port: u16,
}

impl PeerProcess {
    /// Starts a peer on the suite's adapter, bound to `port` (0: any), and waits until it
    /// listens.
    async fn start(port: u16) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rpc-peer"));
        if security().is_enabled() {
            // The secure modules' security: `Security::secret(SECRET)`.
            command.env("RPC_PEER_SECRET", super::super::SECRET);
        }
        let mut child = command
            .args([ADAPTER, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting rpc-peer");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut peer = Self {
            child,
            lines,
            port: 0,
        };
        let first = peer.next_line().await;
        peer.port = first
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("expected the port, got {first:?}"));
        peer
    }

    /// The next line the peer prints.
    async fn next_line(&self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.lines.try_recv() {
                Ok(line) => return line,
                Err(mpsc::TryRecvError::Empty) => {
                    assert!(Instant::now() < deadline, "the peer printed nothing");
                    sleep(Duration::from_millis(5)).await;
                }
                Err(mpsc::TryRecvError::Disconnected) => panic!("the peer exited"),
            }
        }
    }

    fn address(&self) -> RpcAddress {
        RpcAddress::new("127.0.0.1", self.port)
    }

    /// SIGKILL (`Child::kill` on Unix), and reaps the process.
    fn kill(&mut self) {
        self.child.kill().expect("killing the peer");
        self.child.wait().expect("reaping the peer");
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn asks_held_by_a_sigkilled_peer_fail_with_disconnected_within_a_second_and_the_ref_reconnects_to_its_restart(
) {
    block_on(async {
        let mut peer = PeerProcess::start(0).await;
        let env = server_env("asker");
        let remote = within(
            "a lookup",
            env.setup_endpoint_ref::<String, String>(peer.address(), "peer"),
        )
        .await
        .unwrap();
        let reply = within("the first reply", remote.ask("echo:hello".into())).await;
        assert_eq!(reply.unwrap(), "hello");

        // Asks the peer holds for a minute: only its death can end them in time.
        let held: Vec<_> = (0..10)
            .map(|i| spawn(remote.ask(format!("hold:60000:{i}"))))
            .collect();
        let mut seen = BTreeSet::new();
        for _ in 0..10 {
            seen.insert(peer.next_line().await);
        }
        assert_eq!(seen, (0..10).map(|i| format!("held {i}")).collect());

        let killed_at = Instant::now();
        peer.kill();
        let bound = Duration::from_secs(1);
        for ask in held {
            let left = bound.saturating_sub(killed_at.elapsed());
            let outcome = give_up_after(left, ask)
                .await
                .expect("every held ask fails within a second of the kill");
            assert!(
                matches!(outcome, Err(RpcError::Disconnected { .. })),
                "{outcome:?}"
            );
        }

        // Back on the same port: the same ref reconnects.
        let restarted = PeerProcess::start(peer.port).await;
        assert_eq!(restarted.port, peer.port);
        let reply = within("the reply after the restart", remote.ask("echo:again".into())).await;
        assert_eq!(reply.unwrap(), "again");
        shutdown(&[&env]).await;
    })
}
