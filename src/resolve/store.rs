//! The store: moka tiers of id6's verdicts per token key (users, rejected tokens, and the
//! stale users the failure policy may serve), each entry stamped by the handle's clock, with
//! a front of hot entries (users and rejected tokens alike) read first.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwapOption;
use std::time::Duration;

use moka::notification::RemovalCause;
use moka::sync::Cache;

use crate::clock::{Clock, Stamp};
use crate::config::{OnUnavailable, ResolverSettings};
use crate::error::TokenRejection;
use crate::token::{KeyHasher, TokenKey};
use crate::user::{Authentication, User};

/// The local tiers. Each entry carries when it was stored, by the handle's [`Clock`],
/// which decides expiry; moka's TTLs (the same lengths) only free the memory.
#[derive(Clone)]
pub(super) struct Entries {
    /// Read before `users` and `rejected`; holds only entries they hold (see [`Front`]).
    front: Arc<Front>,
    users: Cache<TokenKey, Arc<Cached>, KeyHasher>,
    /// Rejected tokens, with id6's reason and when.
    rejected: Cache<TokenKey, Arc<Cached>, KeyHasher>,
    /// With [`OnUnavailable::Stale`]: users kept for the grace window past their TTL, served
    /// only when id6 cannot be asked. Invalidated with the rest.
    stale: Option<Cache<TokenKey, (Arc<User>, Stamp), KeyHasher>>,
    cache_ttl: Duration,
    negative_ttl: Duration,
    /// TTL plus the stale grace window.
    stale_ttl: Duration,
    /// Past this age, a hit asks for one refresh.
    refresh_after: Option<Duration>,
    pub(super) clock: Clock,
}

impl Entries {
    pub(super) fn new(settings: &ResolverSettings) -> Self {
        // Past the TTL, the stale tier keeps a user for the grace window.
        let stale_ttl = match settings.on_unavailable {
            OnUnavailable::Stale(grace) => Some(settings.cache_ttl.saturating_add(grace)),
            _ => None,
        };
        let front = Arc::new(Front::new(settings.max_capacity));
        // Whatever moka lets go of leaves the front too, whatever the cause: what it drops on
        // its own (room, age), what an insert replaced (told on the inserting thread, within
        // `insert`: `insert` below relies on it), and what it removed, which the removals below
        // also let go of at once. After a clear, moka's `get` may still return an entry from
        // before it while a new one for its key is being inserted; that old entry, put in
        // front by a hit, leaves it here too. A second `let_go` is harmless.
        let leaves_front = |front: &Arc<Front>| {
            let front = front.clone();
            move |_: Arc<TokenKey>, cached: Arc<Cached>, _: RemovalCause| front.let_go(&cached)
        };
        Entries {
            users: Cache::builder()
                .max_capacity(settings.max_capacity)
                .time_to_live(settings.cache_ttl)
                .eviction_listener(leaves_front(&front))
                .build_with_hasher(KeyHasher::default()),
            // Rejected tokens are what a stranger can mint at will: bounded the same way.
            rejected: Cache::builder()
                .max_capacity(settings.max_capacity)
                .time_to_live(settings.negative_ttl)
                .eviction_listener(leaves_front(&front))
                .build_with_hasher(KeyHasher::default()),
            front,
            stale: stale_ttl.map(|ttl| {
                Cache::builder()
                    .max_capacity(settings.max_capacity)
                    .time_to_live(ttl)
                    .build_with_hasher(KeyHasher::default())
            }),
            cache_ttl: settings.cache_ttl,
            negative_ttl: settings.negative_ttl,
            stale_ttl: stale_ttl.unwrap_or_default(),
            refresh_after: settings.refresh_after,
            clock: settings.clock.clone(),
        }
    }

    /// Whether an answer given this long ago may still be served as a user's.
    pub(super) fn within_ttl(&self, age: Duration) -> bool {
        age < self.cache_ttl
    }

    /// How long a user's answer is served.
    pub(super) fn user_ttl(&self) -> Duration {
        self.cache_ttl
    }

    /// How long ago `then` was, by the handle's clock (its [stamps](Clock::stamp)).
    pub(super) fn since(&self, then: Stamp) -> Duration {
        self.clock.stamp().since(then)
    }
}

