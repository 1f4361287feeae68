//! Several instances, one truth (feature `redis`): id6's answers shared through Redis, and
//! every eviction broadcast to every instance over Redis pub/sub.
//!
//! - After a local (moka) miss, Redis is asked before id6; answers are stored there under
//!   `{prefix}{u:<id>}t:{sha256 hex}` (never the token) with their TTL as a Redis expiry, sealed
//!   with a key derived from the token itself ([`seal`]): an entry that does not open with
//!   the request's own token is a miss, so whoever writes to Redis cannot name a user. The
//!   hit path never touches Redis. A value read back is capped like id6's bodies.
//! - Key layout (valid on one server and on Redis Cluster): everything an atomic operation
//!   touches is under one user's hash tag `{u:<id>}` (the `userId` of the token's JWT
//!   payload, read unverified): the entries, the mark `rev`, the set of entries `set` and
//!   `seen`, so one slot; every key a script touches is declared. A token's entry is found by
//!   its key alone (a token eviction knows no token) through `{prefix}o:{sha256 hex}`, its
//!   user id, written before the entry and kept as long. A token whose payload names no
//!   user is never shared (id6's always do; the screen refuses the others unasked).
//! - One clock: Redis's. An entry's age is its full TTL less what Redis has left of it
//!   (`PTTL`); a revocation mark's age likewise. No instance's wall clock is stored or
//!   compared, so an instance whose clock is off cannot make an answer look young.
//! - An eviction deletes the shared entries and publishes `t:<key>`, `u:<user id>` or `*`
//!   on `{prefix}invalidate`; every instance evicts locally, with the same refill-race
//!   protection as a local eviction. A user eviction first sets `{prefix}{u:<id>}rev`: a store
//!   from a load that began before it is refused atomically (Lua), so an answer in flight
//!   during `disconnect` cannot poison the shared cache either. Evictions go through a
//!   bounded queue ([`evictions`]), retried in order until Redis answers: a stall delays
//!   them, never drops them.
//! - An `/authorize` answer's `invalidateTokensAt` is handled once per value: `{prefix}{u:<id>}seen`
//!   keeps the highest one handled (id6's values compared with id6's, whatever its clock).
//! - Pub/sub, not streams: invalidations are only useful live; an instance that was cut off
//!   clears its local cache when it subscribes again instead of replaying a backlog. So a
//!   revoked user is served by an instance that missed the broadcast for at most its local
//!   TTL while cut off, and not at all once it is back. A cut that sends no FIN (a NAT, a
//!   load balancer dropping an idle flow) is found by pings ([`subscriber`]).
//! - Redis is optional at run time: every operation has a short timeout; failures are
//!   counted, logged once per outage, and the layer carries on with moka and id6.

mod connect;
mod evictions;
mod seal;
mod subscriber;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt};
use redis::AsyncCommands;

use crate::clock::now_ms;
use crate::config::RedisSettings;
use crate::error::TokenRejection;
use crate::resolve::{EvictionSink, Scope, SecondLevel, SharedCounts};
use crate::telemetry::SharedHealth;
use crate::token::{TokenKey, UserToken};
use crate::user::{Authentication, User};

/// Atomic store of a user, refused when the user's tokens were revoked since the load began.
/// KEYS (one user's hash tag, so one slot): the entry, the user's revocation mark, the
/// user's set of entries. ARGV: the value, its expiry (ms), how long ago (ms, at most) the
/// load began, the entry's token key (hex).
///
/// The set's expiry is only ever lengthened: it must outlive every entry it names, or a
/// revocation after it expired would find none of them. A store whose load began earlier
/// than another's but ends later has less left, and cut it short before.
const STORE_USER: &str = r"
local mark = redis.call('GET', KEYS[2])
if mark then
  local age = (tonumber(mark) or 0) - redis.call('PTTL', KEYS[2])
  if age <= tonumber(ARGV[3]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[4])
if redis.call('PTTL', KEYS[3]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
end
return 1
";

/// The first half of a user's revocation: the mark (its value is its own expiry, so that
/// its age is that less its `PTTL`), which from now on refuses every store from a load that
/// began before it. KEYS (the user's tag): the mark, the user's `seen` key. ARGV: the
/// mark's expiry (ms), id6's `invalidateTokensAt` when that is what is revoked (else empty),
/// the `seen` key's expiry (ms). A revocation id6 showed before, or an older one, is claimed
/// by whoever set `seen` first and not marked again: 0.
const MARK_USER: &str = r"
if ARGV[2] ~= '' then
  local seen = redis.call('GET', KEYS[2])
  if seen and tonumber(seen) and tonumber(seen) >= tonumber(ARGV[2]) then return 0 end
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[1])
return 1
";

