//! Smoke tests of the env on this adapter, each run under async-std, under `smol::block_on`
//! and on a single smol thread: asks between envs, an isolated endpoint, ask timeouts, and
//! shutdown. The full behaviour is the conformance suite's (`tests/` of the workspace).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use async_io::Timer;
use common::{on_each_executor, within, WAIT};
use rpc_async_std::{
    BoxError, EndpointContext, EndpointKind, RpcCallContext, RpcEndpoint, RpcEndpointRef, RpcEnv,
    RpcEnvConfig, RpcError, RpcMessage, Runtime, SetupError,
};
use serde::{Deserialize, Serialize};

on_each_executor!(
    ask_is_answered_across_envs,
    an_isolated_endpoint_blocks_only_its_own_thread,
    asks_time_out_locally_and_remotely,
    shutdown_stops_endpoints_fails_pending_asks_and_terminates,
);

#[derive(Debug, Serialize, Deserialize, RpcMessage)]
enum Cmd {
    /// `ask`: answered with the text.
    Echo(String),
    /// `ask`: kept unanswered.
    Hold,
    /// `send`: blocks the endpoint's thread until the test releases it.
    Block,
    /// `ask`: after an async-io timer, answered with the handler's thread name and whether
    /// the last `Block` was released.
    Where,
}

#[derive(Default)]
struct Probe {
    isolated: bool,
    held: Vec<RpcCallContext<String>>,
    release: Option<Mutex<mpsc::Receiver<()>>>,
    released: Option<bool>,
    stopped: Arc<AtomicBool>,
}

impl RpcEndpoint for Probe {
    type Message = Cmd;
    type Reply = String;

    fn kind(&self) -> EndpointKind {
        if self.isolated {
            EndpointKind::Isolated
        } else {
            EndpointKind::Serial
        }
    }

    async fn receive(
        &mut self,
        _: &EndpointContext<Cmd, String>,
        cmd: Cmd,
    ) -> Result<(), BoxError> {
        if let Cmd::Block = cmd {
            let release = self.release.take().ok_or("no release channel")?;
            self.released = Some(release.lock().unwrap().recv_timeout(WAIT).is_ok());
        }
        Ok(())
    }

    async fn receive_and_reply(
        &mut self,
        _: &EndpointContext<Cmd, String>,
        cmd: Cmd,
        call: RpcCallContext<String>,
    ) -> Result<(), BoxError> {
        match cmd {
            Cmd::Echo(text) => drop(call.reply(text)),
            Cmd::Hold => self.held.push(call),
            Cmd::Where => {
                Timer::after(Duration::from_millis(10)).await;
                let thread = std::thread::current()
                    .name()
                    .unwrap_or("unnamed")
                    .to_owned();
                call.reply(format!("{thread} released={:?}", self.released));
            }
            Cmd::Block => return Err("Block is a send".into()),
        }
        Ok(())
    }

