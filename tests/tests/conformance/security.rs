//! Security on real sockets: Spark's AES authentication and its ciphers carry every kind of
//! request, a wrong secret is a typed error, and a connection that has not authenticated
//! gets nothing served, whatever it sends (issue 12).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rpc_proto::handshake::AUTH_FAILED_TEXT;
use rpc::{RequestId, RequestError, StreamChunkId};
use rpc_proto::{Decoded, Frame, FrameDecoder};
use rpc::security::{AuthVersion, CipherMode, Secret, SPARK_RPC_APP_ID};
use rpc::{
    AuthMechanism, ConnectError, FileSegment, ManagedBuffer, MergedBlockMetaReqHandler,
    MergedBlockMetaRequest, MergedBlockMetaResponder, OneForOneStreamManager, RpcHandler,
    RpcResponder, SecretKeyHolder, Security, SecurityError, StreamManager, TransportClient,
    TlsConfig, TransportClientFactory, TransportConfig, TransportServer, UploadSink,
};

use super::files::{contents, temp_file};
use super::transport::{big_body, localhost, Echo};
use super::util::*;
use super::wire::{encode, raw_connect};

const SECRET: &str = "the-shared-secret";

/// Serves everything and counts what it served: RPCs (echoed), one-way messages, chunks
/// (from a [`OneForOneStreamManager`]), the stream `file` (a file segment), uploads (answered
/// with their length), merged block metadata.
struct Served {
    path: std::path::PathBuf,
    streams: OneForOneStreamManager,
    count: AtomicUsize,
    client_ids: Mutex<Vec<Option<String>>>,
}

impl Served {
    fn new(file_len: usize) -> Arc<Self> {
        Arc::new(Self {
            path: temp_file(file_len),
            streams: OneForOneStreamManager::new(1),
            count: AtomicUsize::new(0),
            client_ids: Mutex::default(),
        })
    }

    fn served(&self, client: &TransportClient) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.client_ids
            .lock()
            .unwrap()
            .push(client.client_id().map(str::to_owned));
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl RpcHandler for Served {
    fn receive(&self, client: &TransportClient, message: Bytes, responder: RpcResponder) {
        self.served(client);
        let _ = responder.reply(message);
    }

    fn receive_one_way(&self, client: &TransportClient, _: Bytes) {
        self.served(client);
    }

    fn stream_manager(&self) -> Option<&dyn StreamManager> {
        Some(self)
    }

    fn merged_block_meta_req_handler(&self) -> Option<&dyn MergedBlockMetaReqHandler> {
        Some(self)
    }

    fn receive_stream(
        &self,
        client: &TransportClient,
        _: Bytes,
    ) -> Result<Box<dyn UploadSink>, rpc::BoxError> {
        self.served(client);
        Ok(Box::new(Length(0)))
    }
}

impl StreamManager for Served {
    fn chunk(&self, client: &TransportClient, chunk: StreamChunkId) -> Result<Bytes, rpc::BoxError> {
        self.served(client);
        self.streams.chunk(client, chunk)
    }

    fn open_stream_buffer(
        &self,
        client: &TransportClient,
        stream_id: &str,
    ) -> Result<ManagedBuffer, rpc::BoxError> {
        self.served(client);
        match stream_id {
            "file" => FileSegment::open(&self.path)
                .map(ManagedBuffer::File)
                .map_err(Into::into),
            other => Err(format!("no stream {other}").into()),
        }
    }
}

impl MergedBlockMetaReqHandler for Served {
    fn receive_merged_block_meta_req(
        &self,
        client: &TransportClient,
        _: MergedBlockMetaRequest,
        responder: MergedBlockMetaResponder,
    ) {
        self.served(client);
        let _ = responder.fail("no merged blocks here");
    }
}

/// Answers an upload with the number of bytes it carried.
struct Length(usize);

impl UploadSink for Length {
    fn on_data(&mut self, data: Bytes) -> Result<(), rpc::BoxError> {
        self.0 += data.len();
        Ok(())
    }

