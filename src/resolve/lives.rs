//! The tokens that open connections hold on to: who waits on each, and when it is checked
//! next.
//!
//! One [`Life`] per token, however many connections share it: a watcher is a receiver on
//! the token's channel (bytes, no task, no timer). One driver task per resolver, alive only
//! while some token is watched, wakes at the earliest check due and hands the due tokens to
//! the resolver, which rechecks them through the cache (so a recheck costs what one request
//! does, and joins a request's call in flight). A token evicted by itself (a sign-out, an
//! invalidation, a 401 on a typed call) ends at once; a user's or every token is made due at
//! once, and id6's answer decides: a `disconnect` ends them, a profile change (which evicts
//! the user's tokens too) leaves the connections open.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::Scope;
use crate::clock::Clock;
use crate::error::TokenRejection;
use crate::lock::lock;
use crate::token::{KeyMap, TokenKey, UserToken};

/// How a token's life stands: `None` while it is good, then why it ended.
pub(crate) type Ending = Option<TokenRejection>;

/// Every watched token of a resolver.
#[derive(Default)]
pub(crate) struct Lives {
    state: Mutex<State>,
    /// The driver's alarm: a token became due earlier than it planned to wake.
    wake: Notify,
    ids: AtomicU64,
    /// The handle's clock, which schedules every check.
    clock: Clock,
}

#[derive(Default)]
struct State {
    by_key: KeyMap<Life>,
    /// Each user's watched tokens, for a user's eviction (a set of pairs: a few dozen bytes
    /// a token, where a map of vectors would take a hundred more).
    by_user: BTreeSet<(u64, TokenKey)>,
    /// When each token is next checked; entries whose time no longer matches their life's
    /// are skipped (cheaper than removing from the middle of a heap).
    queue: BinaryHeap<Reverse<(Instant, TokenKey)>>,
    /// The running driver task, by number (it stops when nothing is watched, or with its
    /// runtime).
    driver: Option<u64>,
    /// Checks handed to the resolver and not settled yet.
    checking: usize,
}

struct Life {
    /// Tells this token's watchers how its life stands.
    ending: watch::Sender<Ending>,
    /// To ask id6 again: kept only while a connection watches it.
    token: UserToken,
    user_id: u64,
    /// When it is checked next; `None` while a check runs.
    due: Option<Instant>,
    /// Made due by its user's eviction (a `disconnect`, a profile change): a user's action
    /// waits on that check, which is not background work.
    asked: bool,
    /// Told apart from a later life of the same token, for watchers that outlive this one.
    id: u64,
    /// The watchers holding it, counted under the lock (not the channel's receivers, which
    /// `ended` futures clone too).
    watchers: usize,
}

/// A token due for a recheck: its key, which life of it, the token to ask about, and
/// whether a user's action asked for it (else it is background work).
pub(crate) struct Due {
    pub(crate) key: TokenKey,
    pub(crate) life: u64,
    pub(crate) token: UserToken,
    pub(crate) asked: bool,
}

/// `clear` (and a Redis reconnection) makes every watched token due: their rechecks are
/// spread over this window rather than sent to id6 at once.
const SPREAD_ALL: std::time::Duration = std::time::Duration::from_secs(1);

/// What a recheck found.
pub(crate) enum Checked {
    /// Still good: check again at this instant.
    Good(Instant),
    /// id6 refused it: the connections end.
    Dead(TokenRejection),
}

/// One connection's hold on a token's life. Dropping the last one forgets the token.
pub(crate) struct Watcher {
    lives: Arc<Lives>,
    key: TokenKey,
    id: u64,
    ending: watch::Receiver<Ending>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("ended", &*self.ending.borrow())
            .finish_non_exhaustive()
    }
}

impl Lives {
    pub(crate) fn new(clock: Clock) -> Self {
        Lives {
            clock,
            ..Lives::default()
        }
    }

    /// A watcher on `key`'s life; the token is checked first at `first_check`. Returns the
    /// number of the driver the caller must start, if none runs.
    pub(crate) fn watch(
        self: &Arc<Self>,
        key: TokenKey,
        token: impl FnOnce() -> UserToken,
        user_id: u64,
        first_check: Instant,
    ) -> (Watcher, Option<u64>) {
        let mut state = lock(&self.state);
        let state = &mut *state;
        let mut new = false;
        let life = state.by_key.entry(key).or_insert_with(|| {
            new = true;
            Life {
                ending: watch::Sender::new(None),
                token: token(),
                user_id,
                due: Some(first_check),
                asked: false,
                id: self.ids.fetch_add(1, Ordering::Relaxed),
                watchers: 0,
            }
        });
        life.watchers += 1;
        let watcher = Watcher {
            lives: self.clone(),
            key,
            id: life.id,
            ending: life.ending.subscribe(),
        };
        let start = match state.driver {
            Some(_) => None,
            None => {
                let driver = self.ids.fetch_add(1, Ordering::Relaxed);
                state.driver = Some(driver);
                Some(driver)
            }
        };
        if new {
            state.by_user.insert((user_id, key));
            state.schedule(first_check, key);
            // The running driver may plan to sleep past this token's first check.
            if start.is_none() {
                self.wake.notify_one();
            }
        }
        (watcher, start)
    }

