//! One outbox per remote env: connect on demand, queue while connecting, deliver in order.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rpc_proto::{
    CallError, EnvelopePrefix, Outbox, OutboxAction, OutboxError, OutboxFailure, RpcAddress,
};
use tracing::{debug, info, warn};

use super::cancel::CancelOnDrop;
use super::error::RpcError;
use super::stats::Counters;
use crate::completion::{self, Completer, Waiter};
use crate::runtime::{deadline_after, Runtime};
use crate::security::SecurityError;
use crate::sync::{lock, Arc, Mutex};
use crate::transport::{ConnectError, RpcCall, TransportClient, TransportClientFactory};

// loom has no `Weak` (and env is not built under loom).
use crate::sync::unmodeled::Weak;

/// What an outbox needs of its env: the runtime, the factory it connects with, the counters
/// it counts losses and retries in, and whether the env is stopping. The env implements it;
/// outboxes hold it weakly, and do nothing more once it is gone.
pub(crate) trait OutboxEnv: Send + Sync {
    /// The runtime the env runs on.
    fn runtime(&self) -> &Arc<dyn Runtime>;
    /// Opens the connections control messages travel on.
    fn factory(&self) -> &TransportClientFactory;
    /// The env's counters.
    fn stats(&self) -> &Counters;
    /// Whether the env is shutting down.
    fn is_stopped(&self) -> bool;
}

/// An outbox env that never upgrades (for outboxes made without an env, in tests).
#[cfg(test)]
pub(crate) fn detached() -> Weak<dyn OutboxEnv> {
    enum Detached {}
    impl OutboxEnv for Detached {
        fn runtime(&self) -> &Arc<dyn Runtime> {
            match *self {}
        }
        fn factory(&self) -> &TransportClientFactory {
            match *self {}
        }
        fn stats(&self) -> &Counters {
            match *self {}
        }
        fn is_stopped(&self) -> bool {
            match *self {}
        }
    }
    Weak::<Detached>::new()
}

/// What an ask becomes once it is written: the transport call and the cancel guard.
pub(crate) type Sent = Result<(RpcCall, CancelOnDrop), RpcError>;

/// An ask handed to an outbox.
pub(crate) enum Asked {
    /// Written at once (the outbox was connected).
    Sent(RpcCall, CancelOnDrop),
    /// Waiting for the connection; the waiter resolves once it is written (or cannot be).
    Queued(Waiter<Sent>),
}

pub(crate) enum OutMsg {
    Send(Bytes),
    Ask {
        body: Bytes,
        /// The endpoint, as errors name it.
        endpoint: Arc<str>,
        /// The header prefix it was sent with, for the cancel.
        prefix: EnvelopePrefix,
        /// `None`: no deadline (a timeout past the clock's range).
        deadline: Option<Instant>,
        reply: Completer<Sent>,
    },
}

/// The driver of one [`Outbox`].
pub(crate) struct OutboxCell {
    env: Weak<dyn OutboxEnv>,
    remote: RpcAddress,
    state: Mutex<CellState>,
}

struct CellState {
    outbox: Outbox<OutMsg>,
    client: Option<TransportClient>,
    timer: Option<Instant>,
    /// Why the last connect's handshake failed, if it did: asks that fail for want of a
    /// connection then fail with it, typed.
    refused: Option<SecurityError>,
}

impl OutboxCell {
    pub(crate) fn new(
        env: Weak<dyn OutboxEnv>,
        remote: RpcAddress,
        outbox: Outbox<OutMsg>,
    ) -> Self {
        Self {
            env,
            remote,
            state: Mutex::new(CellState {
                outbox,
                client: None,
                timer: None,
                refused: None,
            }),
        }
    }

    /// Sends a one-way message, or queues it until connected.
    pub(crate) fn send(self: &Arc<Self>, body: Bytes) -> Result<(), RpcError> {
        let mut st = lock(&self.state);
        if let Some(client) = self.connected(&st).cloned() {
            // Connected: nothing is queued, so writing now keeps the order.
            match client.send_or_return(body) {
                Ok(()) => return Ok(()),
                Err((e @ CallError::SendBufferFull { .. }, _)) => return Err(RpcError::NotSent(e)),
                // The connection died and we have not heard yet: reconnect, as we will when
                // we hear, and queue the message for the new connection.
                Err((CallError::Closed, Some(unsent))) => {
                    self.lost_connection(&mut st);
                    let len = unsent.len() as u64;
                    return self.push(&mut st, OutMsg::Send(unsent), len);
                }
                Err((e, _)) => {
                    self.lost(e);
                    return Ok(());
                }
            }
        }
        let len = body.len() as u64;
        self.push(&mut st, OutMsg::Send(body), len)
    }