    fn on_complete(self: Box<Self>, responder: RpcResponder) {
        let _ = responder.reply(self.0.to_string().into());
    }
}

fn secured(security: Security) -> TransportConfig {
    TransportConfig::builder()
        .with_security(security)
        .build()
        .unwrap()
}

fn bind(handler: Arc<Served>, security: Security) -> TransportServer {
    TransportServer::bind(rt(), localhost(), handler, secured(security)).unwrap()
}

fn factory(security: Security) -> TransportClientFactory {
    TransportClientFactory::new(rt(), Arc::new(Echo::default()), secured(security))
}

/// The pieces of `body`, 64 KiB each.
fn pieces(body: Bytes) -> impl futures_lite::Stream<Item = Bytes> + Send {
    let count = body.len().div_ceil(64 * 1024);
    futures_lite::stream::iter(
        (0..count).map(move |i| body.slice(i * 65536..((i + 1) * 65536).min(body.len()))),
    )
}

#[test]
fn every_aes_mechanism_carries_rpcs_one_way_messages_chunks_streams_uploads_and_files() {
    const MIB: usize = 1024 * 1024;
    let mechanisms = [
        AuthMechanism::aes_gcm(),
        AuthMechanism::spark_aes_default(),
        AuthMechanism::Aes {
            version: AuthVersion::V2,
            cipher: CipherMode::Ctr,
        },
        AuthMechanism::Aes {
            version: AuthVersion::V1,
            cipher: CipherMode::Gcm,
        },
    ];
    block_on(async {
        for mechanism in mechanisms {
            let security = Security::secret(SECRET).with_mechanism(mechanism);
            let served = Served::new(3 * MIB + 17);
            let server = bind(served.clone(), security.clone());
            let client = within("a connection", factory(security).create_client(server.local_addr()))
                .await
                .unwrap();
            assert_eq!(client.client_id(), Some(SPARK_RPC_APP_ID));

            let body = big_body(2 * MIB + 3);
            let reply = within("an rpc", client.send_rpc(body.clone(), None)).await;
            assert!(reply.unwrap() == body, "{mechanism:?}: the rpc's echo differs");

            client.send("one way".into()).unwrap();

            let chunks = vec![big_body(MIB + 5), Bytes::from_static(b"small")];
            let stream = served.streams.register_stream(SPARK_RPC_APP_ID, chunks.clone(), None);
            for (i, expected) in chunks.iter().enumerate() {
                let chunk = within(
                    "a chunk",
                    client.fetch_chunk(StreamChunkId::new(stream, i as u32), None),
                )
                .await
                .unwrap();
                assert!(chunk == *expected, "{mechanism:?}: chunk {i} differs");
            }

            let file = within("a file stream", client.stream("file", None).read_to_end())
                .await
                .unwrap();
            assert!(file == contents(3 * MIB + 17), "{mechanism:?}: the file differs");

            let upload = client.upload_stream("meta".into(), body.len() as u64, pieces(body), None);
            assert_eq!(within("an upload", upload).await.unwrap(), "2097155");

            eventually("the one-way message", || served.count() == 6).await;
            let ids = served.client_ids.lock().unwrap().clone();
            assert!(
                ids.iter().all(|id| id.as_deref() == Some(SPARK_RPC_APP_ID)),
                "{ids:?}"
            );
            // The file's bytes went through the cipher, not sendfile.
            let accepted = server.connections();
            assert_eq!(accepted.len(), 1);
            assert_eq!(accepted[0].zero_copy_bytes(), 0, "{mechanism:?}");
            assert_eq!(server.stats().auth_failures, 0);
            server.close();
        }
    })
}

#[test]
fn a_wrong_secret_is_a_typed_error_and_nothing_is_served() {
    block_on(async {
        let served = Served::new(10);
        let server = bind(served.clone(), Security::secret(SECRET));
        let wrong = factory(Security::secret("not-the-secret"));
        let error = within("the refusal", wrong.create_client(server.local_addr()))
            .await
            .unwrap_err();
        assert_eq!(
            error,
            ConnectError::Security(SecurityError::AuthenticationFailed {
                peer: server.local_addr(),
                remote: Some(AUTH_FAILED_TEXT.to_owned()),
            })
        );
        eventually("the failure counted", || server.stats().auth_failures == 1).await;
        assert_eq!(served.count(), 0);
        assert!(server.connections().is_empty());

        // A server with another secret refuses our (right) client just the same.
        let other = bind(Served::new(10), Security::secret("the-other-secret"));
        let error = within(
            "the refusal",
            factory(Security::secret(SECRET)).create_client(other.local_addr()),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(error, ConnectError::Security(SecurityError::AuthenticationFailed { .. })),
            "{error:?}"
        );
    })
}

#[test]
fn an_unmanaged_client_authenticates_with_the_factorys_security() {
    block_on(async {
        let served = Served::new(10);
        let server = bind(served.clone(), Security::secret(SECRET));
        let client = within(
            "a connection",
            factory(Security::secret(SECRET)).create_unmanaged_client(server.local_addr()),
        )
        .await
        .unwrap();
        assert_eq!(client.client_id(), Some(SPARK_RPC_APP_ID));
        let reply = within("the reply", client.send_rpc("hello".into(), None))
            .await
            .unwrap();
        assert_eq!(reply, "hello");
        assert_eq!(served.count(), 1);

        let wrong = factory(Security::secret("not-the-secret"));
        let error = within("the refusal", wrong.create_unmanaged_client(server.local_addr()))
            .await
            .unwrap_err();
        assert!(
            matches!(error, ConnectError::Security(SecurityError::AuthenticationFailed { .. })),
            "{error:?}"
        );
        eventually("the failure counted", || server.stats().auth_failures == 1).await;
        assert_eq!(served.count(), 1);
    })
}

#[test]
fn a_client_without_security_is_refused_and_served_nothing() {
    block_on(async {
        let served = Served::new(10);
        let server = bind(served.clone(), Security::secret(SECRET));
        let plain = factory(Security::none());
        let client = within("a plain connection", plain.create_client(server.local_addr()))
            .await
            .unwrap();
        let error = within("the refusal", client.send_rpc("hello".into(), None))
            .await
            .unwrap_err();
        assert_eq!(error, RequestError::AuthenticationRequired(AUTH_FAILED_TEXT.into()));
        eventually("the connection closed", || !client.is_active()).await;
        // Counted once the server's handshake task has closed its side.
        eventually("the failure counted", || server.stats().auth_failures == 1).await;
        assert_eq!(served.count(), 0);
    })
}

/// Reads frames from `peer` until the server closes it; returns them.
fn frames_until_closed(peer: &mut TcpStream) -> Vec<Frame> {
    let mut decoder = FrameDecoder::new(1 << 20);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut chunk = vec![0; 64 * 1024];
    loop {
        while let Ok(Some(Decoded::Frame(frame))) = decoder.decode(&mut buf) {
            frames.push(frame);
        }
        match peer.read(&mut chunk) {
            Ok(0) => return frames,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return frames,
            Err(e) => panic!("the server did not close the connection within {WAIT:?}: {e}"),
        }
    }
}

#[test]
fn a_raw_socket_that_skips_the_handshake_gets_nothing_served_whatever_it_sends() {
    block_on(async {
        let served = Served::new(1000);
        let stream = served
            .streams
            .register_stream(SPARK_RPC_APP_ID, vec!["secret chunk".into()], None);
        let server = bind(served.clone(), Security::secret(SECRET));
        let requests = [
            Frame::RpcRequest {
                request: RequestId(1),
                body: "call an endpoint".into(),
            },
            Frame::OneWayMessage {
                body: "a message".into(),
            },
            Frame::ChunkFetchRequest {
                chunk: StreamChunkId::new(stream, 0),
            },
            Frame::StreamRequest {
                stream_id: "file".into(),
            },
            Frame::UploadStream {
                request: RequestId(2),
                meta: "meta".into(),
                byte_count: 4,
            },
            Frame::MergedBlockMetaRequest {
                request: RequestId(3),
                app_id: "app".into(),
                shuffle_id: 0,
                shuffle_merge_id: 0,
                reduce_id: 0,
            },
        ];
        let mut answered = 0;
        for request in &requests {
            // The request, then every other kind behind it on the same connection.
            let mut all = vec![request.clone()];
            all.extend(requests.iter().filter(|r| *r != request).cloned());
            let bytes = encode(&all);
            let addr = server.local_addr();
            let frames = on_thread(move || {
                let mut peer = raw_connect(addr);
                // The server may close before it read everything: a failed write is fine.
                let _ = peer.write_all(&bytes);
                frames_until_closed(&mut peer)
            })
            .await;
            for frame in frames {
                match frame {
                    // The one answer a stranger gets: Spark's refusal, to its first RPC.
                    Frame::RpcFailure { error, .. } if error == AUTH_FAILED_TEXT => {}
                    other => {
                        answered += 1;
                        eprintln!("served to a stranger: {other:?}");
                    }
                }
            }
        }
        assert_eq!(answered, 0, "frames served before authentication");
        assert_eq!(served.count(), 0, "requests handled before authentication");
        eventually("every attempt counted", || {
            server.stats().auth_failures == requests.len() as u64
        })
        .await;
        // The chunk is still there for a client that authenticates.
        let client = within(
            "a connection",
            factory(Security::secret(SECRET)).create_client(server.local_addr()),
        )
        .await
        .unwrap();
        let chunk = within("the chunk", client.fetch_chunk(StreamChunkId::new(stream, 0), None))
            .await
            .unwrap();
        assert_eq!(chunk, "secret chunk");
    })
}

#[test]
fn a_stalled_garbage_or_oversized_handshake_is_cut_off() {
    block_on(async {
        let served = Served::new(10);
        let security = Security::secret(SECRET).with_handshake_timeout(Duration::from_millis(300));
        let server = bind(served.clone(), security.clone());
        let addr = server.local_addr();
        let mut oversized = (1u64 << 40).to_be_bytes().to_vec();
        oversized.push(3);
        let attempts: Vec<Vec<u8>> = vec![
            Vec::new(),                // says nothing at all
            vec![0; 5],                // half a frame, then nothing
            vec![0xff; 4096],          // garbage
            oversized,                 // a frame far larger than a handshake
        ];
        let count = attempts.len();
        for bytes in attempts {
            let frames = on_thread(move || {
                let mut peer = raw_connect(addr);
                let _ = peer.write_all(&bytes);
                frames_until_closed(&mut peer)
            })
            .await;
            assert!(frames.is_empty(), "{frames:?}");
        }
        eventually("every attempt counted", || {
            server.stats().auth_failures == count as u64
        })
        .await;
        assert_eq!(server.stats().handshaking, 0);
        // The server still serves a client that authenticates.
        let client = within("a connection", factory(security).create_client(addr))
            .await
            .unwrap();
        assert_eq!(
            within("an rpc", client.send_rpc("hi".into(), None)).await.unwrap(),
            "hi"
        );
        assert_eq!(served.count(), 1);
    })
}

/// Knows the secrets of `app-a` and `app-b`.
struct TwoApps;

impl SecretKeyHolder for TwoApps {
    fn secret(&self, app_id: &str) -> Option<Secret> {
        match app_id {
            "app-a" => Some(Secret::new("secret-of-a")),
            "app-b" => Some(Secret::new("secret-of-b")),
            _ => None,
        }
    }
}

/// Knows one app's secret.
struct OneApp(&'static str, &'static str);

impl SecretKeyHolder for OneApp {
    fn secret(&self, app_id: &str) -> Option<Secret> {
        (app_id == self.0).then(|| Secret::new(self.1))
    }
}

#[test]
fn a_stream_is_served_only_to_the_application_it_was_registered_for() {
    block_on(async {
        let served = Served::new(10);
        let server = bind(served.clone(), Security::secret_holder(Arc::new(TwoApps)));
        let as_app = |app: &'static str, secret: &'static str| {
            factory(Security::secret_holder(Arc::new(OneApp(app, secret))).with_app_id(app))
        };
        let stream = served
            .streams
            .register_stream("app-a", vec!["for a".into()], None);

        let b = within("app-b", as_app("app-b", "secret-of-b").create_client(server.local_addr()))
            .await
            .unwrap();
        assert_eq!(b.client_id(), Some("app-b"));
        let error = within("the refusal", b.fetch_chunk(StreamChunkId::new(stream, 0), None))
            .await
            .unwrap_err();
        assert_eq!(
            error,
            RequestError::Remote(format!("Client app-b not authorized to read stream {stream}.").into())
        );

        let a = within("app-a", as_app("app-a", "secret-of-a").create_client(server.local_addr()))
            .await
            .unwrap();
        let chunk = within("the chunk", a.fetch_chunk(StreamChunkId::new(stream, 0), None))
            .await
            .unwrap();
        assert_eq!(chunk, "for a");

        // An app the server does not know, or another app's secret, gets nowhere.
        for (app, secret) in [("app-c", "secret-of-c"), ("app-a", "secret-of-b")] {
            let error = within("the refusal", as_app(app, secret).create_client(server.local_addr()))
                .await
                .unwrap_err();
            assert!(
                matches!(error, ConnectError::Security(SecurityError::AuthenticationFailed { .. })),
                "{app}: {error:?}"
            );
        }
    })
}

#[test]
fn envs_with_the_same_secret_talk_and_a_wrong_secret_is_a_typed_error() {
    block_on(async {
        let rec = Recorder::default();
        let server = rpc::RpcEnv::create(
            rt(),
            server_config("secure-server")
                .to_builder()
                .with_security(Security::secret(SECRET))
                .build()
                .unwrap(),
        )
        .unwrap();
        server.setup_endpoint("probe", Probe::new(&rec)).unwrap();

        let client = rpc::RpcEnv::create(
            rt(),
            client_config("secure-client")
                .to_builder()
                .with_security(Security::secret(SECRET))
                .build()
                .unwrap(),
        )
        .unwrap();
        let probe = lookup(&client, &server, "probe").await;
        let reply = within("the ask", probe.ask(Cmd::Echo("over gcm".into()))).await;
        assert_eq!(reply.unwrap(), "over gcm");

        let stranger = rpc::RpcEnv::create(
            rt(),
            client_config("stranger")
                .to_builder()
                .with_security(Security::secret("wrong"))
                .build()
                .unwrap(),
        )
        .unwrap();
        let error = within(
            "the refusal",
            stranger.setup_endpoint_ref::<Cmd, String>(addr(&server), "probe"),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                &error,
                rpc::SetupError::Lookup(rpc::RpcError::Security {
                    cause: SecurityError::AuthenticationFailed { .. },
                    ..
                })
            ),
            "{error:?}"
        );
        // An env without security is told the peer requires it.
        let plain = rpc::RpcEnv::create(rt(), client_config("plain")).unwrap();
        let error = within(
            "the refusal",
            plain.setup_endpoint_ref::<Cmd, String>(addr(&server), "probe"),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                &error,
                rpc::SetupError::Lookup(rpc::RpcError::Security {
                    cause: SecurityError::AuthenticationRequired { .. },
                    ..
                })
            ),
            "{error:?}"
        );
        assert_eq!(count(&rec.entries(), "ask:"), 1, "only the authenticated ask");
        shutdown(&[&client, &stranger, &plain, &server]).await;
    })
}

