//! Metadata of push-merged blocks: `TransportClient::send_merged_block_meta_req` against a
//! server whose handler hands out a `MergedBlockMetaReqHandler` (Spark's
//! `sendMergedBlockMetaReq` and `MergedBlockMetaReqHandler`), and every way such a call ends:
//! served, failed, refused, timed out, disconnected.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rpc::RequestError;
use rpc::{
    MergedBlockMeta, MergedBlockMetaReqHandler, MergedBlockMetaRequest, MergedBlockMetaResponder,
    RpcHandler, RpcResponder, TransportClient, TransportClientFactory,
    TransportServer,
};

use super::transport::{big_body, localhost, Echo};
use super::util::*;

/// Serves merged block metadata by the request's app id: `serve` answers from another task
/// with [`meta_for`], `big` with 1 MiB of metadata, `fail` fails, `drop` drops the responder,
/// `keep` keeps it unanswered, `panic` panics. RPCs are echoed.
#[derive(Default)]
struct Merged {
    kept: Mutex<Vec<MergedBlockMetaResponder>>,
}

/// What [`Merged`] answers to `request`: every field of the request, so the test sees that
/// each arrived, and a chunk count derived from them.
fn meta_for(request: &MergedBlockMetaRequest) -> MergedBlockMeta {
    MergedBlockMeta {
        chunk_count: request.shuffle_id + request.reduce_id,
        body: format!(
            "{}/{}/{}/{}",
            request.app_id, request.shuffle_id, request.shuffle_merge_id, request.reduce_id
        )
        .into(),
    }
}

impl RpcHandler for Merged {
    fn receive(&self, _: &TransportClient, message: Bytes, responder: RpcResponder) {
        responder.reply(message).unwrap();
    }

    fn merged_block_meta_req_handler(&self) -> Option<&dyn MergedBlockMetaReqHandler> {
        Some(self)
    }
}

impl MergedBlockMetaReqHandler for Merged {
    fn receive_merged_block_meta_req(
        &self,
        _: &TransportClient,
        request: MergedBlockMetaRequest,
        responder: MergedBlockMetaResponder,
    ) {
        match request.app_id.as_str() {
            "fail" => responder.fail("no merged block here").unwrap(),
            "drop" => drop(responder),
            "keep" => self.kept.lock().unwrap().push(responder),
            "panic" => panic!("merged metadata is cursed"),
            "big" => responder
                .reply(MergedBlockMeta {
                    chunk_count: 3,
                    body: big_body(1024 * 1024),
                })
                .unwrap(),
            _ => {
                // Answer later, from another task: responders are Send + 'static.
                drop(spawn(async move {
                    let _ = responder.reply(meta_for(&request));
                }));
            }
        }
    }
}

fn request(app_id: &str, shuffle_id: i32, shuffle_merge_id: i32, reduce_id: i32) -> MergedBlockMetaRequest {
    MergedBlockMetaRequest {
        app_id: app_id.to_owned(),
        shuffle_id,
        shuffle_merge_id,
        reduce_id,
    }
}

/// A [`Merged`] server and a client connected to it.
async fn serve() -> (TransportServer, Arc<Merged>, TransportClient) {
    let merged = Arc::new(Merged::default());
    let server =
        TransportServer::bind(rt(), localhost(), merged.clone(), transport_config())
            .unwrap();
    let factory =
        TransportClientFactory::new(rt(), Arc::new(Echo::default()), transport_config());
    let client = within("a connection", factory.create_client(server.local_addr()))
        .await
        .unwrap();
    (server, merged, client)
}

#[test]
fn merged_block_meta_requests_are_served_with_their_chunk_count_and_body() {
    block_on(async {
        let (server, _, client) = serve().await;
        let requests: Vec<_> = (0..20)
            .map(|i| request(&format!("app-{i}"), i, 7, i - 10))
            .collect();
        // All in flight at once on one connection, answered from other tasks in any order.
        let calls: Vec<_> = requests
            .iter()
            .map(|r| client.send_merged_block_meta_req(r, None))
            .collect();
        assert!(calls.iter().all(|c| c.request_id().is_some()));
        for (r, call) in requests.iter().zip(calls) {
            let meta = within("the metadata", call).await.unwrap();
            assert_eq!(meta, meta_for(r));
        }
        let meta = within(
            "1 MiB of metadata",
            client.send_merged_block_meta_req(&request("big", 1, 0, 0), None),
        )
        .await
        .unwrap();
        assert_eq!(meta.chunk_count, 3);
        assert_eq!(meta.body, big_body(1024 * 1024));
        assert_eq!(
            within("an rpc after them", client.send_rpc("rpc".into(), None))
                .await
                .unwrap(),
            "rpc"
        );
        server.close();
    })
}