/// id6's word on a token as cached: with when id6 said so (for routes that want a recent
/// answer, for refresh-ahead, for the negative TTL) and whether this entry's one refresh was
/// claimed.
pub(super) struct Cached {
    said: Said,
    confirmed: Stamp,
    refresh_claimed: AtomicBool,
    /// Set when moka lets go of this entry: it may no longer enter the [`Front`].
    removed: AtomicBool,
    /// The [`Front`] slot it entered, if it did ([`NO_SLOT`] until then): where a removal
    /// finds it (with a second level, moka's key is not the front's).
    front_slot: AtomicU32,
}

/// What id6 said of a token.
enum Said {
    User(Arc<User>),
    Rejected(TokenRejection),
}

impl Cached {
    fn new(said: Said, confirmed: Stamp) -> Arc<Cached> {
        Arc::new(Cached {
            said,
            confirmed,
            refresh_claimed: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            front_slot: AtomicU32::new(NO_SLOT),
        })
    }

    /// The user id6 named, if it named one.
    pub(super) fn user(&self) -> Option<&Arc<User>> {
        match &self.said {
            Said::User(user) => Some(user),
            Said::Rejected(_) => None,
        }
    }
}

/// A cache hit.
pub(crate) struct Hit {
    pub(crate) verdict: Authentication,
    /// The entry is old enough to refresh, and this hit claimed that refresh: one per entry,
    /// whether it is made, paused or fails (then the entry simply expires).
    pub(crate) refresh: bool,
    /// How long the entry stays an answer.
    pub(crate) fresh_for: Duration,
}

impl Entries {
    /// The hit path: the front by `hot` (the token's [hot key](crate::token::Keying::hot)),
    /// else moka by `key()`, the token's key, computed only then (with a second level, a
    /// SHA-256; `None` for a value no entry can hold), the entry then put in front under
    /// `hot`. With a `max_age`, a user confirmed
    /// by id6 longer ago is no answer: one lookup either way, and the same lookup says
    /// whether to refresh.
    pub(super) fn get(
        &self,
        hot: &TokenKey,
        key: impl FnOnce() -> Option<TokenKey>,
        max_age: Option<Duration>,
    ) -> Option<Hit> {
        if let Some(hit) = self
            .front
            .read(hot, |cached| self.judge(cached, max_age, true))
        {
            return hit;
        }
        let key = key()?;
        let epoch = self.front.epoch();
        let cached = self.in_moka(&key)?;
        self.front.promote(hot, &cached, epoch);
        self.judge(&cached, max_age, true)
    }

    /// [`get`](Self::get) from moka alone, by the token's key: for a load checking the
    /// cache again (`claim`: false, or it would drop the hit's claim of a refresh) and the
    /// typed calls' door, which are no request's hit.
    pub(super) fn lookup(
        &self,
        key: &TokenKey,
        max_age: Option<Duration>,
        claim: bool,
    ) -> Option<Hit> {
        let cached = self.in_moka(key)?;
        self.judge(&cached, max_age, claim)
    }

    fn in_moka(&self, key: &TokenKey) -> Option<Arc<Cached>> {
        self.users.get(key).or_else(|| self.rejected.get(key))
    }

    /// What `cached` answers now: a hit, or nothing if it is too old; `claim`: whether a hit
    /// due for refresh claims it.
    fn judge(&self, cached: &Cached, max_age: Option<Duration>, claim: bool) -> Option<Hit> {
        let age = self.since(cached.confirmed);
        match &cached.said {
            Said::User(user) => {
                if age >= self.cache_ttl || max_age.is_some_and(|max_age| age > max_age) {
                    return None;
                }
                let refresh = claim
                    && self.refresh_after.is_some_and(|after| age > after)
                    && !cached.refresh_claimed.swap(true, Ordering::Relaxed);
                Some(Hit {
                    verdict: Authentication::Authenticated(user.clone()),
                    refresh,
                    fresh_for: self.cache_ttl - age,
                })
            }
            Said::Rejected(why) => (age < self.negative_ttl).then(|| Hit {
                verdict: Authentication::Rejected(*why),
                refresh: false,
                fresh_for: self.negative_ttl - age,
            }),
        }
    }

    /// The last user id6 named for `key`, within the stale grace window.
    pub(super) fn stale(&self, key: &TokenKey) -> Option<Arc<User>> {
        let (user, at) = self.stale.as_ref()?.get(key)?;
        (self.since(at) < self.stale_ttl).then_some(user)
    }

    /// The cached user of `key`, however old.
    pub(super) fn user(&self, key: &TokenKey) -> Option<Arc<User>> {
        self.users.get(key)?.user().cloned()
    }