/// A server identity for `server.test` signed by a fresh CA, a client trusting that CA, and
/// a client trusting another CA.
fn tls_configs() -> (TlsConfig, TlsConfig, TlsConfig) {
    fn ca() -> (rcgen::Certificate, rcgen::KeyPair) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        (params.self_signed(&key).unwrap(), key)
    }
    let (ca_cert, ca_key) = ca();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["server.test".to_owned()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    let server = TlsConfig::new()
        .with_identity_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
        .unwrap();
    let client = TlsConfig::new()
        .with_trust_pem(ca_cert.pem().as_bytes())
        .unwrap();
    let (other_ca, _) = ca();
    let stranger = TlsConfig::new()
        .with_trust_pem(other_ca.pem().as_bytes())
        .unwrap();
    (server, client, stranger)
}

/// An RPC, a chunk, a 2 MiB file stream and an upload over `client`; checks each.
async fn exercise(client: &TransportClient, served: &Served, what: &str) {
    const MIB: usize = 1024 * 1024;
    let body = big_body(MIB + 1);
    let reply = within("an rpc", client.send_rpc(body.clone(), None)).await;
    assert!(reply.unwrap() == body, "{what}: the rpc's echo differs");
    let stream = served
        .streams
        .register_stream(client.client_id().unwrap_or(SPARK_RPC_APP_ID), vec![big_body(70_000)], None);
    let chunk = within("a chunk", client.fetch_chunk(StreamChunkId::new(stream, 0), None))
        .await
        .unwrap();
    assert!(chunk == big_body(70_000), "{what}: the chunk differs");
    let file = within("a file stream", client.stream("file", None).read_to_end())
        .await
        .unwrap();
    assert!(file == contents(2 * MIB), "{what}: the file differs");
    let upload = client.upload_stream("meta".into(), body.len() as u64, pieces(body), None);
    assert_eq!(within("an upload", upload).await.unwrap(), (MIB + 1).to_string());
}

