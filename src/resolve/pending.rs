//! A load's answer, awaited by every request that missed on its key: written once by the
//! load's task, each waiter woken outside any lock.
//!
//! futures' `Shared` (used before) wakes its waiters while holding its lock: a waiter woken
//! on another thread met the lock still held and slept on it, one more thread hop per miss.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use super::policy::Answer;
use crate::error::{Error, Kind};
use crate::lock::lock;
use crate::user::Authentication;

/// A resolution in flight (or done), shared by every request that waits on it. Each clone
/// is a waiter of its own.
pub(crate) struct Pending {
    slot: Arc<Slot>,
    /// This waiter's place among the slot's wakers, once it waited.
    seat: Option<usize>,
}

struct Slot {
    answer: OnceLock<Answer>,
    /// Taken, all at once, when the answer is set.
    wakers: Mutex<Vec<Option<Waker>>>,
}

impl Pending {
    /// A load not answered yet, and what answers it (at the latest when dropped).
    pub(super) fn new() -> (Pending, Completion) {
        let slot = Arc::new(Slot {
            answer: OnceLock::new(),
            wakers: Mutex::default(),
        });
        let completion = Completion(slot.clone());
        (Pending { slot, seat: None }, completion)
    }

    /// An answer known already.
    pub(super) fn ready(answer: Answer) -> Pending {
        let (pending, completion) = Pending::new();
        completion.finish(answer);
        pending
    }
}

impl Clone for Pending {
    /// Another waiter (its own seat).
    fn clone(&self) -> Self {
        Pending {
            slot: self.slot.clone(),
            seat: None,
        }
    }
}

impl Future for Pending {
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        let Pending { slot, seat } = self.get_mut();
        if let Some(answer) = slot.answer.get() {
            *seat = None;
            return Poll::Ready(answer.clone());
        }
        let mut wakers = lock(&slot.wakers);
        // Again under the lock: the answer is set before the wakers are taken under it, so
        // a waiter either sees the answer here or is among the wakers taken.
        if let Some(answer) = slot.answer.get() {
            *seat = None;
            return Poll::Ready(answer.clone());
        }
        match *seat {
            Some(at) => match &mut wakers[at] {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                other => *other = Some(cx.waker().clone()),
            },
            None => {
                *seat = Some(wakers.len());
                wakers.push(Some(cx.waker().clone()));
            }
        }
        Poll::Pending
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(seat) = self.seat {
            if let Some(waker) = lock(&self.slot.wakers).get_mut(seat) {
                *waker = None;
            }
        }
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("answered", &self.slot.answer.get().is_some())
            .finish_non_exhaustive()
    }
}

/// What answers a [`Pending`]: [`finish`](Self::finish), or, dropped unfinished (the load's
/// task panicked or its runtime shut down), an `Unavailable` answer.
pub(super) struct Completion(Arc<Slot>);

impl Completion {
    pub(super) fn finish(self, answer: Answer) {
        self.set(answer);
    }

    fn set(&self, answer: Answer) {
        if self.0.answer.set(answer).is_err() {
            return;
        }
        let wakers = std::mem::take(&mut *lock(&self.0.wakers));
        for waker in wakers.into_iter().flatten() {
            waker.wake();
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if self.0.answer.get().is_none() {
            self.set(Answer {
                verdict: Authentication::Unavailable(Error::new(Kind::Runtime(
                    "the id6 call was aborted",
                ))),
                by_policy: false,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anonymous() -> Answer {
        Answer {
            verdict: Authentication::Anonymous,
            by_policy: false,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_waiter_gets_the_one_answer() {
        let (pending, completion) = Pending::new();
        let waiters: Vec<_> = (0..16).map(|_| tokio::spawn(pending.clone())).collect();
        // One waiter gone before the answer: the others still get it.
        drop(pending);
        tokio::task::yield_now().await;
        completion.finish(anonymous());
        for waiter in waiters {
            assert!(waiter.await.unwrap().verdict.is_anonymous());
        }
    }

    #[tokio::test]
    async fn an_unfinished_completion_answers_unavailable() {
        let (pending, completion) = Pending::new();
        drop(completion);
        assert!(pending.await.verdict.unavailable().is_some());
        assert!(Pending::ready(anonymous()).await.verdict.is_anonymous());
    }
}
