//! Mailboxes: each endpoint's inbox, shared by the env (which posts) and the endpoint's
//! task (which takes). The task itself is [`runner`](super::runner)'s.

use std::any::Any;
use std::time::Instant;

use bytes::Bytes;
use rpc_proto::{ConnectionError, InboxError, InboxItem, RpcAddress};

use super::call::ReplyTo;
use super::cancel::CancelFlag;
use crate::inbox_cell::InboxCell;
use crate::sync::Arc;
use crate::transport::TransportClient;

/// A message's payload: the value itself from a local sender, bytes from a remote one.
pub(crate) enum Payload {
    Local(Box<dyn Any + Send>),
    Remote {
        bytes: Bytes,
        client: Option<TransportClient>,
    },
}

/// What goes into an inbox.
pub(crate) enum Posted {
    Message {
        payload: Payload,
        /// The transport request id of a remote ask, for logs.
        request: Option<rpc_proto::RequestId>,
        reply: Option<ReplyTo>,
        sender: Option<RpcAddress>,
        deadline: Option<Instant>,
        /// Set for asks: raised when the caller stops waiting.
        cancel: Option<Arc<CancelFlag>>,
    },
    Connected(RpcAddress),
    Disconnected(RpcAddress),
    NetworkError(ConnectionError, RpcAddress),
}

/// One endpoint's inbox, shared by the env (which posts) and the endpoint's task.
pub(crate) struct Mailbox {
    pub(crate) name: String,
    /// The identity of the endpoint's message and reply types (see
    /// [`RpcMessage`](crate::env::message::RpcMessage)), which lookups and every remote message are checked
    /// against.
    pub(crate) identity: String,
    inbox: InboxCell<Posted>,
}

impl Mailbox {
    pub(crate) fn new(name: &str, identity: String, concurrent: bool, capacity: usize) -> Self {
        Self {
            name: name.to_owned(),
            identity,
            inbox: InboxCell::new(concurrent, capacity),
        }
    }

    /// Posts a message into the inbox; gives it back if the endpoint is stopped or its inbox
    /// is full.
    pub(crate) fn post(&self, posted: Posted) -> Result<(), InboxError<Box<Posted>>> {
        self.inbox.post(posted).map_err(|e| match e {
            InboxError::Full(m) => InboxError::Full(Box::new(m)),
            other => InboxError::Stopped(Box::new(other.into_inner())),
        })
    }

    /// Posts a network event, even past the inbox's capacity: events are bounded by the
    /// connections, and dropping one would break their alternation (see "Network events").
    pub(crate) fn notify(&self, posted: Posted) {
        let _ = self.inbox.post_unbounded(posted);
    }

    /// Messages queued or being handled.
    pub(crate) fn messages(&self) -> usize {
        self.inbox.messages()
    }

    /// How many messages the inbox holds before refusing more.
    pub(crate) fn capacity(&self) -> usize {
        self.inbox.capacity()
    }

    /// Stops the endpoint: what is queued is still handled, then `on_stop` runs.
    pub(crate) fn stop(&self) {
        self.inbox.stop();
    }

    /// The next item for the endpoint, once there is one.
    pub(crate) async fn next(&self) -> InboxItem<Posted> {
        self.inbox.next().await
    }

    /// The endpoint finished with the item it took last.
    pub(crate) fn done(&self) {
        self.inbox.done();
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Poll, Wake, Waker};

    use super::*;
    use crate::sync::atomic::{AtomicUsize, Ordering};