    async fn on_stop(&mut self, _: &EndpointContext<Cmd, String>) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

fn server(rt: &Arc<dyn Runtime>, name: &str) -> RpcEnv {
    RpcEnv::create(
        rt.clone(),
        RpcEnvConfig::server(name, "127.0.0.1", 0).build().unwrap(),
    )
    .expect("server env")
}

fn client(rt: &Arc<dyn Runtime>, config: RpcEnvConfig) -> RpcEnv {
    RpcEnv::create(rt.clone(), config).expect("client env")
}

async fn lookup(from: &RpcEnv, to: &RpcEnv, name: &str) -> RpcEndpointRef<Cmd, String> {
    let address = to.address().expect("a server env").clone();
    within("a lookup", from.setup_endpoint_ref(address, name))
        .await
        .expect("the endpoint is found")
}

async fn shutdown(envs: &[&RpcEnv]) {
    for env in envs {
        env.shutdown();
    }
    for env in envs {
        within("the env to terminate", env.await_termination()).await;
    }
}

async fn ask_is_answered_across_envs(rt: Arc<dyn Runtime>) {
    let (a, b) = (server(&rt, "a"), server(&rt, "b"));
    let c = client(&rt, RpcEnvConfig::client("c").build().unwrap());
    a.setup_endpoint("probe", Probe::default()).unwrap();
    for from in [&b, &c] {
        let probe = lookup(from, &a, "probe").await;
        let reply = within("the reply", probe.ask(Cmd::Echo("hi".into()))).await;
        assert_eq!(reply.unwrap(), "hi");
    }
    shutdown(&[&a, &b, &c]).await;
}

async fn an_isolated_endpoint_blocks_only_its_own_thread(rt: Arc<dyn Runtime>) {
    let env = server(&rt, "env");
    let (release, blocked) = mpsc::channel();
    let isolated = Probe {
        isolated: true,
        release: Some(Mutex::new(blocked)),
        ..Probe::default()
    };
    let isolated = env.setup_endpoint("isolated", isolated).unwrap();
    let serial = env.setup_endpoint("serial", Probe::default()).unwrap();

    isolated.send(Cmd::Block).unwrap();
    let reply = within("the serial endpoint", serial.ask(Cmd::Echo("free".into()))).await;
    assert_eq!(
        reply.unwrap(),
        "free",
        "answered while the isolated one blocks"
    );
    release.send(()).unwrap();
    let reply = within("the isolated endpoint", isolated.ask(Cmd::Where)).await;
    assert_eq!(
        reply.unwrap(),
        "rpc-isolated released=Some(true)",
        "on its own thread, where timers work"
    );
    shutdown(&[&env]).await;
}

async fn asks_time_out_locally_and_remotely(rt: Arc<dyn Runtime>) {
    let env = server(&rt, "server");
    let local = env.setup_endpoint("probe", Probe::default()).unwrap();
    let default_timeout = Duration::from_millis(150);
    let c = client(
        &rt,
        RpcEnvConfig::client("c")
            .with_ask_timeout(default_timeout)
            .build()
            .unwrap(),
    );
    let remote = lookup(&c, &env, "probe").await;

    let after = Duration::from_millis(100);
    for probe in [&local, &remote] {
        let started = Instant::now();
        let err = within("the timeout", probe.ask_with_timeout(Cmd::Hold, after))
            .await
            .unwrap_err();
        assert!(
            matches!(err, RpcError::TimedOut { after: a, .. } if a == after),
            "{err}"
        );
        assert!(started.elapsed() >= after, "not before the timeout");
    }
    let started = Instant::now();
    let err = within("the default timeout", remote.ask(Cmd::Hold))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RpcError::TimedOut { after, .. } if after == default_timeout),
        "{err}"
    );
    assert!(started.elapsed() >= default_timeout);
    shutdown(&[&c, &env]).await;
}

async fn shutdown_stops_endpoints_fails_pending_asks_and_terminates(rt: Arc<dyn Runtime>) {
    let env = server(&rt, "server");
    let stopped = Arc::new(AtomicBool::new(false));
    let probe = Probe {
        stopped: stopped.clone(),
        ..Probe::default()
    };
    env.setup_endpoint("probe", probe).unwrap();
    let c = client(&rt, RpcEnvConfig::client("c").build().unwrap());
    let remote = lookup(&c, &env, "probe").await;
    let pending = remote.ask_with_timeout(Cmd::Hold, WAIT * 2);
    // The ask is on its way; the server stops with it held.
    let reply = within("a reply", remote.ask(Cmd::Echo("before".into()))).await;
    assert_eq!(reply.unwrap(), "before");

    env.shutdown();
    assert!(env.is_stopped());
    within("the server to terminate", env.await_termination()).await;
    assert!(
        stopped.load(Ordering::SeqCst),
        "on_stop ran before termination"
    );
    let err = within("the pending ask to fail", pending)
        .await
        .unwrap_err();
    assert!(!matches!(err, RpcError::TimedOut { .. }), "{err}");
    let err = env.setup_endpoint("late", Probe::default()).unwrap_err();
    assert!(matches!(err, SetupError::EnvStopped), "{err}");

    shutdown(&[&c]).await;
    let err = within(
        "an ask on a stopped env",
        remote.ask(Cmd::Echo("after".into())),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, RpcError::EnvStopped | RpcError::Unbound(_)),
        "{err}"
    );
}
