//! Evictions on their way to Redis: a bounded queue, applied in order by one task that
//! retries each until Redis answers. A failed read never makes an eviction skip its turn
//! (the pause after a failure is for lookups only), and a stall only delays the news.
//!
//! - A scope already queued (the same token, the same user) takes a later eviction of the
//!   same scope with it: applied after both were asked, it covers both.
//! - A `*` clear covers everything queued before it.
//! - Past [`BOUND`] queued, the queue is given up for one `*` clear: every instance drops its
//!   local cache when Redis answers again. Blunt, but no revocation is lost; a warning and a
//!   counter say so.
//! - On a cluster, a master down fails only its slots' evictions: one that fails goes to the
//!   back ([`Queue::requeue`]) so that the others are applied meanwhile, and its news is told
//!   ahead of it (`told`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::{oneshot, Notify};

use crate::resolve::Scope;

/// Evictions waiting at most: past it, they are given up for one `*` clear.
pub(super) const BOUND: usize = 1024;

/// One eviction waiting for Redis, and who waits for it to be applied.
pub(super) struct Queued {
    pub(super) scope: Scope,
    waiters: Vec<oneshot::Sender<()>>,
    /// Whether every instance was told already, ahead of the Redis part (which waits for its
    /// slot's master).
    pub(super) told: bool,
}

impl Queued {
    /// The same waiters, for another eviction that covers this one.
    pub(super) fn instead(self, scope: Scope) -> Queued {
        Queued {
            scope,
            waiters: self.waiters,
            told: false,
        }
    }

    /// Tells whoever waits that the eviction reached Redis.
    pub(super) fn applied(self) {
        for waiter in self.waiters {
            let _ = waiter.send(());
        }
    }
}

#[derive(Default)]
pub(super) struct Queue {
    waiting: Mutex<VecDeque<Queued>>,
    wake: Notify,
    /// Evictions given up for a `*` clear since start.
    given_up: AtomicU64,
}

impl Queue {
    /// Queues `scope`; `done` hears when it reached Redis (or is dropped with the handle).
    pub(super) fn push(&self, scope: Scope, done: oneshot::Sender<()>) {
        {
            let mut waiting = crate::lock::lock(&self.waiting);
            let same = (scope != Scope::All)
                .then(|| waiting.iter_mut().find(|q| q.scope == scope))
                .flatten();
            if let Some(same) = same {
                same.waiters.push(done);
            } else if scope == Scope::All || waiting.len() >= BOUND {
                if scope != Scope::All {
                    let dropped = waiting.len() as u64 + 1;
                    self.given_up.fetch_add(dropped, Ordering::Relaxed);
                    tracing::warn!(
                        dropped,
                        "redis unreachable and {BOUND} evictions queued: giving them up for \
                         one clear of every instance's cache, sent when redis answers again"
                    );
                }
                // Everything queued is covered by the clear: one turn for all of it.
                let waiters = waiting.drain(..).flat_map(|q| q.waiters).chain([done]);
                let clear = Queued {
                    scope: Scope::All,
                    waiters: waiters.collect(),
                    told: false,
                };
                waiting.push_back(clear);
            } else {
                waiting.push_back(Queued {
                    scope,
                    waiters: vec![done],
                    told: false,
                });
            }
        }
        self.wake.notify_one();
    }

    /// Puts back an eviction that failed, behind the others (a cluster's master down fails
    /// only its slots): into a queued clear that covers it, or a queued one of the same scope
    /// (applied later, it covers both), else at the back.
    pub(super) fn requeue(&self, queued: Queued) {
        {
            let mut waiting = crate::lock::lock(&self.waiting);
            let covering = waiting
                .iter_mut()
                .find(|q| q.scope == Scope::All || q.scope == queued.scope);
            match covering {
                Some(covering) => covering.waiters.extend(queued.waiters),
                None => waiting.push_back(queued),
            }
        }
        self.wake.notify_one();
    }

    /// The next eviction to apply, once there is one.
    pub(super) async fn next(&self) -> Queued {
        loop {
            // Registered before looking, so a push in between is not missed.
            let woken = self.wake.notified();
            if let Some(queued) = crate::lock::lock(&self.waiting).pop_front() {
                return queued;
            }
            woken.await;
        }
    }

    /// Evictions given up for a `*` clear since start.
    pub(super) fn gave_up(&self, evictions: u64) {
        self.given_up.fetch_add(evictions, Ordering::Relaxed);
    }

    pub(super) fn given_up(&self) -> u64 {
        self.given_up.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    fn scopes(&self) -> Vec<Scope> {
        crate::lock::lock(&self.waiting)
            .iter()
            .map(|q| q.scope)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::TokenKey;

    fn push(queue: &Queue, scope: Scope) -> oneshot::Receiver<()> {
        let (done, heard) = oneshot::channel();
        queue.push(scope, done);
        heard
    }

    #[tokio::test]
    async fn in_order_and_a_repeated_scope_coalesced() {
        let queue = Queue::default();
        let (a, b) = (Scope::User(1), Scope::Token(TokenKey([7; 32])));
        let mut first = push(&queue, a);
        push(&queue, b);
        let mut again = push(&queue, a);
        assert_eq!(
            queue.scopes(),
            [a, b],
            "the second revocation of user 1 joined the first"
        );
        let next = queue.next().await;
        assert_eq!(next.scope, a);
        next.applied();
        assert!(
            first.try_recv().is_ok() && again.try_recv().is_ok(),
            "both told"
        );
        assert_eq!(queue.next().await.scope, b);
    }

    #[test]
    fn a_clear_covers_what_was_queued_before_it() {
        let queue = Queue::default();
        push(&queue, Scope::User(1));
        push(&queue, Scope::All);
        push(&queue, Scope::User(2));
        assert_eq!(queue.scopes(), [Scope::All, Scope::User(2)]);
        assert_eq!(queue.given_up(), 0, "covered, not given up");
    }

    #[test]
    fn past_the_bound_the_queue_is_given_up_for_one_clear() {
        let queue = Queue::default();
        let mut heard = Vec::new();
        for id in 0..=BOUND as u64 {
            heard.push(push(&queue, Scope::User(id)));
        }
        assert_eq!(queue.scopes(), [Scope::All]);
        assert_eq!(queue.given_up(), BOUND as u64 + 1);
        let clear = crate::lock::lock(&queue.waiting).pop_front().unwrap();
        clear.applied();
        assert!(
            heard.iter_mut().all(|h| h.try_recv().is_ok()),
            "every waiter hears of the clear that covers it"
        );
    }
}