    /// Whether a user is cached for `key`, however old.
    pub(super) fn has_user(&self, key: &TokenKey) -> bool {
        self.users.contains_key(key)
    }

    /// Removes `key`'s user from moka, then from the front.
    fn remove_user(&self, key: &TokenKey) {
        if let Some(cached) = self.users.remove(key) {
            self.front.let_go(&cached);
        }
    }

    /// Removes `key`'s rejection from moka, then from the front.
    fn remove_rejected(&self, key: &TokenKey) {
        if let Some(cached) = self.rejected.remove(key) {
            self.front.let_go(&cached);
        }
    }

    pub(super) fn contains_key(&self, key: &TokenKey) -> bool {
        self.users.contains_key(key)
            || self.rejected.contains_key(key)
            || self.stale.as_ref().is_some_and(|s| s.contains_key(key))
    }

    /// Stores a verdict id6 gave `age` ago (older than the TTL: nothing to keep).
    pub(super) fn insert(&self, key: TokenKey, verdict: Authentication, age: Duration) {
        match verdict {
            Authentication::Authenticated(user) => {
                let Some(now) = self
                    .clock
                    .stamp()
                    .checked_sub(age)
                    .filter(|_| age < self.cache_ttl)
                else {
                    return;
                };
                self.remove_rejected(&key);
                if let Some(stale) = &self.stale {
                    stale.insert(key, (user.clone(), now));
                }
                // The entry this replaces leaves the front through the eviction listener,
                // which moka calls on this thread within `insert` (cause `Replaced`); fills
                // and removals are serialized by the marks' lock.
                self.users.insert(key, Cached::new(Said::User(user), now));
            }
            Authentication::Rejected(why) => {
                self.remove_user(&key);
                if let Some(stale) = &self.stale {
                    stale.invalidate(&key);
                }
                let cached = Cached::new(Said::Rejected(why), self.clock.stamp());
                // As a user's, above.
                self.rejected.insert(key, cached);
            }
            // Said of no token: never a verdict on one to remember.
            Authentication::Anonymous | Authentication::Unavailable(_) => {}
        }
    }

    pub(super) fn invalidate(&self, key: &TokenKey) {
        self.remove_user(key);
        self.remove_rejected(key);
        if let Some(stale) = &self.stale {
            stale.invalidate(key);
        }
    }

    pub(super) fn invalidate_all(&self) {
        self.users.invalidate_all();
        self.rejected.invalidate_all();
        if let Some(stale) = &self.stale {
            stale.invalidate_all();
        }
        // After moka's: an entry read from moka before its clear is either wiped here or
        // kept out by the epoch.
        self.front.clear();
    }

    /// Users cached, as moka last counted them.
    pub(super) fn user_count(&self) -> u64 {
        self.users.entry_count()
    }

    /// Settles moka's pending bookkeeping first, so the count is current.
    pub(super) fn entry_count(&self) -> u64 {
        self.users.run_pending_tasks();
        self.rejected.run_pending_tasks();
        self.users.entry_count() + self.rejected.entry_count()
    }
}

/// A small front of hot entries (users and rejected tokens), read before moka: one slot per
/// hot key's first bits (a keyed PRF's output: uniform), holding the very `Arc<Cached>` moka
/// holds. A read takes no lock and writes no shared counter ([`ArcSwapOption`]: a
/// thread's own debt slot stands for the reference while the entry is judged), so the
/// requests of one hot user on many cores do not pass a cache line back and forth. moka's
/// `get` also records the read for its eviction policy (now and then running its
/// housekeeping on the caller's thread) and reads its own clock. Ages are still checked by
/// the caller, on the entry.
///
/// It never answers what moka would not (but for the age: moka's own expiry reads its exact
/// clock, the front's judge the coarse one, so an entry may be served up to a tick past
/// moka's TTL): every removal marks the entry removed as moka lets go of it, and a
/// read of the front skips a removed entry. The removal then empties the entry's slot, which
/// the entry names (with a second level, moka names a token by SHA-256, which cannot give
/// the hot key back). A clear of everything bumps the epoch, then clears every slot. Writers
/// of a slot (a promotion, a removal, a clear) take its stripe's lock; an entry enters a
/// slot only if, under that lock, it is not marked removed and no clear began since it was
/// read from moka: a removal racing a promotion either finds the entry in the slot, or
/// marked, or keeps it out. No moka call is made under a stripe's lock (moka may run its
/// eviction listener, which takes one).
struct Front {
    slots: Box<[ArcSwapOption<InFront>]>,
    /// Writers' locks, slot `i`'s at `i % WRITER_STRIPES`: readers never take one.
    writers: Box<[Mutex<()>]>,
    epoch: AtomicU64,
}