    /// An eviction: a token evicted by itself is dead to the app (a sign-out, an
    /// invalidation, a 401 on a typed call), and its connections end; a user's or every
    /// token is asked about again now (a `disconnect` ends them through id6's answer, a
    /// profile change, which evicts the user's tokens too, does not).
    pub(crate) fn evicted(&self, scope: Scope) {
        let now = self.clock.tokio_now();
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        match scope {
            Scope::Token(key) => return state.end(&key, TokenRejection::TokenRevoked),
            Scope::SignedOut(key) => return state.end(&key, TokenRejection::SignedOut),
            Scope::User(_) | Scope::All => {}
        }
        // A check running now may have started before the eviction: one more after it.
        let any = match scope {
            Scope::User(user_id) => {
                let users = (user_id, TokenKey([0; 32]))..=(user_id, TokenKey([u8::MAX; 32]));
                let keys: Vec<TokenKey> = state.by_user.range(users).map(|(_, k)| *k).collect();
                for key in &keys {
                    if let Some(life) = state.by_key.get_mut(key) {
                        life.due = Some(now);
                        life.asked = true;
                        state.schedule(now, *key);
                    }
                }
                !keys.is_empty()
            }
            Scope::All => {
                for (key, life) in &mut state.by_key {
                    life.due = Some(now + spread(key));
                }
                state.rebuild_queue();
                !state.by_key.is_empty()
            }
            Scope::Token(_) | Scope::SignedOut(_) => false,
        };
        drop(guard);
        if any {
            self.wake.notify_one();
        }
    }

    /// Ends `key`'s connections for id6's reason `why` (a typed call it refused).
    pub(crate) fn end(&self, key: &TokenKey, why: TokenRejection) {
        lock(&self.state).end(key, why);
    }

    /// The tokens due at `now`, to recheck (each is marked as being checked), and when the
    /// next one is due. `Err(())` when nothing is watched any more: driver `driver` stops
    /// (and the next watcher starts another).
    pub(crate) fn take_due(
        &self,
        now: Instant,
        driver: u64,
    ) -> Result<(Vec<Due>, Option<Instant>), ()> {
        let mut state = lock(&self.state);
        let state = &mut *state;
        if state.by_key.is_empty() {
            if state.driver == Some(driver) {
                state.driver = None;
            }
            state.queue.clear();
            return Err(());
        }
        let mut due = Vec::new();
        while let Some(Reverse((at, key))) = state.queue.peek().copied() {
            let Some(life) = state.by_key.get_mut(&key) else {
                state.queue.pop();
                continue;
            };
            if life.due != Some(at) {
                // Superseded (rescheduled, or its check is running).
                state.queue.pop();
                continue;
            }
            if at > now {
                return Ok((due, Some(at)));
            }
            state.queue.pop();
            life.due = None;
            state.checking += 1;
            due.push(Due {
                key,
                life: life.id,
                token: life.token.clone(),
                asked: std::mem::take(&mut life.asked),
            });
        }
        Ok((due, None))
    }

    /// Records what a recheck of `key`'s life `id` found (nothing, if that life is over).
    pub(crate) fn settle(&self, key: TokenKey, id: u64, checked: Checked) {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        state.checking = state.checking.saturating_sub(1);
        self.clock.progressed();
        let Some(life) = state.by_key.get_mut(&key).filter(|life| life.id == id) else {
            return;
        };
        match checked {
            Checked::Dead(why) => state.end(&key, why),
            // An eviction while the check ran made it due already: keep that.
            Checked::Good(_) if life.due.is_some() => {}
            Checked::Good(at) => {
                life.due = Some(at);
                state.schedule(at, key);
                drop(guard);
                self.wake.notify_one();
            }
        }
    }

    /// Driver `driver` ended (its runtime shut down, or there was none): the next watcher
    /// starts another.
    pub(crate) fn driver_ended(&self, driver: u64) {
        let mut state = lock(&self.state);
        if state.driver == Some(driver) {
            state.driver = None;
        }
    }