/// The second half, once the user's set was read: the entries it named deleted (each one
/// declared), their names taken out of the set, every instance told. KEYS (the user's
/// tag): the user's set, then the entries. ARGV: the channel, the message, then each
/// entry's token key (hex), in the order of the entries.
///
/// An entry stored between the read of the set and this is not among KEYS, and stays: it
/// comes from a store that ran after [`MARK_USER`], which refused it unless its load began
/// after the mark, that is after the revocation was asked. Such an answer is id6's word
/// since the revocation, as legitimate as any later one.
const DROP_USER: &str = r"
for i = 2, #KEYS do
  redis.call('DEL', KEYS[i])
  redis.call('SREM', KEYS[1], ARGV[i + 1])
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
";

/// How long the highest `invalidateTokensAt` handled per user is kept: past it, the next
/// answer showing it revokes once more (harmless: one more miss per user per day).
const SEEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long lookups leave Redis alone after a failed operation (evictions do not wait).
const RETRY_AFTER_FAILURE_MS: u64 = 500;

/// The longest pause between two tries of an eviction while Redis does not answer: the
/// most an eviction waits past Redis's return.
const MAX_EVICTION_PAUSE: Duration = Duration::from_millis(250);

/// A shared verdict as sealed into Redis.
#[derive(serde::Serialize, serde::Deserialize)]
enum Stored {
    /// A user, and the entry's whole lifetime in ms, counted from when the load that asked
    /// id6 began: its age is that less Redis's `PTTL`.
    #[serde(rename = "user")]
    User {
        user: User,
        ttl: u64,
        /// When the entry expires, by the storing instance's clock (ms since the epoch).
        until: u64,
    },
    /// A rejected token and id6's `errorCode`.
    #[serde(rename = "rejected")]
    Rejected { code: String, until: u64 },
}

/// On a cluster, a failure within this long of another operation's answer is one master's
/// trouble (degraded), not an outage; and degraded ends this long after the last failure.
const PARTIAL_WINDOW_MS: u64 = 5_000;

/// The bound on a clear's deletion of every shared entry (a scan of the keyspace).
const CLEAR_WITHIN: Duration = Duration::from_secs(10);

/// How far past its sealed expiry an entry is still taken: the instances' clocks may
/// differ by this much. The seal proves who wrote an entry, not when; its sealed expiry
/// bounds how long a Redis writer who copied it can put it back (after a revocation, say):
/// until it would have expired anyway. Ages still come from Redis's own clock (`PTTL`):
/// this only ever refuses, or makes an entry older (its local copy ends by then too).
const CLOCK_SKEW_MS: u64 = 10_000;

/// What the shared tier counted since start.
#[derive(Default)]
struct Counters {
    errors: AtomicU64,
    unopened: AtomicU64,
    resubscribed: AtomicU64,
    reconnected: AtomicU64,
}