    /// Sends an ask, or queues it until connected. `endpoint` names its target in errors;
    /// `prefix` is the header it was encoded with (a cancel is sent with it).
    pub(crate) fn ask(
        self: &Arc<Self>,
        body: Bytes,
        endpoint: &Arc<str>,
        prefix: &EnvelopePrefix,
        timeout: Duration,
    ) -> Result<Asked, RpcError> {
        let mut st = lock(&self.state);
        if let Some(client) = self.connected(&st).cloned() {
            let call = match client.try_send_rpc_or_return(body, Some(timeout)) {
                Ok(call) => call,
                Err((e @ CallError::SendBufferFull { .. }, _)) => return Err(RpcError::NotSent(e)),
                // The connection died and we have not heard yet: reconnect and queue.
                Err((CallError::Closed, Some(unsent))) => {
                    self.lost_connection(&mut st);
                    return self.queue_ask(&mut st, unsent, endpoint, prefix, timeout);
                }
                Err((e, _)) => RpcCall::refused(e),
            };
            let guard = CancelOnDrop::new(client.clone(), prefix.clone(), call.request_id());
            return Ok(Asked::Sent(call, guard));
        }
        self.queue_ask(&mut st, body, endpoint, prefix, timeout)
    }

    /// Queues an ask until the outbox is connected.
    fn queue_ask(
        self: &Arc<Self>,
        st: &mut CellState,
        body: Bytes,
        endpoint: &Arc<str>,
        prefix: &EnvelopePrefix,
        timeout: Duration,
    ) -> Result<Asked, RpcError> {
        let env = self.env.upgrade().ok_or(RpcError::EnvStopped)?;
        let (reply, waiter) = completion::pair();
        let len = body.len() as u64;
        let deadline = deadline_after(env.runtime().now(), timeout);
        self.push(
            st,
            OutMsg::Ask {
                body,
                endpoint: endpoint.clone(),
                prefix: prefix.clone(),
                deadline,
                reply,
            },
            len,
        )?;
        Ok(Asked::Queued(waiter))
    }