    /// Wakes when a token becomes due earlier than planned.
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Whether no check is due at `now` nor running: what the test kit's `settle` waits
    /// for.
    #[cfg(feature = "testing")]
    pub(crate) fn idle_at(&self, now: Instant) -> bool {
        let state = lock(&self.state);
        state.checking == 0
            && state
                .by_key
                .values()
                .all(|life| life.due.is_some_and(|due| due > now))
    }

    /// Tokens watched now (for tests and the bench).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.state).by_key.len()
    }
}

/// Where in [`SPREAD_ALL`] a token's recheck falls: its key is a hash already.
fn spread(key: &TokenKey) -> std::time::Duration {
    let [a, b, ..] = key.0;
    SPREAD_ALL * u32::from(u16::from_le_bytes([a, b])) / u32::from(u16::MAX)
}

impl State {
    /// Tells `key`'s watchers why its life ended, and forgets it.
    fn end(&mut self, key: &TokenKey, why: TokenRejection) {
        if let Some(life) = self.by_key.get(key) {
            life.ending.send_replace(Some(why));
            self.forget(key);
        }
    }

    /// Plans `key`'s next check at `at`. Superseded plans stay in the queue until popped;
    /// when they outnumber the live ones, the queue is rebuilt, so that tokens watched
    /// and forgotten over and over cost no memory.
    fn schedule(&mut self, at: Instant, key: TokenKey) {
        self.queue.push(Reverse((at, key)));
        if self.queue.len() > 2 * self.by_key.len() + 64 {
            self.rebuild_queue();
        }
    }

    fn rebuild_queue(&mut self) {
        let plans = self
            .by_key
            .iter()
            .filter_map(|(key, life)| Some(Reverse((life.due?, *key))));
        self.queue = plans.collect();
    }

    /// Forgets a token; the map gives memory back when it is mostly empty (every
    /// connection closed returns what they took).
    fn forget(&mut self, key: &TokenKey) {
        let Some(life) = self.by_key.remove(key) else {
            return;
        };
        self.by_user.remove(&(life.user_id, *key));
        if self.by_key.capacity() > 4 * self.by_key.len() + 64 {
            self.by_key.shrink_to(2 * self.by_key.len());
            self.rebuild_queue();
        }
    }
}

impl Watcher {
    /// Resolves when the token's life ends, with why.
    pub(crate) fn ended(&self) -> impl std::future::Future<Output = TokenRejection> + Send {
        let mut ending = self.ending.clone();
        async move {
            let ended = ending.wait_for(Option::is_some).await.map(|ending| *ending);
            match ended {
                Ok(ending) => ending.unwrap_or(TokenRejection::TokenRevoked),
                // The life was dropped without an ending: the resolver is gone, and with it
                // every way to tell. Never resolve.
                Err(_) => std::future::pending().await,
            }
        }
    }