#[test]
fn sasl_authenticates_in_clear_or_with_its_layer_and_refuses_a_wrong_secret() {
    block_on(async {
        for encrypt in [false, true] {
            let security =
                Security::secret(SECRET).with_mechanism(AuthMechanism::Sasl { encrypt });
            let served = Served::new(2 * 1024 * 1024);
            let server = bind(served.clone(), security.clone());
            let client = within("a connection", factory(security).create_client(server.local_addr()))
                .await
                .unwrap();
            assert_eq!(client.client_id(), Some(SPARK_RPC_APP_ID));
            exercise(&client, &served, &format!("sasl encrypt={encrypt}")).await;
            let accepted = server.connections();
            // Only SASL without its layer leaves the bytes alone for sendfile.
            assert_eq!(accepted[0].zero_copy_bytes() > 0, !encrypt && sendfile_here());

            let wrong = Security::secret("wrong").with_mechanism(AuthMechanism::Sasl { encrypt });
            let error = within("the refusal", factory(wrong).create_client(server.local_addr()))
                .await
                .unwrap_err();
            assert!(
                matches!(error, ConnectError::Security(SecurityError::AuthenticationFailed { .. })),
                "{error:?}"
            );
            eventually("the failure counted", || server.stats().auth_failures == 1).await;
            server.close();
        }
    })
}

