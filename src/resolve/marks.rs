//! Invalidation marks: which cached keys belong to which user, and what was invalidated
//! when, so that a load already in flight when a token or a user is evicted (or the whole
//! cache cleared) cannot put its older answer back. Every fill and every invalidation of the
//! store goes through here, under one lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::store::Entries;
use super::Scope;
use crate::lock::lock;
use crate::token::{KeyMap, TokenKey};
use crate::user::Authentication;

/// Fills between two sweeps of the coherence maps.
const SWEEP_EVERY: u32 = 1024;
/// Invalidation marks (of tokens, and of users) kept before a sweep; see
/// [`Marks::bound`].
pub(super) const MAX_MARKS: usize = 4096;

/// The marks, and the generation counter they are dated by: bumped by every invalidation;
/// a load remembers the value it started under.
pub(super) struct Marks {
    generation: AtomicU64,
    coherence: Mutex<Coherence>,
    /// How long a mark must outlive any load that started before it.
    lifetime: Duration,
}

/// Who owns which cached keys, and what was invalidated when. Guarded by one lock, which
/// every fill and every invalidation takes: a fill checks the marks and inserts under it, so
/// an invalidation is either seen by the fill or evicts what the fill inserted.
#[derive(Default)]
struct Coherence {
    users: HashMap<u64, UserKeys>,
    /// Tokens invalidated one by one: generation and when, and whether by a sign-out (a
    /// session that missed it ends saying so).
    tokens: KeyMap<(u64, Instant, bool)>,
    /// Loads that started before this generation store nothing: set by `clear`, and when
    /// too many marks collapse into it.
    cleared_at: u64,
    /// How many users carry an `invalidated` mark.
    user_marks: usize,
    fills_since_sweep: u32,
}

/// A user's list of keys is not pruned below this many.
const PRUNE_FROM: usize = 16;

#[derive(Default)]
struct UserKeys {
    /// The user's cached tokens; may hold keys that left the cache (and repeats) until the
    /// next prune, which comes when it has doubled since the last one.
    keys: Vec<TokenKey>,
    /// How many keys the last prune left.
    pruned_to: usize,
    /// Generation and time of the last invalidation of this user.
    invalidated: Option<(u64, Instant)>,
    /// The newest `invalidateTokensAt` (ms) id6 showed for this user.
    invalidate_tokens_at: Option<u64>,
}

impl Marks {
    pub(super) fn new(lifetime: Duration) -> Self {
        Marks {
            generation: AtomicU64::new(0),
            coherence: Mutex::default(),
            lifetime,
        }
    }