/// The second level on Redis.
pub(crate) struct Redis {
    target: connect::Target,
    /// The connection that carries commands: replaced when an operation times out on it
    /// (a half-open flow answers nothing, and redis-rs reconnects only on errors).
    connection: Mutex<Option<(u64, connect::Connection)>>,
    /// Numbers the command connections made, so that a failure replaces only the one it
    /// happened on (not a fresh one another operation already made).
    connections_made: AtomicU64,
    prefix: String,
    timeout: Duration,
    positive_ttl: Duration,
    negative_ttl: Duration,
    max_value_bytes: usize,
    store_user: redis::Script,
    mark_user: redis::Script,
    drop_user: redis::Script,
    subscribed: AtomicBool,
    /// Names this instance's broadcasts, so that it does not apply them twice when they come
    /// back on the channel it follows.
    origin: u64,
    /// Evictions on their way to Redis, and whether the task that applies them runs.
    evictions: Arc<evictions::Queue>,
    delivering: AtomicBool,
    /// Dropped with the handle: the subscriber and eviction tasks see their receivers close
    /// and end, so nothing outlives the last `Id6` (tower's buffer worker does the same).
    stop: tokio::sync::watch::Sender<()>,
    down: AtomicBool,
    /// When this outage began (ms since the epoch, for health reports only), and whether
    /// Redis ever answered.
    down_since_ms: AtomicU64,
    answered: AtomicBool,
    /// A cluster with some masters answering and some not: since when (ms since the epoch),
    /// and when each last happened.
    degraded: AtomicBool,
    degraded_since_ms: AtomicU64,
    last_answer_ms: AtomicU64,
    last_failure_ms: AtomicU64,
    /// While Redis is down, lookups try it again only after this (ms since the epoch), so
    /// that not every miss waits for the timeout.
    retry_at: AtomicU64,
    counters: Counters,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Never connects: Redis may be down at start.
    ///
    /// # Errors
    ///
    /// A URL that is not a Redis URL.
    pub(crate) fn new(settings: RedisSettings) -> Result<Self, crate::error::Error> {
        let target = connect::Target::new(&settings)?;
        Ok(Redis {
            target,
            connection: Mutex::new(None),
            connections_made: AtomicU64::new(0),
            prefix: settings.prefix,
            timeout: settings.timeout,
            positive_ttl: settings.positive_ttl,
            negative_ttl: settings.negative_ttl,
            max_value_bytes: settings.max_value_bytes,
            store_user: redis::Script::new(STORE_USER),
            mark_user: redis::Script::new(MARK_USER),
            drop_user: redis::Script::new(DROP_USER),
            subscribed: AtomicBool::new(false),
            // Each `RandomState` is seeded afresh (the OS's randomness, then a count).
            origin: std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                "id6-tower origin",
            ),
            evictions: Arc::default(),
            delivering: AtomicBool::new(false),
            stop: tokio::sync::watch::Sender::new(()),
            down: AtomicBool::new(false),
            down_since_ms: AtomicU64::new(0),
            answered: AtomicBool::new(false),
            degraded: AtomicBool::new(false),
            degraded_since_ms: AtomicU64::new(0),
            last_answer_ms: AtomicU64::new(0),
            last_failure_ms: AtomicU64::new(0),
            retry_at: AtomicU64::new(0),
            counters: Counters::default(),
        })
    }

    /// The hash tag that keeps a user's keys in one slot (of a cluster): its entries, its
    /// revocation mark, its set of entries and its `seen` key, which one script touches.
    fn user(&self, user_id: u64) -> String {
        format!("{}{{u:{user_id}}}", self.prefix)
    }

    /// Where the answer about a token of `user_id` is shared.
    fn entry(&self, user_id: u64, key: &TokenKey) -> String {
        format!("{}t:{}", self.user(user_id), hex(key))
    }

    /// Which user's tag holds a token's entry, for an eviction of that token alone (which
    /// knows its key, not the token): the user id, kept as long as the entry.
    fn locator(&self, key: &TokenKey) -> String {
        format!("{}o:{}", self.prefix, hex(key))
    }

    fn channel(&self) -> String {
        format!("{}invalidate", self.prefix)
    }

    /// The connection that carries commands (made on first use; with Sentinel, the master
    /// is asked of the Sentinels first; with a cluster, its slots of the seeds).
    async fn connection(&self) -> redis::RedisResult<(u64, connect::Connection)> {
        if let Some(connection) = &*crate::lock::lock(&self.connection) {
            return Ok(connection.clone());
        }
        let connection = self.target.connect(self.timeout).await?;
        let number = self.connections_made.fetch_add(1, Ordering::Relaxed) + 1;
        // Two first uses at once: one connection is kept, the other dropped.
        Ok(crate::lock::lock(&self.connection)
            .get_or_insert((number, connection))
            .clone())
    }

    /// Forgets the connection that carries commands if it is still connection `number` (and,
    /// with Sentinel, the master): the next operation makes a new one. After a timeout (the
    /// flow may be dead without a FIN, where redis-rs would wait on it forever), a lost
    /// connection, or a master that is one no more. A late failure on a connection already
    /// replaced replaces nothing.
    fn reconnect(&self, what: &'static str, number: u64) {
        let mut slot = crate::lock::lock(&self.connection);
        if slot.as_ref().is_some_and(|(current, _)| *current == number) {
            *slot = None;
            drop(slot);
            self.target.forget();
            self.counters.reconnected.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(operation = what, "redis connection replaced");
        }
    }

    /// [`reconnect`](Self::reconnect) connection `used`; when the failure came before any
    /// connection was made (Sentinel's master unreachable), the master is asked again.
    fn reconnect_or_forget(&self, what: &'static str, used: u64) {
        if used == 0 {
            self.target.forget();
        } else {
            self.reconnect(what, used);
        }
    }

    /// Runs one lookup's or store's Redis operation, unless Redis failed a moment ago.
    async fn run<T, F, Fut>(&self, what: &'static str, op: F) -> Option<T>
    where
        F: FnOnce(connect::Connection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if now_ms() < self.retry_at.load(Ordering::Relaxed) {
            return None;
        }
        self.attempt(what, op).await
    }

    /// [`try_op`](Self::try_op), a failure read as `None`.
    async fn attempt<T, F, Fut>(&self, what: &'static str, op: F) -> Option<T>
    where
        F: FnOnce(connect::Connection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.try_op(what, op).await.ok()
    }

    /// Runs one Redis operation within the timeout. A failure is counted; one of reaching
    /// Redis is an outage (logged once, health down, lookups paused), a refusal of this
    /// command (a key of the wrong type, `OOM`, `NOPERM`) is not: Redis answers, and would
    /// answer the same again. A timeout replaces the connection: the flow may be dead
    /// without a FIN, where redis-rs would wait on it forever.
    async fn try_op<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, Failure>
    where
        F: FnOnce(connect::Connection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.try_op_within(self.timeout, what, op).await
    }

    /// [`try_op`](Self::try_op) with a bound of its own, for an operation of many commands.
    async fn try_op_within<T, F, Fut>(
        &self,
        bound: Duration,
        what: &'static str,
        op: F,
    ) -> Result<T, Failure>
    where
        F: FnOnce(connect::Connection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        // Which connection the operation ran on (0: none made yet, for a timeout in `connect`,
        // which replaces nothing but asks Sentinel again).
        let used = AtomicU64::new(0);
        let attempt = async {
            let (number, connection) = self.connection().await?;
            used.store(number, Ordering::Relaxed);
            op(connection).await
        };
        let outcome = tokio::time::timeout(bound, attempt).await;
        let used = used.load(Ordering::Relaxed);
        match outcome {
            Ok(Ok(value)) => {
                self.answered.store(true, Ordering::Relaxed);
                let now = now_ms();
                self.last_answer_ms.store(now, Ordering::Relaxed);
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("redis is back; sharing resumes");
                }
                let quiet = now.saturating_sub(self.last_failure_ms.load(Ordering::Relaxed));
                if quiet > PARTIAL_WINDOW_MS && self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("every redis cluster master answers again");
                }
                Ok(value)
            }
            Ok(Err(error)) if refused(&error) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    operation = what,
                    code = error.code(),
                    "redis refused a command"
                );
                Err(Failure::Refused)
            }
            Ok(Err(error)) => {
                // A server's refusal of one command (a key of the wrong type, say) keeps
                // the connection; a lost one, or a master demoted to replica, does not. A
                // cluster connection follows its nodes by itself (a node down fails only
                // its slots' commands): kept, but after a timeout, which redis-rs's cluster
                // client retries on the same node connection without ever replacing it.
                if !self.target.is_cluster()
                    && (error.is_io_error()
                        || error.is_unrecoverable_error()
                        || matches!(error.code(), Some("READONLY" | "MASTERDOWN" | "LOADING")))
                {
                    self.reconnect_or_forget(what, used);
                }
                self.failed(what, &error.to_string());
                Err(Failure::Unreachable)
            }
            Err(_) => {
                self.reconnect_or_forget(what, used);
                self.failed(what, "timed out");
                Err(Failure::Unreachable)
            }
        }
    }

    fn failed(&self, what: &'static str, why: &str) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        self.last_failure_ms.store(now, Ordering::Relaxed);
        // A cluster's failure is often one master's: lookups of the others' slots go on
        // (those of its slots fail at once when it refuses, or within the timeout).
        if !self.target.is_cluster() {
            self.retry_at
                .store(now + RETRY_AFTER_FAILURE_MS, Ordering::Relaxed);
        } else if now.saturating_sub(self.last_answer_ms.load(Ordering::Relaxed))
            <= PARTIAL_WINDOW_MS
        {
            // Another master answered a moment ago: degraded, not down (one warning, not
            // one per flip between a failure and an answer).
            if !self.degraded.swap(true, Ordering::Relaxed) {
                self.degraded_since_ms.store(now, Ordering::Relaxed);
                tracing::warn!(
                    operation = what,
                    why,
                    "a redis cluster master does not answer; its users' requests go to the \
                     local cache and id6, the others' are still shared"
                );
            }
            return;
        }
        if !self.down.swap(true, Ordering::Relaxed) {
            self.down_since_ms.store(now_ms(), Ordering::Relaxed);
            tracing::warn!(
                operation = what,
                why,
                "redis unavailable; carrying on with the local cache and id6"
            );
        }
    }

    /// Whether the connection that carries commands answers a `PING` in time (one that
    /// does not is replaced, as any operation that times out).
    async fn ping(&self, what: &'static str) -> bool {
        self.attempt(what, |mut c| async move {
            redis::cmd("PING").query_async::<()>(&mut c).await
        })
        .await
        .is_some()
    }

    /// The shared verdict for `key`, if Redis has one that opens with `token` (and answers in
    /// time), with its age: the entry's lifetime less what Redis has left of it.
    async fn get(&self, key: &TokenKey, token: &UserToken) -> Option<(Authentication, Duration)> {
        // A token whose payload names no user is never shared (see `store`).
        let entry = self.entry(token.unverified_user_id()?, key);
        let cap = self.max_value_bytes.saturating_add(seal::OVERHEAD);
        // One byte past the cap tells an oversized value from one that fits.
        let last = isize::try_from(cap).unwrap_or(isize::MAX);
        let name = entry.clone();
        let (raw, left_ms): (Vec<u8>, i64) = self
            .run("get", |mut c| async move {
                redis::pipe()
                    .atomic()
                    .getrange(&name, 0, last)
                    .pttl(&name)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if raw.is_empty() {
            return None;
        }
        if raw.len() > cap {
            tracing::debug!(cap, "a shared entry over the size cap: ignored");
            return None;
        }
        let opened = seal::open(token.expose().as_bytes(), &entry, &raw)
            .and_then(|plain| serde_json::from_slice::<Stored>(&plain).ok());
        let Some(stored) = opened else {
            // Not sealed with this token: written by someone without it, or damaged.
            self.counters.unopened.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("a shared entry that does not open with its token: a miss");
            return None;
        };
        let (lifetime, until) = match &stored {
            Stored::User { ttl, until, .. } => (Duration::from_millis(*ttl), *until),
            Stored::Rejected { until, .. } => (self.negative_ttl, *until),
        };
        // An entry's age is its lifetime less what Redis has left of it. No expiry (-1),
        // more left than its lifetime, or past its sealed expiry: put back or altered by a
        // writer (a replay), refused as an entry that does not open. And never younger than
        // its sealed expiry (with the clocks' allowance) says: the local copy ends by then,
        // or a replay with its whole lifetime left just before that bound would be served
        // for another TTL past it.
        let sealed_left = until.saturating_add(CLOCK_SKEW_MS).checked_sub(now_ms());
        let age = u64::try_from(left_ms)
            .ok()
            .and_then(|left| lifetime.checked_sub(Duration::from_millis(left)))
            .zip(sealed_left)
            .map(|(age, sealed_left)| {
                age.max(lifetime.saturating_sub(Duration::from_millis(sealed_left)))
            });
        let Some(age) = age else {
            self.counters.unopened.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("a shared entry of no credible age (replayed?): a miss");
            return None;
        };
        Some(match stored {
            Stored::User { user, .. } => (Authentication::Authenticated(Arc::new(user)), age),
            // A rejection kept no longer here than its TTL in Redis and locally together.
            Stored::Rejected { code, .. } => (
                Authentication::Rejected(TokenRejection::from_code(Some(&code))),
                age,
            ),
        })
    }

    /// Shares an id6 verdict on `token` from a load that began at `started`, sealed with it.
    async fn store(
        &self,
        key: &TokenKey,
        token: &UserToken,
        verdict: &Authentication,
        started: Instant,
    ) {
        if let Some(user) = verdict.user() {
            if let Some(revoked_at) = user.invalidate_tokens_at {
                // Not carried to its end, it is queued (see `revoke_user`).
                let _ = self.revoke_user(user.id, Some(revoked_at)).await;
            }
        }
        // The entry lives under the user its token's payload names (unverified: a payload
        // that lies only files the entry under another tag, where the seal still binds it to
        // its token). A token whose payload names no user (id6's own never do; the screen
        // refuses them before they cost a call) is not shared: a miss on every instance.
        let Some(owner) = token.unverified_user_id() else {
            return;
        };
        let entry = self.entry(owner, key);
        // The locator first: an entry that exists can always be found by its key alone.
        let (locator, lifetime) = (self.locator(key), self.positive_ttl.max(self.negative_ttl));
        let located: Option<()> = self
            .run("store", |mut c| async move {
                c.pset_ex(locator, owner, millis(lifetime)).await
            })
            .await;
        if located.is_none() {
            return;
        }
        let seal = |stored: &Stored| {
            let plain = serde_json::to_vec(stored).ok()?;
            seal::seal(token.expose().as_bytes(), &entry, &plain)
        };
        match verdict {
            // id6 says the token is another user's than its payload names: not shared (its
            // entry would escape that user's revocations).
            Authentication::Authenticated(user) if user.id != owner => {}
            Authentication::Authenticated(user) => {
                let lifetime = millis(self.positive_ttl);
                let began_ago = millis(started.elapsed());
                // What is left of the answer's TTL: its age in Redis counts from the load.
                let Some(left) = lifetime.checked_sub(began_ago).filter(|left| *left > 0) else {
                    return;
                };
                let stored = Stored::User {
                    user: User::clone(user),
                    ttl: lifetime,
                    until: now_ms().saturating_add(left),
                };
                let Some(value) = seal(&stored) else {
                    return;
                };
                let mut invocation = self.store_user.prepare_invoke();
                invocation
                    .key(&entry)
                    .key(format!("{}rev", self.user(owner)))
                    .key(format!("{}set", self.user(owner)))
                    .arg(value)
                    .arg(left)
                    // Plus the longest this store may take to reach Redis: a mark set
                    // meanwhile is counted as set during the load.
                    .arg(began_ago.saturating_add(millis(self.timeout)))
                    .arg(hex(key));
                let _: Option<i64> = self
                    .run("store", |mut c| async move {
                        invocation.invoke_async(&mut c).await
                    })
                    .await;
            }
            Authentication::Rejected(why) => {
                let ttl = millis(self.negative_ttl);
                let stored = Stored::Rejected {
                    code: why.error_code().to_owned(),
                    until: now_ms().saturating_add(ttl),
                };
                let Some(value) = seal(&stored) else {
                    return;
                };
                let _: Option<()> = self
                    .run("store", |mut c| async move {
                        c.pset_ex(entry, value, ttl).await
                    })
                    .await;
            }
            Authentication::Anonymous | Authentication::Unavailable(_) => {}
        }
    }

    /// Queues the second-level part of an eviction (in the order evictions are asked for)
    /// and starts, once, the task that applies the queue. What is returned waits until the
    /// eviction reached Redis, or for one operation's timeout at most: a caller is never
    /// held by a stalled Redis, and the eviction stays queued.
    fn evict(self: &Arc<Self>, scope: Scope) -> BoxFuture<'static, ()> {
        let (done, applied) = tokio::sync::oneshot::channel();
        self.evictions.push(scope, done);
        self.start_delivering();
        let timeout = self.timeout;
        // Held until then: a handle dropped right after an eviction keeps its tier (and so
        // the delivery task) alive long enough for one try.
        let keep = self.clone();
        async move {
            let _ = tokio::time::timeout(timeout, applied).await;
            drop(keep);
        }
        .boxed()
    }

    /// Starts, once, the task that applies queued evictions (needs a runtime: without one,
    /// evictions wait in the queue for the first call that has one).
    fn start_delivering(self: &Arc<Self>) {
        self.spawn_once(&self.delivering, "evictions", |this| {
            let (shared, queue) = (Arc::downgrade(this), this.evictions.clone());
            async move {
                // However the task ends (its runtime shut down, a panic), the next eviction
                // starts another.
                let _restart = Restart(shared.clone());
                deliver(shared, queue).await;
            }
        });
    }

    /// Spawns the task `make` gives, once (`started` says whether it was), ending it when
    /// the handle goes (its `stop` sender is dropped) whatever it waits on. Without a
    /// runtime, nothing: the next call with one spawns it.
    fn spawn_once<F>(
        self: &Arc<Self>,
        started: &AtomicBool,
        what: &'static str,
        make: impl FnOnce(&Arc<Self>) -> F,
    ) where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        // Called on every miss: a read first, the write only once.
        if started.load(Ordering::Relaxed) || started.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            started.store(false, Ordering::SeqCst);
            return;
        };
        let task = make(self);
        let mut stop = self.stop.subscribe();
        runtime.spawn(async move {
            let stopped = async move { while stop.changed().await.is_ok() {} };
            tokio::select! {
                () = stopped => tracing::debug!(task = what, "id6 handle dropped; redis task ends"),
                () = task => {}
            }
        });
    }

    /// Applies one eviction to Redis.
    async fn apply(&self, scope: Scope) -> Result<(), Failure> {
        match scope {
            Scope::Token(key) | Scope::SignedOut(key) => {
                self.invalidate_token(&key, message(self.origin, scope))
                    .await
            }
            Scope::User(user_id) => self.revoke_user(user_id, None).await,
            Scope::All => self.clear().await,
        }
    }

    /// Tells every instance of an eviction whose Redis part waits (a cluster's master down):
    /// published through any node, as the Redis part will publish it again once applied.
    async fn tell(&self, scope: Scope) -> bool {
        let message = message(self.origin, scope);
        let channel = self.channel();
        self.attempt("invalidate", |mut c| async move {
            c.publish::<_, _, ()>(channel, message).await
        })
        .await
        .is_some()
    }

    /// Deletes a token's shared entry and tells every instance `message` (an invalidation's
    /// or a sign-out's). The entry's user is read from its locator first; none (never
    /// shared, or expired) leaves only the news to tell.
    async fn invalidate_token(&self, key: &TokenKey, message: String) -> Result<(), Failure> {
        let locator = self.locator(key);
        let owner = self
            .try_op("invalidate", |mut c| async move {
                c.get::<_, Option<u64>>(locator).await
            })
            .await?;
        let channel = self.channel();
        let entry = owner.map(|owner| self.entry(owner, key));
        self.try_op("invalidate", |mut c| async move {
            if let Some(entry) = entry {
                c.del::<_, ()>(entry).await?;
            }
            c.publish::<_, _, ()>(channel, message).await
        })
        .await
    }

    /// Marks the user revoked (refusing in-flight stores), deletes its shared entries and
    /// tells every instance: an eviction of ours, or (`shown`) the `invalidateTokensAt` of an
    /// id6 answer, then only if no instance handled that revocation (or a later one) yet.
    ///
    /// Three steps, each in the user's slot, so that no script touches a key it does not
    /// declare: the mark ([`MARK_USER`]), the user's set read, the entries it names deleted
    /// and the news told ([`DROP_USER`]). A `shown` revocation claimed by the mark and not
    /// carried to its end is queued as an eviction of the user, retried until Redis takes it.
    async fn revoke_user(&self, user_id: u64, shown: Option<u64>) -> Result<(), Failure> {
        let tag = self.user(user_id);
        let mut mark = self.mark_user.prepare_invoke();
        mark.key(format!("{tag}rev"))
            .key(format!("{tag}seen"))
            .arg(millis(self.positive_ttl).saturating_add(60_000))
            .arg(shown.map(|at| at.to_string()).unwrap_or_default())
            .arg(millis(SEEN_TTL));
        let marked = self
            .try_op("invalidate", |mut c| async move {
                mark.invoke_async::<i64>(&mut c).await
            })
            .await;
        let dropped = match marked {
            // Handled by an instance already.
            Ok(0) => return Ok(()),
            Ok(_) => self.drop_entries(user_id).await,
            Err(failure) => Err(failure),
        };
        if dropped.is_err() && shown.is_some() {
            // Claimed (or not even marked) and not carried to its end: the queue does it,
            // as any eviction (its task the subscriber starts; nobody waits for it here).
            let (done, _) = tokio::sync::oneshot::channel();
            self.evictions.push(Scope::User(user_id), done);
        }
        dropped
    }

    /// Deletes the entries the user's set names, and tells every instance.
    async fn drop_entries(&self, user_id: u64) -> Result<(), Failure> {
        let tag = self.user(user_id);
        let set = format!("{tag}set");
        let name = set.clone();
        let members = self
            .try_op("invalidate", |mut c| async move {
                c.smembers::<_, Vec<String>>(name).await
            })
            .await?;
        let mut dropping = self.drop_user.prepare_invoke();
        dropping
            .key(set)
            .arg(self.channel())
            .arg(message(self.origin, Scope::User(user_id)));
        for member in members.iter().filter(|m| from_hex(m).is_some()) {
            dropping.key(format!("{tag}t:{member}")).arg(member);
        }
        self.try_op("invalidate", |mut c| async move {
            dropping.invoke_async::<i64>(&mut c).await
        })
        .await
        .map(drop)
    }

    /// Deletes every shared entry under the prefix, tells every instance to clear, and
    /// deletes once more what a store in between put back: taken once the news is out (a
    /// deletion that outlasts [`CLEAR_WITHIN`] leaves entries that expire, and no instance
    /// reads them past their TTL). Deleting first, an instance that clears and
    /// misses does not find the old entries in Redis. Locators stay (they expire with their
    /// entries, and point at nothing meanwhile); users' marks stay (they refuse stale stores).
    async fn clear(&self) -> Result<(), Failure> {
        self.delete_entries().await;
        let channel = self.channel();
        self.try_op("clear", |mut c| async move {
            c.publish::<_, _, ()>(channel, message(self.origin, Scope::All))
                .await
        })
        .await?;
        self.delete_entries().await;
        Ok(())
    }

    /// Deletes every shared entry under the prefix (each master's on a cluster).
    async fn delete_entries(&self) {
        let pattern = format!("{}{{u:*}}t:*", self.prefix);
        // A scan walks the whole keyspace (a second for 200 000 keys here): one operation's
        // timeout is too short for it, and a clear that leaves the entries would let every
        // instance, its cache just cleared, read the revoked users back.
        let bound = self.timeout.max(CLEAR_WITHIN);
        let _ = self
            .try_op_within(bound, "clear", |mut c| async move {
                let keys = c.scan(&pattern).await?;
                // Keys of many slots: a cluster connection splits a `DEL` by slot.
                for chunk in keys.chunks(500) {
                    c.del::<_, ()>(chunk).await?;
                }
                Ok(())
            })
            .await;
    }

    /// An eviction Redis refused (a key of the wrong type a writer left, `OOM`, `NOPERM`):
    /// trying again would not help. Every instance is told at once, and the eviction becomes
    /// a clear, which finds the entries by their names rather than the user's set; a clear
    /// refused is given up, counted and warned of. What to deliver next.
    async fn refused(&self, queued: evictions::Queued) -> Option<evictions::Queued> {
        if queued.scope != Scope::All {
            tracing::warn!(
                "redis refused an eviction; telling every instance and clearing instead"
            );
            self.tell(queued.scope).await;
            return Some(queued.instead(Scope::All));
        }
        self.evictions.gave_up(1);
        tracing::warn!(
            "redis refused a clear of the shared cache: given up; entries left there expire \
             with their TTL"
        );
        queued.applied();
        None
    }

    /// Starts, once, the task that applies other instances' evictions to `local`.
    fn start_listening(self: &Arc<Self>, local: Arc<dyn EvictionSink>) {
        self.spawn_once(&self.subscribed, "subscriber", |this| {
            subscriber::listen(Arc::downgrade(this), local)
        });
    }
}