/// Whether this adapter sends file bodies with `sendfile` on plain connections.
fn sendfile_here() -> bool {
    cfg!(target_os = "linux")
}

#[test]
fn an_aes_client_with_the_fallback_reaches_a_sasl_server_and_without_it_does_not() {
    block_on(async {
        let served = Served::new(2 * 1024 * 1024);
        let server = bind(
            served.clone(),
            Security::secret(SECRET).with_mechanism(AuthMechanism::spark_default()),
        );
        let aes = Security::secret(SECRET).with_mechanism(AuthMechanism::aes_gcm());
        let error = within("the refusal", factory(aes.clone()).create_client(server.local_addr()))
            .await
            .unwrap_err();
        assert!(
            matches!(error, ConnectError::Security(SecurityError::AuthenticationFailed { .. })),
            "{error:?}"
        );
        let client = within(
            "a connection",
            factory(aes.with_sasl_fallback(true)).create_client(server.local_addr()),
        )
        .await
        .unwrap();
        exercise(&client, &served, "aes falling back to sasl").await;

        // And an AES server with the fallback takes a SASL client.
        let served = Served::new(2 * 1024 * 1024);
        let server = bind(
            served.clone(),
            Security::secret(SECRET).with_sasl_fallback(true),
        );
        let sasl = Security::secret(SECRET).with_mechanism(AuthMechanism::spark_default());
        let client = within("a connection", factory(sasl).create_client(server.local_addr()))
            .await
            .unwrap();
        exercise(&client, &served, "sasl to an aes server").await;
    })
}