    /// The connection, if the outbox is connected (and so has nothing queued). It may have
    /// closed since: writing to it then fails with [`CallError::Closed`], and the caller
    /// reconnects ([`lost_connection`](Self::lost_connection)).
    fn connected<'a>(&self, st: &'a CellState) -> Option<&'a TransportClient> {
        st.client.as_ref().filter(|_| st.outbox.is_connected())
    }

    /// Our connection turned out to be closed before the driver told us
    /// ([`connection_closed`](Self::connection_closed) will find it already forgotten): the
    /// next message reconnects.
    fn lost_connection(&self, st: &mut CellState) {
        if let Some(env) = self.env.upgrade() {
            debug!(remote = %self.remote, "connection found closed; reconnecting");
            st.client = None;
            st.outbox.handle_disconnected(env.runtime().now());
        }
    }

    /// A one-way message the connection refused: logged and counted.
    fn lost(&self, error: CallError) {
        warn!(remote = %self.remote, %error, "one-way message lost");
        if let Some(env) = self.env.upgrade() {
            env.stats().failed();
        }
    }

    fn push(
        self: &Arc<Self>,
        st: &mut CellState,
        message: OutMsg,
        len: u64,
    ) -> Result<(), RpcError> {
        let env = self.env.upgrade().ok_or(RpcError::EnvStopped)?;
        let now = env.runtime().now();
        if let Some(client) = st.client.as_ref().filter(|c| c.is_send_buffer_full()) {
            return Err(RpcError::NotSent(CallError::SendBufferFull {
                buffered: client.buffered_bytes(),
                max: client.max_send_buffer(),
            }));
        }
        if let Err(e) = st.outbox.push(now, message, len) {
            return Err(match e {
                OutboxError::Full {
                    queued_messages,
                    queued_bytes,
                    ..
                } => {
                    warn!(remote = %self.remote, queued_messages, queued_bytes, "outbox full, message refused");
                    RpcError::OutboxFull {
                        peer: self.remote.to_string(),
                        queued_messages,
                        queued_bytes,
                    }
                }
                _ => RpcError::EnvStopped,
            });
        }
        self.process(&env, st, now);
        Ok(())
    }

    /// Carries out the outbox's actions. Runs under the lock, so deliveries keep push order.
    fn process(self: &Arc<Self>, env: &Arc<dyn OutboxEnv>, st: &mut CellState, now: Instant) {
        while let Some(action) = st.outbox.poll_action() {
            match action {
                OutboxAction::Connect => self.spawn_connect(env),
                OutboxAction::Deliver(message) => match st.client.clone() {
                    Some(client) => self.deliver(&client, message, now),
                    None => self.fail(&**env, message, "not connected".into(), None),
                },
                OutboxAction::Fail(message, failure) => {
                    let (reason, refused) = match failure {
                        OutboxFailure::ConnectFailed { reason, .. } => {
                            (reason.to_string(), st.refused.clone())
                        }
                        other => (other.to_string(), None),
                    };
                    self.fail(&**env, message, reason, refused)
                }
                _ => {}
            }
        }
        if let Some(at) = st.outbox.poll_timeout() {
            if st.timer != Some(at) {
                st.timer = Some(at);
                let cell = self.clone();
                let rt = env.runtime().clone();
                env.runtime().spawn(Box::pin(async move {
                    crate::runtime::sleep_until(&*rt, at).await;
                    cell.on_timer(at);
                }));
            }
        }
    }

    fn on_timer(self: &Arc<Self>, at: Instant) {
        let Some(env) = self.env.upgrade() else {
            return;
        };
        let now = env.runtime().now().max(at);
        let mut st = lock(&self.state);
        if st.timer == Some(at) {
            st.timer = None;
        }
        st.outbox.handle_timeout(now);
        self.process(&env, &mut st, now);
    }

    fn spawn_connect(self: &Arc<Self>, env: &Arc<dyn OutboxEnv>) {
        let cell = self.clone();
        let factory = env.factory().clone();
        let remote = self.remote.clone();
        debug!(%remote, "connecting");
        let rt = env.runtime().clone();
        env.runtime().spawn(Box::pin(async move {
            let result = match resolve(&*rt, &remote).await {
                Ok(addr) => factory.create_client(addr).await.map_err(|e| match e {
                    ConnectError::Security(refused) => (refused.to_string(), Some(refused)),
                    other => (other.to_string(), None),
                }),
                Err(e) => Err((e, None)),
            };
            let Some(env) = cell.env.upgrade() else {
                return;
            };
            let now = env.runtime().now();
            let mut st = lock(&cell.state);
            match result {
                Ok(client) => {
                    info!(%remote, "connected");
                    st.refused = None;
                    st.client = Some(client);
                    st.outbox.handle_connected(now);
                }
                Err((reason, refused)) => {
                    info!(%remote, %reason, "connect failed");
                    st.refused = refused;
                    env.stats().retried();
                    st.outbox.handle_connect_failed(now, reason.into());
                }
            }
            cell.process(&env, &mut st, now);
        }));
    }

    fn deliver(&self, client: &TransportClient, message: OutMsg, now: Instant) {
        match message {
            OutMsg::Send(body) => {
                if let Err(e) = client.send(body) {
                    self.lost(e);
                }
            }
            OutMsg::Ask {
                body,
                prefix,
                deadline,
                reply,
                ..
            } => {
                let remaining = deadline.map(|deadline| {
                    deadline
                        .saturating_duration_since(now)
                        .max(Duration::from_millis(1))
                });
                let call = client.send_rpc(body, remaining);
                let guard = CancelOnDrop::new(client.clone(), prefix, call.request_id());
                // If the asker is gone, dropping the call and guard forgets it and cancels it.
                let _ = reply.complete(Ok((call, guard)));
            }
        }
    }

    fn fail(
        &self,
        env: &dyn OutboxEnv,
        message: OutMsg,
        reason: String,
        refused: Option<SecurityError>,
    ) {
        match message {
            OutMsg::Send(_) => {
                warn!(remote = %self.remote, %reason, "one-way message not delivered");
                env.stats().failed();
            }
            OutMsg::Ask {
                reply, endpoint, ..
            } => {
                let error = if env.is_stopped() {
                    RpcError::EnvStopped
                } else if let Some(cause) = refused {
                    RpcError::Security {
                        endpoint: endpoint.to_string(),
                        cause,
                    }
                } else {
                    RpcError::Unreachable {
                        endpoint: endpoint.to_string(),
                        cause: reason.into(),
                    }
                };
                let _ = reply.complete(Err(error));
            }
        }
    }

    /// Messages waiting for a connection.
    pub(crate) fn queued(&self) -> u64 {
        lock(&self.state).outbox.queued_messages() as u64
    }

    /// The connection `client` ended: if it was ours, the next message reconnects.
    pub(crate) fn connection_closed(&self, client: &TransportClient, now: Instant) {
        let mut st = lock(&self.state);
        if st.client.as_ref() == Some(client) {
            st.client = None;
            st.outbox.handle_disconnected(now);
        }
    }

    /// Fails everything queued and refuses what comes later.
    pub(crate) fn close(self: &Arc<Self>) {
        let Some(env) = self.env.upgrade() else {
            return;
        };
        let now = env.runtime().now();
        let mut st = lock(&self.state);
        st.outbox.close();
        self.process(&env, &mut st, now);
        if let Some(client) = st.client.take() {
            client.close();
        }
    }
}

/// The address to connect to for `remote`: an IP literal at once, a host name on the
/// runtime's blocking pool (a slow resolver stalls this connect only).
async fn resolve(rt: &dyn Runtime, remote: &RpcAddress) -> Result<SocketAddr, String> {
    crate::runtime::resolve(rt, &remote.host, remote.port)
        .await
        .map_err(|e| format!("could not resolve {remote}: {e}"))
}