/// Why an operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// Redis could not be reached, or answered too late: worth trying again.
    Unreachable,
    /// Redis refused this command: trying again gets the same answer.
    Refused,
}

/// Whether Redis refused the command itself (a server error that another try would repeat),
/// rather than failed to answer, or answered as a node that cannot serve yet.
fn refused(error: &redis::RedisError) -> bool {
    const TRANSIENT: &[&str] = &[
        "READONLY",
        "MASTERDOWN",
        "LOADING",
        "CLUSTERDOWN",
        "TRYAGAIN",
        "BUSY",
        "MOVED",
        "ASK",
    ];
    !error.is_io_error()
        && !error.is_unrecoverable_error()
        && !error.is_timeout()
        && error.code().is_some_and(|code| !TRANSIENT.contains(&code))
}

/// Clears the tier's `delivering` flag when the delivery task ends, however it ends.
struct Restart(Weak<Redis>);

impl Drop for Restart {
    fn drop(&mut self) {
        if let Some(redis) = self.0.upgrade() {
            redis.delivering.store(false, Ordering::SeqCst);
        }
    }
}

/// Applies queued evictions in order, each tried until Redis takes it, while the handle's
/// tier lives.
///
/// On a cluster, an eviction that fails (its slot's master down) is told to every instance
/// at once and goes to the back of the queue: the others' evictions are applied meanwhile,
/// and its own Redis part (the mark, the entries) when that master is back.
async fn deliver(shared: Weak<Redis>, queue: Arc<evictions::Queue>) {
    let first_pause = Duration::from_millis(10);
    let mut pause = first_pause;
    'next: loop {
        let mut queued = queue.next().await;
        loop {
            let Some(this) = shared.upgrade() else { return };
            match this.apply(queued.scope).await {
                Ok(()) => break,
                Err(Failure::Refused) => match this.refused(queued).await {
                    Some(instead) => {
                        queued = instead;
                        continue;
                    }
                    None => continue 'next,
                },
                Err(Failure::Unreachable) => {}
            }
            if this.target.is_cluster() {
                if !queued.told {
                    queued.told = this.tell(queued.scope).await;
                }
                queue.requeue(queued);
                drop(this);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_EVICTION_PAUSE);
                continue 'next;
            }
            drop(this);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_EVICTION_PAUSE);
        }
        pause = first_pause;
        queued.applied();
    }
}