#[test]
fn tls_carries_everything_alone_and_under_each_mechanism_and_refuses_an_untrusted_server() {
    block_on(async {
        let (server_tls, client_tls, stranger_tls) = tls_configs();
        let cases = [
            ("tls", Security::tls(server_tls.clone()), Security::tls(client_tls.clone())),
            (
                "tls + sasl",
                Security::secret(SECRET)
                    .with_mechanism(AuthMechanism::spark_default())
                    .with_tls(server_tls.clone()),
                Security::secret(SECRET)
                    .with_mechanism(AuthMechanism::spark_default())
                    .with_tls(client_tls.clone()),
            ),
            (
                "tls + aes-gcm",
                Security::secret(SECRET).with_tls(server_tls.clone()),
                Security::secret(SECRET).with_tls(client_tls.clone()),
            ),
        ];
        for (what, at_server, at_client) in cases {
            let served = Served::new(2 * 1024 * 1024);
            let server = bind(served.clone(), at_server);
            let client = within("a connection", factory(at_client).create_client(server.local_addr()))
                .await
                .unwrap();
            exercise(&client, &served, what).await;
            assert_eq!(server.connections()[0].zero_copy_bytes(), 0, "{what}");
            server.close();
        }

        let served = Served::new(10);
        let server = bind(served.clone(), Security::tls(server_tls));
        let error = within(
            "the refusal",
            factory(Security::tls(stranger_tls)).create_client(server.local_addr()),
        )
        .await
        .unwrap_err();
        let ConnectError::Security(SecurityError::Tls { reason, .. }) = &error else {
            panic!("{error:?}");
        };
        // rustls' reason (both CAs have rcgen's default name, so it finds the wrong issuer
        // and reports the signature).
        assert!(
            reason.contains("invalid peer certificate"),
            "rustls' reason is shown: {reason}"
        );
        // A client without TLS gets nothing from a TLS server.
        let plain = within("a plain connection", factory(Security::none()).create_client(server.local_addr()))
            .await
            .unwrap();
        assert!(within("the refusal", plain.send_rpc("hi".into(), None)).await.is_err());
        eventually("both failures counted", || server.stats().auth_failures == 2).await;
        assert_eq!(served.count(), 0);
    })
}

/// Regression: the handshake's state (a TLS connection among it) sat inline in
/// `create_client`'s future, and so in every future awaiting a connection; async-std's
/// `block_on` copies such a future several times on its thread's stack, which overflowed.
#[test]
fn awaiting_a_connection_stays_small_whatever_the_security() {
    block_on(async {
        let (_, client_tls, _) = tls_configs();
        let factory = factory(Security::secret(SECRET).with_tls(client_tls));
        let connect = factory.create_client(localhost());
        let size = size_of_val(&connect);
        assert!(size < 4096, "create_client's future is {size} bytes");
    })
}