    /// Counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: crate::sync::unmodeled::Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn message(n: u32) -> Posted {
        Posted::Message {
            payload: Payload::Local(Box::new(n)),
            request: None,
            reply: None,
            sender: None,
            deadline: None,
            cancel: None,
        }
    }

    /// What `posted` carries: a local message's number, or an event's port.
    fn label(posted: &Posted) -> u32 {
        match posted {
            Posted::Message {
                payload: Payload::Local(value),
                ..
            } => *value.downcast_ref::<u32>().expect("a u32"),
            Posted::Connected(a) | Posted::Disconnected(a) | Posted::NetworkError(_, a) => {
                u32::from(a.port)
            }
            Posted::Message { .. } => unreachable!("only local messages here"),
        }
    }

    /// Polls the endpoint's next item once, with `waker`.
    fn take(mailbox: &Mailbox, waker: &Waker) -> Option<InboxItem<Posted>> {
        let next = std::pin::pin!(mailbox.next());
        match next.poll(&mut Context::from_waker(waker)) {
            Poll::Ready(item) => Some(item),
            Poll::Pending => None,
        }
    }

    /// Takes the next item, which must be a message, and marks it done; its label.
    fn handle(mailbox: &Mailbox) -> u32 {
        match take(mailbox, Waker::noop()) {
            Some(InboxItem::Message(posted)) => {
                mailbox.done();
                label(&posted)
            }
            _ => panic!("expected a message"),
        }
    }

    fn started(capacity: usize) -> Mailbox {
        let mailbox = Mailbox::new("e", "u32 -> ()".to_owned(), false, capacity);
        assert!(matches!(
            take(&mailbox, Waker::noop()),
            Some(InboxItem::Start)
        ));
        mailbox.done();
        mailbox
    }

    #[test]
    fn messages_are_taken_in_the_order_they_were_posted() {
        let mailbox = started(100);
        for n in 0..10 {
            assert!(mailbox.post(message(n)).is_ok());
        }
        let taken: Vec<u32> = (0..10).map(|_| handle(&mailbox)).collect();
        assert_eq!(taken, (0..10).collect::<Vec<_>>());
        assert!(take(&mailbox, Waker::noop()).is_none(), "nothing more");
    }

    #[test]
    fn a_full_mailbox_gives_the_message_back_until_one_is_handled() {
        let mailbox = started(2);
        assert_eq!(mailbox.capacity(), 2);
        assert!(mailbox.post(message(1)).is_ok());
        assert!(mailbox.post(message(2)).is_ok());
        match mailbox.post(message(3)) {
            Err(InboxError::Full(refused)) => assert_eq!(label(&refused), 3),
            _ => panic!("expected the message back as Full"),
        }
        // Being handled still counts against the capacity: only `done` makes room.
        let Some(InboxItem::Message(first)) = take(&mailbox, Waker::noop()) else {
            panic!("expected a message")
        };
        assert_eq!(mailbox.messages(), 2);
        assert!(matches!(mailbox.post(message(3)), Err(InboxError::Full(_))));
        mailbox.done();
        drop(first);
        assert_eq!(mailbox.messages(), 1);
        assert!(mailbox.post(message(3)).is_ok());
        assert_eq!([handle(&mailbox), handle(&mailbox)], [2, 3]);
    }

    #[test]
    fn network_events_are_never_refused_and_keep_their_place() {
        let mailbox = started(1);
        assert!(mailbox.post(message(1)).is_ok());
        mailbox.notify(Posted::Connected(RpcAddress::new("peer", 2)));
        mailbox.notify(Posted::Disconnected(RpcAddress::new("peer", 3)));
        assert!(matches!(mailbox.post(message(4)), Err(InboxError::Full(_))));
        assert_eq!(
            [handle(&mailbox), handle(&mailbox), handle(&mailbox)],
            [1, 2, 3]
        );
    }

    #[test]
    fn posting_wakes_the_waiting_endpoint_once() {
        let mailbox = started(10);
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        assert!(take(&mailbox, &waker).is_none());
        assert!(mailbox.post(message(1)).is_ok());
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        // The waker was taken: a second post wakes nobody more.
        assert!(mailbox.post(message(2)).is_ok());
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(handle(&mailbox), 1);
    }

    #[test]
    fn a_stopped_mailbox_refuses_posts_and_hands_out_the_rest_then_stop() {
        let mailbox = started(10);
        assert!(mailbox.post(message(1)).is_ok());
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let Some(InboxItem::Message(_)) = take(&mailbox, &waker) else {
            panic!("expected a message")
        };
        assert!(mailbox.post(message(2)).is_ok());
        assert!(take(&mailbox, &waker).is_none(), "serial: one at a time");
        mailbox.stop();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "stop wakes the endpoint");
        match mailbox.post(message(3)) {
            Err(InboxError::Stopped(refused)) => assert_eq!(label(&refused), 3),
            _ => panic!("expected the message back as Stopped"),
        }
        mailbox.done();
        assert_eq!(handle(&mailbox), 2, "what was queued is still handled");
        assert!(matches!(
            take(&mailbox, Waker::noop()),
            Some(InboxItem::Stop)
        ));
    }
}