    /// The generation a load starting now runs under; see [`fill`](Self::fill).
    #[inline]
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The next generation, for an eviction whose entries are gone already: a reader of the
    /// generation (a request, before its lookup) that sees the old one may have found them;
    /// one that sees the new one came after they were gone. Bumped first, a request could
    /// read the new generation, still find an entry, and never learn of its eviction.
    /// Fills take the coherence lock, as evictions do, so the order there is no matter.
    fn bump(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Stores in `entries` what a load that started under generation `started` learnt (id6
    /// answered `age` ago), unless an invalidation since then makes it stale (a user; a
    /// rejection is final, and always stored). The user whose other tokens it evicted (id6
    /// showed a newer revocation), if it did: their open sessions are to be asked about now.
    pub(super) fn fill(
        &self,
        entries: &Entries,
        key: TokenKey,
        verdict: &Authentication,
        started: u64,
        age: Duration,
    ) -> Option<u64> {
        let mut coherence = lock(&self.coherence);
        let mut revoked = None;
        // An eviction since the load began: its answer may predate what the eviction
        // reflects.
        let evicted_since = coherence.cleared_at > started
            || coherence
                .tokens
                .get(&key)
                .is_some_and(|(at, _, _)| *at > started);
        match verdict {
            Authentication::Unavailable(_) | Authentication::Anonymous => return None,
            // Stored whatever was evicted since: id6's refusal of a token is final (forged,
            // expired, revoked, its user gone; no later answer makes it good again), so it
            // cannot undo an eviction, while refusing it would leave an older user of this
            // token served (and kept stale), e.g. after the marks collapsed into a floor.
            Authentication::Rejected(why) => {
                entries.insert(key, Authentication::Rejected(*why), Duration::ZERO)
            }
            Authentication::Authenticated(_) if evicted_since => return None,
            Authentication::Authenticated(user) => {
                let owner = coherence.users.entry(user.id).or_default();
                if owner.invalidated.is_some_and(|(at, _)| at > started) {
                    tracing::debug!(
                        user_id = user.id,
                        "not caching an answer older than its invalidation"
                    );
                    return None;
                }
                let mut new_mark = false;
                if let Some(shown) = user.invalidate_tokens_at {
                    if owner
                        .invalidate_tokens_at
                        .is_some_and(|known| shown < known)
                    {
                        // An answer from before a revocation we already saw: it may name a
                        // token that revocation killed.
                        tracing::debug!(
                            user_id = user.id,
                            "not caching an answer older than a known revocation"
                        );
                        return None;
                    }
                    // Unknown before (None) counts as older: those tokens predate `shown`.
                    if owner.invalidate_tokens_at.is_none_or(|known| known < shown) {
                        // id6 revoked this user's tokens since we cached some: drop them all,
                        // and mark the user so that answers already in flight for those
                        // tokens are not stored either.
                        tracing::debug!(
                            user_id = user.id,
                            "id6 shows a newer revocation; evicting the user's other tokens"
                        );
                        // (Nothing to protect the first time a revocation is seen with no
                        // token cached: in-flight answers showing an older one are refused by
                        // the check above.)
                        if owner.invalidate_tokens_at.is_some() || !owner.keys.is_empty() {
                            new_mark = self.revoke_keys_of(entries, owner);
                            revoked = Some(user.id);
                        }
                        owner.invalidate_tokens_at = Some(shown);
                    }
                }
                // Pruned when doubled, not on every fill: a prune looks up every key of the
                // user, and on each fill that made a user's n tokens cost n² lookups (a
                // miss for the 10 000th token of one user took 0.4–1 ms, seen in the
                // shared-tier bench).
                if owner.keys.len() >= (2 * owner.pruned_to).max(PRUNE_FROM) {
                    owner.keys.retain(|k| *k != key && entries.contains_key(k));
                    owner.pruned_to = owner.keys.len();
                }
                owner.keys.push(key);
                entries.insert(key, verdict.clone(), age);
                if new_mark {
                    coherence.user_marks += 1;
                    self.bound(entries, &mut coherence);
                }
            }
        }
        coherence.fills_since_sweep += 1;
        if coherence.fills_since_sweep >= SWEEP_EVERY {
            coherence.fills_since_sweep = 0;
            self.sweep(entries, &mut coherence);
        }
        revoked
    }

    /// Drops index entries whose keys left the cache and marks no load can still predate.
    fn sweep(&self, entries: &Entries, coherence: &mut Coherence) {
        let lifetime = self.lifetime;
        // Marks are dated by the handle's clock, as the loads they outlive are.
        let now = entries.clock.now();
        let elapsed = |when: &Instant| now.saturating_duration_since(*when);
        let mut user_marks = 0;
        coherence.users.retain(|_, owner| {
            owner.keys.retain(|k| entries.contains_key(k));
            owner.pruned_to = owner.keys.len();
            if owner
                .invalidated
                .is_some_and(|(_, when)| elapsed(&when) >= lifetime)
            {
                owner.invalidated = None;
            }
            user_marks += usize::from(owner.invalidated.is_some());
            !owner.keys.is_empty() || owner.invalidated.is_some()
        });
        coherence.user_marks = user_marks;
        coherence
            .tokens
            .retain(|_, (_, when, _)| elapsed(when) < lifetime);
    }

    /// Keeps the marks bounded however fast invalidations come (a mark lives for as long as
    /// a load may still predate it, and a million can come in that time). Past
    /// [`MAX_MARKS`], a sweep drops the expired ones; if more than half remain, all of them
    /// collapse into one floor, as after a `clear`: loads that started before now store no
    /// user. Always safe, since a refused fill costs one more id6 call and no wrong answer
    /// (a rejection is stored whatever the marks say: see [`fill`](Self::fill)); and each
    /// sweep is followed by at least `MAX_MARKS / 2` invalidations before the next, so the
    /// cost per invalidation stays constant.
    fn bound(&self, entries: &Entries, coherence: &mut Coherence) {
        if coherence.tokens.len() <= MAX_MARKS && coherence.user_marks <= MAX_MARKS {
            return;
        }
        self.sweep(entries, coherence);
        if coherence.tokens.len() > MAX_MARKS / 2 || coherence.user_marks > MAX_MARKS / 2 {
            coherence.cleared_at = self.generation();
            coherence.tokens.clear();
            coherence.users.retain(|_, owner| {
                owner.invalidated = None;
                !owner.keys.is_empty()
            });
            coherence.user_marks = 0;
            tracing::debug!("invalidation marks collapsed into one floor");
        }
    }

    /// The widest eviction since `generation` covering `key` (owned by `user_id`): `All`
    /// for a clear, `Token`, or `User`.
    pub(super) fn evicted_since(
        &self,
        key: &TokenKey,
        user_id: u64,
        generation: u64,
    ) -> Option<Scope> {
        if self.generation() == generation {
            return None;
        }
        let coherence = lock(&self.coherence);
        let since = |mark: Option<&(u64, Instant)>| mark.is_some_and(|(at, _)| *at > generation);
        // Only a mark since `generation`: an older one hides no newer eviction of the user.
        let token_mark = coherence
            .tokens
            .get(key)
            .filter(|&&(at, _, _)| at > generation);
        if coherence.cleared_at > generation {
            Some(Scope::All)
        } else if let Some(&(_, _, signed_out)) = token_mark {
            Some(match signed_out {
                true => Scope::SignedOut(*key),
                false => Scope::Token(*key),
            })
        } else if since(
            coherence
                .users
                .get(&user_id)
                .and_then(|u| u.invalidated.as_ref()),
        ) {
            Some(Scope::User(user_id))
        } else {
            None
        }
    }

    /// Forgets `key`'s cached answer (`signed_out`: by a sign-out); no load of it already
    /// in flight stores its answer.
    pub(super) fn invalidate_token(&self, entries: &Entries, key: &TokenKey, signed_out: bool) {
        let mut coherence = lock(&self.coherence);
        entries.invalidate(key);
        let generation = self.bump();
        let now = entries.clock.now();
        coherence.tokens.insert(*key, (generation, now, signed_out));
        self.bound(entries, &mut coherence);
    }

    /// Forgets every cached token of a user; no load in flight can put the user back.
    pub(super) fn invalidate_user(&self, entries: &Entries, user_id: u64) {
        let mut coherence = lock(&self.coherence);
        let owner = coherence.users.entry(user_id).or_default();
        let first_mark = self.revoke_keys_of(entries, owner);
        coherence.user_marks += usize::from(first_mark);
        self.bound(entries, &mut coherence);
    }

    /// Marks a user (no load of theirs already in flight stores its answer) and evicts every
    /// cached token of theirs; whether this is the user's first live mark, for the count.
    fn revoke_keys_of(&self, entries: &Entries, owner: &mut UserKeys) -> bool {
        for key in owner.keys.drain(..) {
            entries.invalidate(&key);
        }
        let first_mark = owner
            .invalidated
            .replace((self.bump(), entries.clock.now()))
            .is_none();
        owner.pruned_to = 0;
        first_mark
    }

    /// Forgets everything; no load in flight will store its answer.
    pub(super) fn clear(&self, entries: &Entries) {
        let mut coherence = lock(&self.coherence);
        entries.invalidate_all();
        coherence.cleared_at = self.bump();
        coherence.users.clear();
        coherence.tokens.clear();
        coherence.user_marks = 0;
    }

    /// Token marks and users in the index.
    #[cfg(test)]
    pub(super) fn len(&self) -> (usize, usize) {
        let coherence = lock(&self.coherence);
        (coherence.tokens.len(), coherence.users.len())
    }
}