impl SecondLevel for Redis {
    fn get<'a>(
        &'a self,
        key: &'a TokenKey,
        token: &'a UserToken,
    ) -> BoxFuture<'a, Option<(Authentication, Duration)>> {
        Redis::get(self, key, token).boxed()
    }

    fn store<'a>(
        &'a self,
        key: &'a TokenKey,
        token: &'a UserToken,
        verdict: &'a Authentication,
        started: Instant,
    ) -> BoxFuture<'a, ()> {
        Redis::store(self, key, token, verdict, started).boxed()
    }

    fn evict(self: Arc<Self>, scope: Scope) -> BoxFuture<'static, ()> {
        Redis::evict(&self, scope)
    }

    fn subscribe(self: Arc<Self>, local: Arc<dyn EvictionSink>) {
        self.start_listening(local);
    }

    fn health(&self) -> SharedHealth {
        let topology = self.target.topology();
        if self.down.load(Ordering::Relaxed) {
            let since = Duration::from_millis(self.down_since_ms.load(Ordering::Relaxed));
            SharedHealth::Down {
                topology,
                since: std::time::UNIX_EPOCH + since,
            }
        } else if self.degraded.load(Ordering::Relaxed) {
            let since = Duration::from_millis(self.degraded_since_ms.load(Ordering::Relaxed));
            SharedHealth::Degraded {
                topology,
                since: std::time::UNIX_EPOCH + since,
            }
        } else if self.answered.load(Ordering::Relaxed) {
            SharedHealth::Up { topology }
        } else {
            SharedHealth::Starting { topology }
        }
    }

    fn counts(&self) -> SharedCounts {
        let c = &self.counters;
        SharedCounts {
            errors: c.errors.load(Ordering::Relaxed),
            unopened: c.unopened.load(Ordering::Relaxed),
            evictions_given_up: self.evictions.given_up(),
            resubscribed: c.resubscribed.load(Ordering::Relaxed),
            reconnected: c.reconnected.load(Ordering::Relaxed),
        }
    }
}