/// What a front slot holds: a token's hot key and its cached entry.
struct InFront {
    key: TokenKey,
    cached: Arc<Cached>,
}

/// Slots at most: a few tens of KB; the hottest users of a larger cache share them.
const FRONT_SLOTS: u64 = 4096;

/// Locks for the front's writers, which are rare (a promotion after a moka read, a removal).
const WRITER_STRIPES: usize = 64;

/// [`Cached::front_slot`] of an entry that never entered the front.
const NO_SLOT: u32 = u32::MAX;

impl Front {
    fn new(max_capacity: u64) -> Self {
        let slots = max_capacity.clamp(1, FRONT_SLOTS).next_power_of_two();
        Front {
            slots: (0..slots).map(|_| ArcSwapOption::const_empty()).collect(),
            writers: (0..WRITER_STRIPES).map(|_| Mutex::new(())).collect(),
            epoch: AtomicU64::new(0),
        }
    }

    /// The index of `key`'s slot.
    fn index(&self, key: &TokenKey) -> u32 {
        let bits = u64::from_le_bytes(key.0[..8].try_into().expect("8 bytes"));
        // A power of two (at most FRONT_SLOTS): the mask keeps the low bits.
        (bits & (self.slots.len() as u64 - 1)) as u32
    }

    /// Slot `index`'s writers' lock.
    fn writing(&self, index: u32) -> MutexGuard<'_, ()> {
        self.writers[index as usize % WRITER_STRIPES]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `read` of `key`'s entry, unless its slot holds another token or the entry was
    /// removed. The entry is borrowed for `read` alone: no reference count is taken.
    #[inline]
    fn read<R>(&self, key: &TokenKey, read: impl FnOnce(&Cached) -> R) -> Option<R> {
        let slot = self.slots[self.index(key) as usize].load();
        match &*slot {
            Some(held) if held.key == *key && !held.cached.removed.load(Ordering::SeqCst) => {
                Some(read(&held.cached))
            }
            _ => None,
        }
    }

    /// Read before reading moka, for [`promote`](Self::promote).
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Puts `cached`, read from moka for `key` after `epoch`, in front: unless it was
    /// removed or everything was cleared since.
    fn promote(&self, key: &TokenKey, cached: &Arc<Cached>, epoch: u64) {
        // Named before the entry can be in the slot, and both sides' order is SeqCst: a
        // removal (which marks, then reads the name) finds the slot, or this finds the entry
        // marked and keeps it out.
        let index = self.index(key);
        cached.front_slot.store(index, Ordering::SeqCst);
        let entry = Arc::new(InFront {
            key: *key,
            cached: cached.clone(),
        });
        let _writing = self.writing(index);
        if !cached.removed.load(Ordering::SeqCst) && self.epoch() == epoch {
            self.slots[index as usize].store(Some(entry));
        }
    }

    /// Marks `cached` removed (no read serves it, no promotion takes it), then empties its
    /// slot if it holds it.
    fn let_go(&self, cached: &Arc<Cached>) {
        cached.removed.store(true, Ordering::SeqCst);
        let index = cached.front_slot.load(Ordering::SeqCst);
        let Some(slot) = self.slots.get(index as usize) else {
            return;
        };
        let _writing = self.writing(index);
        if slot
            .load()
            .as_ref()
            .is_some_and(|held| Arc::ptr_eq(&held.cached, cached))
        {
            slot.store(None);
        }
    }

    fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for (index, slot) in (0..).zip(&*self.slots) {
            let _writing = self.writing(index);
            slot.store(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Id6Builder;

    fn entries(max_capacity: u64) -> Entries {
        let settings = Id6Builder::new("http://127.0.0.1:9")
            .max_capacity(max_capacity)
            .validate()
            .unwrap()
            .resolver;
        Entries::new(&settings)
    }

    fn user(id: u64) -> Authentication {
        Authentication::Authenticated(Arc::new(User::new(id, "A")))
    }

    fn id(entries: &Entries, key: &TokenKey) -> Option<u64> {
        entries
            .get(key, || Some(*key), None)?
            .verdict
            .user()
            .map(|u| u.id)
    }

    fn in_front(entries: &Entries, key: &TokenKey) -> bool {
        entries.front.read(key, |_| ()).is_some()
    }

    /// Whether `key`'s slot holds an entry for it, removed or not: what the front keeps.
    fn kept_in_front(entries: &Entries, key: &TokenKey) -> bool {
        let slot = entries.front.slots[entries.front.index(key) as usize].load();
        slot.as_ref().is_some_and(|held| held.key == *key)
    }

    #[test]
    fn every_removal_reaches_the_front() {
        let entries = entries(100);
        let (a, b) = (TokenKey::of("a"), TokenKey::of("b"));
        entries.insert(a, user(1), Duration::ZERO);
        assert_eq!(id(&entries, &a), Some(1));
        assert!(in_front(&entries, &a), "a hit puts the user in front");

        entries.insert(a, user(2), Duration::ZERO);
        assert!(!in_front(&entries, &a));
        assert_eq!(id(&entries, &a), Some(2), "a replaced user is not served");

        entries.invalidate(&a);
        assert_eq!(id(&entries, &a), None);

        entries.insert(a, user(1), Duration::ZERO);
        entries.insert(b, user(3), Duration::ZERO);
        assert_eq!((id(&entries, &a), id(&entries, &b)), (Some(1), Some(3)));
        let revoked = || Authentication::Rejected(TokenRejection::TokenRevoked);
        entries.insert(a, revoked(), Duration::ZERO);
        assert!(entries
            .get(&a, || Some(a), None)
            .unwrap()
            .verdict
            .is_anonymous());
        assert!(
            in_front(&entries, &a),
            "a negative hit puts the rejection in front"
        );
        entries.insert(a, user(4), Duration::ZERO);
        assert_eq!(
            id(&entries, &a),
            Some(4),
            "a rejection replaced is not served"
        );
        entries.insert(a, revoked(), Duration::ZERO);
        assert!(entries
            .get(&a, || Some(a), None)
            .unwrap()
            .verdict
            .is_anonymous());
        entries.invalidate(&a);
        assert!(entries.get(&a, || Some(a), None).is_none() && !in_front(&entries, &a));
        entries.insert(a, revoked(), Duration::ZERO);
        assert!(entries.get(&a, || Some(a), None).is_some());
        entries.invalidate_all();
        assert!(entries.get(&b, || Some(b), None).is_none() && !in_front(&entries, &b));
        assert!(entries.get(&a, || Some(a), None).is_none() && !in_front(&entries, &a));
    }

    /// With a second level, the front names a token by its hot key and every other place by
    /// its SHA-256: a removal, which cannot name the front's slot, still keeps the entry from
    /// being served.
    #[test]
    fn removals_by_the_shared_key_reach_the_front() {
        let entries = entries(100);
        let (hot, key) = (TokenKey([7; 32]), TokenKey::of("a"));
        let get = |entries: &Entries| {
            let asked = std::cell::Cell::new(false);
            let id = entries
                .get(
                    &hot,
                    || {
                        asked.set(true);
                        Some(key)
                    },
                    None,
                )
                .and_then(|hit| hit.verdict.user().map(|u| u.id));
            (id, asked.get())
        };
        entries.insert(key, user(1), Duration::ZERO);
        assert_eq!(
            get(&entries),
            (Some(1), true),
            "past the front, by the shared key"
        );
        assert_eq!(
            get(&entries),
            (Some(1), false),
            "in front: no shared key computed"
        );
        entries.insert(key, user(2), Duration::ZERO);
        assert_eq!(
            get(&entries),
            (Some(2), true),
            "a replaced user is not served"
        );
        assert!(kept_in_front(&entries, &hot));
        entries.invalidate(&key);
        assert!(!kept_in_front(&entries, &hot), "its slot is emptied");
        assert_eq!(get(&entries), (None, true), "an evicted user is not served");
        entries.insert(
            key,
            Authentication::Rejected(TokenRejection::TokenRevoked),
            Duration::ZERO,
        );
        assert!(entries
            .get(&hot, || Some(key), None)
            .unwrap()
            .verdict
            .is_anonymous());
        assert!(in_front(&entries, &hot), "rejections go in front too");
        entries.insert(key, user(3), Duration::ZERO);
        assert!(
            !kept_in_front(&entries, &hot),
            "a replaced entry's slot is emptied"
        );
        assert_eq!(get(&entries), (Some(3), true));
        entries.invalidate(&key);
        assert!(entries.get(&hot, || Some(key), None).is_none());
        assert!(!kept_in_front(&entries, &hot));
    }

    /// With `testing`, a paused runtime ages the cache, as it moves the rest of the clock.
    #[cfg(feature = "testing")]
    #[tokio::test(start_paused = true)]
    async fn a_paused_runtime_ages_the_cache() {
        let entries = entries(100);
        let a = TokenKey::of("a");
        entries.insert(a, user(1), Duration::ZERO);
        tokio::time::advance(entries.user_ttl() + Duration::from_secs(1)).await;
        assert_eq!(
            id(&entries, &a),
            None,
            "served past its TTL on the runtime's clock"
        );
    }

    /// Frozen after a fill on a paused runtime that lags the real time: the entry expires
    /// one TTL after the fill by the runtime's clock, not later.
    #[cfg(feature = "testing")]
    #[tokio::test(start_paused = true)]
    async fn frozen_after_a_fill_on_a_paused_runtime() {
        let entries = entries(100);
        let a = TokenKey::of("a");
        // Real time passes; the paused clock does not.
        std::thread::sleep(Duration::from_millis(50));
        entries.insert(a, user(1), Duration::ZERO);
        entries.clock.freeze();
        entries.clock.advance(entries.user_ttl());
        assert_eq!(id(&entries, &a), None, "served a whole TTL after its fill");
    }

    #[test]
    fn a_removed_entry_never_enters_the_front() {
        let entries = entries(100);
        let a = TokenKey::of("a");
        entries.insert(a, user(1), Duration::ZERO);
        // Read from moka, then removed before its promotion: kept out.
        let epoch = entries.front.epoch();
        let read = entries.users.get(&a).unwrap();
        entries.invalidate(&a);
        entries.front.promote(&a, &read, epoch);
        assert!(!in_front(&entries, &a));
        // The same, with everything cleared in between.
        entries.insert(a, user(1), Duration::ZERO);
        let epoch = entries.front.epoch();
        let read = entries.users.get(&a).unwrap();
        entries.invalidate_all();
        entries.front.promote(&a, &read, epoch);
        assert!(!in_front(&entries, &a));
    }

    #[test]
    fn what_moka_drops_for_room_leaves_the_front() {
        let entries = entries(4);
        let keys: Vec<TokenKey> = (0..50).map(|n| TokenKey::of(format!("t{n}"))).collect();
        // Users and rejected tokens alike.
        for (n, key) in keys.iter().enumerate() {
            let verdict = match n % 2 {
                0 => user(n as u64),
                _ => Authentication::Rejected(TokenRejection::InvalidToken),
            };
            entries.insert(*key, verdict, Duration::ZERO);
            let _ = entries.get(key, || Some(*key), None);
            entries.users.run_pending_tasks();
            entries.rejected.run_pending_tasks();
        }
        for key in &keys {
            if entries.get(key, || Some(*key), None).is_some() {
                assert!(
                    entries.users.contains_key(key) || entries.rejected.contains_key(key),
                    "served, yet dropped by moka"
                );
            }
        }
    }

    /// After a clear (`Id6::clear`), moka's `get` may still return an entry from before it
    /// while a new one for its key is being inserted; a hit may then put that old entry in
    /// front. Whatever moka removes (replaced, invalidated, cleared) leaves the front, so a
    /// sign-out right after still reaches it. From the review: served a token after its
    /// invalidation in about a quarter of the rounds before the fix.
    #[test]
    fn nothing_serves_a_token_after_clear_fill_and_invalidate() {
        let entries = entries(1000);
        let a = TokenKey::of("a");
        let stop = AtomicBool::new(false);
        let served_after_invalidate = AtomicU64::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..2_000u64 {
                    entries.insert(a, user(2 * i), Duration::ZERO);
                    let _ = entries.get(&a, || Some(a), None);
                    entries.invalidate_all();
                    entries.insert(a, user(2 * i + 1), Duration::ZERO);
                    entries.invalidate(&a);
                    if entries.get(&a, || Some(a), None).is_some() {
                        served_after_invalidate.fetch_add(1, Ordering::Relaxed);
                        // The next round starts clean.
                        entries.front.clear();
                    }
                }
                stop.store(true, Ordering::SeqCst);
            });
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let _ = entries.get(&a, || Some(a), None);
                }
            });
        });
        assert_eq!(served_after_invalidate.load(Ordering::Relaxed), 0);
    }
}
