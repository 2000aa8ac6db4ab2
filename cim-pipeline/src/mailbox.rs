//! [`Mailbox`]: what reaches one connection's task from outside it.
//!
//! A connection receives two kinds of mail: deliveries to write, in order, and orders (close
//! for a kick or because it fell behind, sync again, catch up). Both share one small structure,
//! a bounded queue, a few flags and the reader's waker under one lock, instead of a channel
//! each: an idle connection is most of what a server holds, and two tokio channels cost it
//! more than 1.4 KiB before the first message. Waiting for mail holds no state of its own
//! (the waker lives in the mailbox), so it adds nothing to the connection's future.
//!
//! Orders never wait behind deliveries: the connection reads them first, and a full delivery
//! queue cannot hold them back. The first order to close wins; a later one is dropped (the
//! connection closes once, for the first reason).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use cim_proto::KickReason;

use crate::delivery::Delivery;

/// A drained queue that grew beyond this many entries gives its memory back.
const KEEP_CAPACITY: usize = 16;

/// An order for a connection's task, from outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Tell the client why, then close.
    Kick(KickReason),
    /// The delivery queue overflowed: close with an error.
    Slow,
    /// Live deliveries may have been missed (the session had lapsed in the store, so senders
    /// saw the user offline): send again, from the store, what the connection has not sent.
    Resync,
    /// Live deliveries may have been lost with another server (it died or restarted with
    /// fan-outs in flight): catch up from the store soon, at a random moment within a few
    /// seconds so that a server's connections do not all read the store at once, while live
    /// deliveries go on.
    CatchUp,
}

/// One piece of mail, in the order the connection should handle it.
#[derive(Debug)]
pub enum Mail {
    /// An order (see [`Control`]); orders come before deliveries.
    Order(Control),
    /// The next delivery to write.
    Delivery(Arc<Delivery>),
}

/// What became of a delivery offered to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// It is queued.
    Queued,
    /// The queue was full: the connection is told to close as too slow, and the delivery is
    /// dropped (it is in the store, for the next login's sync).
    Full,
    /// The connection has ended.
    Closed,
}

/// The mail of one connection: written by anyone, read by the connection's task alone.
#[derive(Debug)]
pub struct Mailbox {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    deliveries: VecDeque<Arc<Delivery>>,
    capacity: usize,
    /// The order to close with (a kick, or `Slow`), once given.
    end: Option<Control>,
    resync: bool,
    catch_up: bool,
    closed: bool,
    /// The connection's task, while it waits for mail.
    waiting: Option<Waker>,
}

impl State {
    fn take_order(&mut self) -> Option<Control> {
        if let Some(end) = self.end.take() {
            return Some(end);
        }
        if std::mem::take(&mut self.resync) {
            return Some(Control::Resync);
        }
        if std::mem::take(&mut self.catch_up) {
            return Some(Control::CatchUp);
        }
        None
    }

    /// Orders first, then deliveries in order.
    fn next_mail(&mut self) -> Option<Mail> {
        match self.take_order() {
            Some(order) => Some(Mail::Order(order)),
            None => self.pop_delivery().map(Mail::Delivery),
        }
    }

    fn pop_delivery(&mut self) -> Option<Arc<Delivery>> {
        let delivery = self.deliveries.pop_front();
        if self.deliveries.is_empty() && self.deliveries.capacity() > KEEP_CAPACITY {
            self.deliveries = VecDeque::new();
        }
        delivery
    }
}

impl Mailbox {
    /// An empty mailbox that holds up to `capacity` deliveries (at least one).
    pub fn new(capacity: usize) -> Self {
        Mailbox {
            state: Mutex::new(State {
                deliveries: VecDeque::new(),
                capacity: capacity.max(1),
                end: None,
                resync: false,
                catch_up: false,
                closed: false,
                waiting: None,
            }),
        }
    }

    /// Queues `delivery` without waiting. A full queue is an order to close as too slow.
    pub fn push(&self, delivery: &Arc<Delivery>) -> Pushed {
        let mut state = self.lock();
        if state.closed {
            return Pushed::Closed;
        }
        if state.deliveries.len() >= state.capacity {
            if state.end.is_none() {
                state.end = Some(Control::Slow);
                wake(state);
            }
            return Pushed::Full;
        }
        state.deliveries.push_back(Arc::clone(delivery));
        // The waker is taken by the first wake-up: a task is woken once however much arrives
        // before it reads.
        wake(state);
        Pushed::Queued
    }