/// A token key as Redis keys and messages carry it: lowercase hex.
fn hex(key: &TokenKey) -> String {
    key.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key back from [`hex`].
fn from_hex(hex: &str) -> Option<TokenKey> {
    if hex.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(TokenKey(key))
}

/// An eviction as `origin` broadcasts it (read back by [`parse`]): `<origin hex>/` then
/// the scope.
fn message(origin: u64, scope: Scope) -> String {
    let scope = match scope {
        Scope::Token(key) => format!("t:{}", hex(&key)),
        Scope::SignedOut(key) => format!("s:{}", hex(&key)),
        Scope::User(user_id) => format!("u:{user_id}"),
        Scope::All => "*".to_owned(),
    };
    format!("{origin:016x}/{scope}")
}

/// An eviction as broadcast, and the instance that broadcast it (none named: an instance
/// that names none, which is never this one).
fn parse(message: &str) -> Option<(Option<u64>, Scope)> {
    let (origin, scope) = match message.split_once('/') {
        Some((origin, scope)) => (Some(u64::from_str_radix(origin, 16).ok()?), scope),
        None => (None, message),
    };
    parse_scope(scope).map(|scope| (origin, scope))
}

/// A scope as broadcast: `*`, `u:<user id>`, `t:<key hex>` or (a sign-out) `s:<key hex>`.
fn parse_scope(message: &str) -> Option<Scope> {
    if message == "*" {
        Some(Scope::All)
    } else if let Some(id) = message.strip_prefix("u:") {
        id.parse().ok().map(Scope::User)
    } else if let Some(key) = message.strip_prefix("s:") {
        from_hex(key).map(Scope::SignedOut)
    } else {
        message
            .strip_prefix("t:")
            .and_then(from_hex)
            .map(Scope::Token)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_eviction_is_read_back_as_broadcast() {
        let key = TokenKey([0xab; 32]);
        for scope in [
            Scope::Token(key),
            Scope::SignedOut(key),
            Scope::User(42),
            Scope::All,
        ] {
            assert_eq!(
                parse(&message(7, scope)),
                Some((Some(7), scope)),
                "{scope:?}"
            );
            // As an instance that names no origin broadcasts it.
            let unnamed = message(7, scope).split_once('/').unwrap().1.to_owned();
            assert_eq!(parse(&unnamed), Some((None, scope)), "{scope:?}");
        }
        assert_eq!(parse("t:not hex"), None);
        assert_eq!(parse("zz/*"), None);
    }
}
