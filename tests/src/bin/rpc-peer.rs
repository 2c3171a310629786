//! A peer process for the conformance suite, which kills it with SIGKILL in the middle of
//! calls.
//!
//! ```text
//! rpc-peer <tokio|async-std> <port>
//! ```
//!
//! Starts a server-mode env on `127.0.0.1:<port>` (0: any free port) on the named adapter
//! and prints `port <n>` on stdout. Its endpoint `peer` takes `String` messages and answers
//! `String`s:
//!
//! - `echo:<text>` is answered with `<text>`;
//! - `hold:<ms>:<text>` prints `held <text>` on stdout, then is answered with `<text>` after
//!   `<ms>` milliseconds (the endpoint goes on serving meanwhile).
//!
//! The process exits when its stdin closes, so a peer never outlives the test that started it.
//!
//! With the environment variable `RPC_PEER_SECRET` set, the env authenticates with that secret
//! and encrypts (`Security::secret`: AES, version 2, AES-GCM).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use rpc_tokio::{
    BoxError, EndpointContext, RpcCallContext, RpcEndpoint, RpcEnv, RpcEnvConfig, Runtime,
};

/// The endpoint the suite talks to.
struct Peer;

impl RpcEndpoint for Peer {
    type Message = String;
    type Reply = String;

    async fn receive_and_reply(
        &mut self,
        ctx: &EndpointContext<String, String>,
        message: String,
        call: RpcCallContext<String>,
    ) -> Result<(), BoxError> {
        if let Some(text) = message.strip_prefix("echo:") {
            call.reply(text.to_owned());
        } else if let Some(rest) = message.strip_prefix("hold:") {
            let (ms, text) = rest.split_once(':').ok_or("hold:<ms>:<text>")?;
            let delay = Duration::from_millis(ms.parse()?);
            let text = text.to_owned();
            say(&format!("held {text}"));
            let rt = ctx.env().runtime().clone();
            let timer_rt = rt.clone();
            rt.spawn(Box::pin(async move {
                rpc_tokio::sleep_until(&*timer_rt, timer_rt.now() + delay).await;
                call.reply(text);
            }));
        } else {
            call.send_failure(format!("unknown command {message:?}"));
        }
        Ok(())
    }
}

/// Prints a line on stdout at once (the suite reads them as they come).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .expect("stdout");
}

async fn serve(runtime: Arc<dyn Runtime>, port: u16) {
    let mut config = RpcEnvConfig::server("peer", "127.0.0.1", port);
    if let Ok(secret) = std::env::var("RPC_PEER_SECRET") {
        config = config.with_security(rpc_tokio::Security::secret(secret));
    }
    let config = config.build().expect("a valid config");
    let env = RpcEnv::create(runtime, config).expect("binding the port");
    env.setup_endpoint("peer", Peer).expect("the endpoint");
    let port = env.address().expect("a server-mode env").port;
    say(&format!("port {port}"));
    env.await_termination().await;
}

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: rpc-peer <tokio|async-std> <port>";
    let adapter = args.next().expect(usage);
    let port: u16 = args.next().expect(usage).parse().expect(usage);
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        std::process::exit(0);
    });
    match adapter.as_str() {
        "tokio" => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(async { serve(rpc_tokio::runtime(), port).await }),
        "async-std" => async_std::task::block_on(serve(rpc_async_std::runtime(), port)),
        other => panic!("unknown adapter {other:?}; {usage}"),
    }
}