#[test]
fn a_failed_dropped_or_panicking_merged_block_meta_request_fails_with_the_reason() {
    block_on(async {
        let (server, _, client) = serve().await;
        for (app, reason) in [
            ("fail", "no merged block here"),
            ("drop", "the request was dropped without a reply"),
            ("panic", "merged metadata is cursed"),
        ] {
            let err = within(
                "a failure",
                client.send_merged_block_meta_req(&request(app, 1, 2, 3), None),
            )
            .await
            .unwrap_err();
            assert!(
                matches!(&err, RequestError::Remote(m) if m.contains(reason)),
                "{app}: {err}"
            );
            // The connection stays usable for both kinds of call.
            let meta = within(
                "metadata after it",
                client.send_merged_block_meta_req(&request("after", 1, 2, 3), None),
            )
            .await
            .unwrap();
            assert_eq!(meta, meta_for(&request("after", 1, 2, 3)), "after {app}");
        }
        server.close();
    })
}

#[test]
fn a_server_without_a_merged_block_meta_handler_refuses_the_request() {
    block_on(async {
        let server = TransportServer::bind(
            rt(),
            localhost(),
            Arc::new(Echo::default()),
            transport_config(),
        )
        .unwrap();
        let factory = TransportClientFactory::new(
            rt(),
            Arc::new(Echo::default()),
            transport_config(),
        );
        let client = within("a connection", factory.create_client(server.local_addr()))
            .await
            .unwrap();
        let err = within(
            "the refusal",
            client.send_merged_block_meta_req(&request("app", 1, 2, 3), None),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err,
            RequestError::Remote("this peer serves no merged block metadata".into())
        );
        assert_eq!(
            within("an rpc after it", client.send_rpc("still here".into(), None))
                .await
                .unwrap(),
            "still here"
        );
        server.close();
    })
}

#[test]
fn a_merged_block_meta_request_times_out_and_its_late_answer_is_discarded() {
    block_on(async {
        let (server, merged, client) = serve().await;
        let timeout = Duration::from_millis(50);
        let err = within(
            "the timeout",
            client.send_merged_block_meta_req(&request("keep", 1, 2, 3), Some(timeout)),
        )
        .await
        .unwrap_err();
        assert_eq!(err, RequestError::TimedOut { after: timeout });
        eventually("the request to have arrived", || {
            merged.kept.lock().unwrap().len() == 1
        })
        .await;
        let late = merged.kept.lock().unwrap().pop().unwrap();
        late.reply(MergedBlockMeta {
            chunk_count: 1,
            body: "late".into(),
        })
        .unwrap();
        eventually("the late answer to be counted", || {
            client.stats().unmatched_replies == 1
        })
        .await;
        let meta = within(
            "metadata after it",
            client.send_merged_block_meta_req(&request("next", 4, 5, 6), None),
        )
        .await
        .unwrap();
        assert_eq!(meta, meta_for(&request("next", 4, 5, 6)));
        server.close();
    })
}

#[test]
fn a_merged_block_meta_request_fails_when_the_connection_ends_mid_call() {
    block_on(async {
        let (server, merged, client) = serve().await;
        let call = client.send_merged_block_meta_req(&request("keep", 1, 2, 3), None);
        eventually("the request to arrive", || {
            merged.kept.lock().unwrap().len() == 1
        })
        .await;
        server.close();
        let err = within("the disconnect", call).await.unwrap_err();
        assert!(matches!(err, RequestError::Disconnected(_)), "{err}");
        // The responder outlived its connection: answering it is refused, not a panic.
        let kept = merged.kept.lock().unwrap().pop().unwrap();
        assert!(kept
            .reply(MergedBlockMeta {
                chunk_count: 0,
                body: Bytes::new(),
            })
            .is_err());
        let err = within(
            "a refusal after the end",
            client.send_merged_block_meta_req(&request("serve", 1, 2, 3), None),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, RequestError::NotSent(_)), "{err}");
    })
}