    /// Why the token's life ended, if it has.
    pub(crate) fn ending(&self) -> Ending {
        *self.ending.borrow()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let mut state = lock(&self.lives.state);
        let Some(life) = state.by_key.get_mut(&self.key).filter(|l| l.id == self.id) else {
            return;
        };
        life.watchers -= 1;
        if life.watchers == 0 {
            state.forget(&self.key);
            drop(state);
            // The driver stops when nothing is watched.
            self.lives.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn token(n: u8) -> (TokenKey, UserToken) {
        let text = format!("token-{n}");
        (TokenKey::of(&text), UserToken::from_found(&text))
    }

    #[tokio::test]
    async fn one_life_per_token_and_gone_with_its_last_watcher() {
        let lives = Arc::new(Lives::default());
        let (key, t) = token(1);
        let later = Instant::now() + Duration::from_secs(60);
        let (a, start) = lives.watch(key, || t.clone(), 7, later);
        let driver = start.expect("the first watcher starts the driver");
        let (b, start) = lives.watch(key, || unreachable!("one token per life"), 7, later);
        assert!(start.is_none());
        let (c, _) = lives.watch(key, || unreachable!("one token per life"), 7, later);
        assert_eq!(lives.len(), 1);
        drop(a);
        drop(b);
        assert_eq!(lives.len(), 1, "one watcher left");
        drop(c);
        assert_eq!(lives.len(), 0, "the last watcher takes the token with it");
        assert!(
            lives.take_due(Instant::now(), driver).is_err(),
            "the driver stops"
        );
        let (_again, start) = lives.watch(key, || t.clone(), 7, later);
        assert!(start.is_some(), "the next watcher starts another");
    }

    #[tokio::test]
    async fn an_eviction_makes_its_tokens_due_and_a_refusal_ends_them() {
        let lives = Arc::new(Lives::default());
        let (k1, t1) = token(1);
        let (k2, t2) = token(2);
        let later = Instant::now() + Duration::from_secs(60);
        let (w1, _) = lives.watch(k1, || t1, 7, later);
        let (w2, _) = lives.watch(k2, || t2, 8, later);
        let (due, next) = lives.take_due(Instant::now(), 0).unwrap();
        assert!(due.is_empty());
        assert_eq!(next, Some(later));

        lives.evicted(Scope::User(7));
        let (due, _) = lives.take_due(Instant::now(), 0).unwrap();
        assert_eq!(due.iter().map(|d| d.key).collect::<Vec<_>>(), [k1]);
        assert!(due[0].asked, "a user's eviction is a user's action");
        lives.settle(k1, due[0].life, Checked::Dead(TokenRejection::UserNotFound));
        assert_eq!(w1.ended().await, TokenRejection::UserNotFound);
        assert_eq!(w1.ending(), Some(TokenRejection::UserNotFound));
        assert_eq!(w2.ending(), None, "another user's token lives on");

        // Every token, spread over a second; a good recheck plans the next one.
        lives.evicted(Scope::All);
        let (due, _) = lives.take_due(Instant::now() + SPREAD_ALL, 0).unwrap();
        assert_eq!(due.len(), 1);
        assert!(!due[0].asked, "every token at once is background work");
        let again = Instant::now() + Duration::from_secs(5);
        lives.settle(k2, due[0].life, Checked::Good(again));
        let (due, next) = lives.take_due(Instant::now(), 0).unwrap();
        assert!(due.is_empty());
        assert_eq!(next, Some(again));
    }

    #[tokio::test]
    async fn a_token_evicted_by_itself_ends_at_once() {
        let lives = Arc::new(Lives::default());
        let (key, t) = token(1);
        let (w, _) = lives.watch(key, || t, 7, Instant::now() + Duration::from_secs(60));
        lives.evicted(Scope::Token(key));
        assert_eq!(w.ending(), Some(TokenRejection::TokenRevoked));
        assert_eq!(lives.len(), 0);
    }

    #[tokio::test]
    async fn an_eviction_during_a_check_asks_again_after_it() {
        let lives = Arc::new(Lives::default());
        let (key, t) = token(1);
        let (_w, _) = lives.watch(key, || t, 7, Instant::now());
        let (due, _) = lives.take_due(Instant::now(), 0).unwrap();
        assert_eq!(due.len(), 1);
        lives.evicted(Scope::User(7));
        let later = Instant::now() + Duration::from_secs(60);
        lives.settle(key, due[0].life, Checked::Good(later));
        let (due, _) = lives.take_due(Instant::now(), 0).unwrap();
        assert_eq!(
            due.len(),
            1,
            "the check that raced the eviction does not count"
        );
    }

    #[tokio::test]
    async fn a_check_of_an_ended_life_does_not_touch_the_next_one() {
        let lives = Arc::new(Lives::default());
        let (key, t) = token(1);
        let (_w, _) = lives.watch(key, || t.clone(), 7, Instant::now());
        let (due, _) = lives.take_due(Instant::now(), 0).unwrap();
        lives.evicted(Scope::Token(key));
        let (w, _) = lives.watch(key, || t, 7, Instant::now() + Duration::from_secs(60));
        lives.settle(
            key,
            due[0].life,
            Checked::Dead(TokenRejection::InvalidToken),
        );
        assert_eq!(
            w.ending(),
            None,
            "the old life's check says nothing of the new one"
        );
    }

    /// Seen 8 times in 100 000 rounds when "last" was read off the channel's receiver
    /// count, which a dropping watcher still holds after its lock is released.
    #[test]
    fn the_last_two_watchers_dropped_at_once_forget_the_token() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let lives = Arc::new(Lives::default());
        let (key, t) = token(1);
        let later = Instant::now() + Duration::from_secs(60);
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let (tx, rx) = std::sync::mpsc::channel::<Watcher>();
        let helper = {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                while let Ok(watcher) = rx.recv() {
                    barrier.wait();
                    drop(watcher);
                    barrier.wait();
                }
            })
        };
        for _ in 0..20_000 {
            let (a, _) = lives.watch(key, || t.clone(), 7, later);
            let (b, _) = lives.watch(key, || t.clone(), 7, later);
            tx.send(b).unwrap();
            barrier.wait();
            drop(a);
            barrier.wait();
            assert_eq!(lives.len(), 0, "a token outlived its last watcher");
        }
        drop(tx);
        helper.join().unwrap();
    }
}