    /// Gives the connection an order; false if it has ended. A second order to close is
    /// dropped: the connection closes for the first.
    pub fn order(&self, control: Control) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        match control {
            Control::Kick(_) | Control::Slow => {
                if state.end.is_none() {
                    state.end = Some(control);
                }
            }
            Control::Resync => state.resync = true,
            Control::CatchUp => state.catch_up = true,
        }
        wake(state);
        true
    }

    /// Waits for the next piece of mail: orders first, then deliveries in order. Cancel-safe:
    /// nothing is taken until it is returned. One task reads a mailbox: a second waiting at
    /// the same time takes the first's place.
    pub async fn next(&self) -> Mail {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// The next piece of mail, or `Pending` with `cx`'s task woken when some arrives.
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Mail> {
        let mut state = self.lock();
        if let Some(mail) = state.next_mail() {
            return Poll::Ready(mail);
        }
        if !state
            .waiting
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            state.waiting = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// The next piece of mail, if there is one now.
    pub fn try_next(&self) -> Option<Mail> {
        self.lock().next_mail()
    }

    /// The next order, if there is one now (deliveries stay queued).
    pub fn take_order(&self) -> Option<Control> {
        self.lock().take_order()
    }

    /// The next delivery, if there is one now, even with an order waiting (a batch of
    /// deliveries is written before the next order is read).
    pub fn try_delivery(&self) -> Option<Arc<Delivery>> {
        self.lock().pop_delivery()
    }

    /// Ends the mailbox: what is queued is dropped, and later mail is refused.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.deliveries = VecDeque::new();
        state.waiting = None;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a push, a pop or a flag: a panic elsewhere never leaves
        // the state half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Wakes the waiting task, if any, once the lock is released.
fn wake(mut state: MutexGuard<'_, State>) {
    let waiting = state.waiting.take();
    drop(state);
    if let Some(waker) = waiting {
        waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use cim_core::{ConversationId, MessageId, Seq, UserId};

    use super::*;

    fn delivery(seq: u64) -> Arc<Delivery> {
        Arc::new(Delivery {
            message_id: MessageId(seq),
            conversation: ConversationId::direct(UserId(1), UserId(2)),
            seq: Seq(seq),
            sender: UserId(1),
            frame: Bytes::from_static(b"x"),
        })
    }

    fn seq_of(mail: Option<Mail>) -> Option<u64> {
        match mail {
            Some(Mail::Delivery(delivery)) => Some(delivery.seq.0),
            _ => None,
        }
    }

    #[test]
    fn deliveries_come_out_in_order() {
        let mailbox = Mailbox::new(4);
        for seq in 1..=3 {
            assert_eq!(mailbox.push(&delivery(seq)), Pushed::Queued);
        }
        assert_eq!(seq_of(mailbox.try_next()), Some(1));
        assert_eq!(mailbox.try_delivery().map(|d| d.seq.0), Some(2));
        assert_eq!(seq_of(mailbox.try_next()), Some(3));
        assert!(mailbox.try_next().is_none());
    }

    #[test]
    fn a_full_queue_orders_the_connection_closed_as_slow() {
        let mailbox = Mailbox::new(1);
        assert_eq!(mailbox.push(&delivery(1)), Pushed::Queued);
        assert_eq!(mailbox.push(&delivery(2)), Pushed::Full);
        assert!(matches!(
            mailbox.try_next(),
            Some(Mail::Order(Control::Slow))
        ));
    }

    #[test]
    fn orders_overtake_deliveries_and_the_first_close_wins() {
        let mailbox = Mailbox::new(4);
        mailbox.push(&delivery(1));
        assert!(mailbox.order(Control::CatchUp));
        assert!(mailbox.order(Control::Kick(KickReason::Replaced)));
        assert!(mailbox.order(Control::Kick(KickReason::Idle)));
        assert!(matches!(
            mailbox.try_next(),
            Some(Mail::Order(Control::Kick(KickReason::Replaced)))
        ));
        assert_eq!(mailbox.take_order(), Some(Control::CatchUp));
        assert_eq!(mailbox.take_order(), None);
        assert_eq!(seq_of(mailbox.try_next()), Some(1));
    }

    #[test]
    fn repeated_orders_to_sync_are_one() {
        let mailbox = Mailbox::new(4);
        mailbox.order(Control::Resync);
        mailbox.order(Control::Resync);
        assert_eq!(mailbox.take_order(), Some(Control::Resync));
        assert_eq!(mailbox.take_order(), None);
    }

    #[test]
    fn a_closed_mailbox_refuses_mail_and_drops_what_it_held() {
        let mailbox = Mailbox::new(4);
        mailbox.push(&delivery(1));
        mailbox.close();
        assert_eq!(mailbox.push(&delivery(2)), Pushed::Closed);
        assert!(!mailbox.order(Control::Resync));
        assert!(mailbox.try_next().is_none());
    }

    #[test]
    fn a_drained_queue_gives_its_memory_back() {
        let mailbox = Mailbox::new(1024);
        for seq in 1..=100 {
            mailbox.push(&delivery(seq));
        }
        while mailbox.try_next().is_some() {}
        assert_eq!(mailbox.lock().deliveries.capacity(), 0);
    }

    #[tokio::test]
    async fn next_wakes_for_mail_sent_while_waiting() {
        let mailbox = Arc::new(Mailbox::new(4));
        let waiting = tokio::spawn({
            let mailbox = Arc::clone(&mailbox);
            async move { seq_of(Some(mailbox.next().await)) }
        });
        tokio::task::yield_now().await;
        mailbox.push(&delivery(7));
        let got = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("woken")
            .expect("no panic");
        assert_eq!(got, Some(7));
    }

    #[tokio::test]
    async fn a_wake_up_is_kept_when_the_wait_was_dropped() {
        let mailbox = Mailbox::new(4);
        // The wait is polled once (registered), then dropped unfinished, as a `select!` does
        // when another branch wins.
        {
            let next = mailbox.next();
            tokio::pin!(next);
            assert!(futures_poll_once(next.as_mut()).await.is_none());
        }
        mailbox.push(&delivery(1));
        mailbox.push(&delivery(2));
        let first = tokio::time::timeout(Duration::from_secs(10), mailbox.next())
            .await
            .expect("mail");
        assert_eq!(seq_of(Some(first)), Some(1));
        let second = tokio::time::timeout(Duration::from_secs(10), mailbox.next())
            .await
            .expect("mail");
        assert_eq!(seq_of(Some(second)), Some(2));
    }

    /// Polls `future` once; its output if it was ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(future: F) -> Option<F::Output> {
        let mut future = future;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut future).poll(cx) {
                std::task::Poll::Ready(output) => Some(output),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
