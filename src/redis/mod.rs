//! Several instances, one truth (feature `redis`): id6's answers shared through Redis, and
//! every eviction broadcast to every instance over Redis pub/sub.
//!
//! - After a local (moka) miss, Redis is asked before id6; answers are stored there under
//!   `{prefix}t:{sha256 hex}` (never the token) with their TTL as a Redis expiry. The hit
//!   path never touches Redis. A value read back is capped like id6's bodies.
//! - One clock: Redis's. An entry's age is its full TTL less what Redis has left of it
//!   (`PTTL`); a revocation mark's age likewise. No instance's wall clock is stored or
//!   compared, so an instance whose clock is off cannot make an answer look young.
//! - An eviction deletes the shared entries and publishes `t:<key>`, `u:<user id>` or `*`
//!   on `{prefix}invalidate`; every instance evicts locally, with the same refill-race
//!   protection as a local eviction. A user eviction first sets `{prefix}rev:{id}`: a store
//!   from a load that began before it is refused atomically (Lua), so an answer in flight
//!   during `disconnect` cannot poison the shared cache either.
//! - An `/authorize` answer's `invalidateTokensAt` is handled once per value: `{prefix}seen:{id}`
//!   keeps the highest one handled (id6's values compared with id6's, whatever its clock).
//! - Pub/sub, not streams: invalidations are only useful live; an instance that was cut off
//!   clears its local cache when it subscribes again instead of replaying a backlog. So a
//!   revoked user is served by an instance that missed the broadcast for at most its local
//!   TTL while cut off, and not at all once it is back.
//! - Redis is optional at run time: every operation has a short timeout; failures are
//!   counted, logged once per outage, and the layer carries on with moka and id6.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use tokio::sync::OnceCell;

use futures_util::future::{BoxFuture, FutureExt};

mod connect;

use crate::clock::now_ms;
use crate::config::RedisSettings;
use crate::error::TokenRejection;
use crate::resolve::{EvictionSink, Scope, SecondLevel};
use crate::token::TokenKey;
use crate::user::{Authentication, User};

/// Atomic store of a user, refused when the user's tokens were revoked since the load began.
/// KEYS: the entry, the user's revocation mark, the user's set of entries. ARGV: the value,
/// its expiry (ms), how long ago (ms, at most) the load began, the entry's key.
const STORE_USER: &str = r"
local mark = redis.call('GET', KEYS[2])
if mark then
  local age = (tonumber(mark) or 0) - redis.call('PTTL', KEYS[2])
  if age <= tonumber(ARGV[3]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return 1
";

/// Atomic revocation of a user's shared entries: the mark (its value is its own expiry, so
/// that its age is that less its `PTTL`), the entries deleted, every instance told.
/// KEYS: the mark, the user's set of entries, the user's `seen` key. ARGV: the key prefix,
/// the user id, the mark's expiry (ms), the channel, and id6's `invalidateTokensAt` when
/// that is what is revoked (else empty), the `seen` key's expiry (ms). A revocation id6
/// showed before, or an older one, is not revoked again: 0.
const REVOKE_USER: &str = r"
if ARGV[5] ~= '' then
  local seen = redis.call('GET', KEYS[3])
  if seen and tonumber(seen) and tonumber(seen) >= tonumber(ARGV[5]) then return 0 end
  redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[6])
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[3])
for _, member in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  redis.call('DEL', ARGV[1] .. 't:' .. member)
end
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[4], 'u:' .. ARGV[2])
return 1
";

/// How long the highest `invalidateTokensAt` handled per user is kept: past it, the next
/// answer showing it revokes once more (harmless: one more miss per user per day).
const SEEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long Redis is left alone after a failed operation.
const RETRY_AFTER_FAILURE_MS: u64 = 500;

#[derive(serde::Serialize, serde::Deserialize)]
enum Stored {
    /// Written by earlier versions, without when id6 said so: unknown age.
    #[serde(rename = "user")]
    User(User),
    /// Written by earlier versions, stamped by their instance's clock: unknown age here.
    #[serde(rename = "user_at")]
    UserAt { user: User },
    /// A user, and the entry's whole lifetime in ms, counted from when the load that asked
    /// id6 began: its age is that less Redis's `PTTL`. (An earlier version reading it finds
    /// no verdict it knows, and asks id6.)
    #[serde(rename = "user_for")]
    UserFor { user: User, ttl: u64 },
    /// Written by earlier versions, without id6's reason.
    #[serde(rename = "rejected")]
    Rejected,
    /// A rejected token and id6's `errorCode`. (An earlier version reading it finds no
    /// verdict it knows, and asks id6.)
    #[serde(rename = "rejected_as")]
    RejectedAs(String),
}

/// The second level on Redis.
pub(crate) struct Redis {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    positive_ttl: Duration,
    negative_ttl: Duration,
    max_value_bytes: usize,
    store_user: redis::Script,
    revoke_user: redis::Script,
    subscribed: AtomicBool,
    /// Dropped with the handle: the subscriber task sees its receiver close and ends, so
    /// nothing outlives the last `Id6` (tower's buffer worker does the same).
    stop: tokio::sync::watch::Sender<()>,
    down: AtomicBool,
    /// While Redis is down, it is tried again only after this (ms since the epoch), so
    /// that not every miss waits for the timeout.
    retry_at: AtomicU64,
    errors: AtomicU64,
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
        let client = connect::client(&settings)?;
        Ok(Redis {
            client,
            connection: OnceCell::new(),
            prefix: settings.prefix,
            timeout: settings.timeout,
            positive_ttl: settings.positive_ttl,
            negative_ttl: settings.negative_ttl,
            max_value_bytes: settings.max_value_bytes,
            store_user: redis::Script::new(STORE_USER),
            revoke_user: redis::Script::new(REVOKE_USER),
            subscribed: AtomicBool::new(false),
            stop: tokio::sync::watch::Sender::new(()),
            down: AtomicBool::new(false),
            retry_at: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    fn entry(&self, key: &TokenKey) -> String {
        format!("{}t:{}", self.prefix, hex(key))
    }

    fn channel(&self) -> String {
        format!("{}invalidate", self.prefix)
    }

    /// Runs one Redis operation within the timeout; a failure is counted and logged once
    /// per outage, and reads as `None`.
    async fn run<T, F, Fut>(&self, what: &'static str, op: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if now_ms() < self.retry_at.load(Ordering::Relaxed) {
            return None;
        }
        let attempt = async {
            let connection = self
                .connection
                .get_or_try_init(|| async {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout))
                        .set_number_of_retries(1);
                    ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                })
                .await?
                .clone();
            op(connection).await
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(value)) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("redis is back; sharing resumes");
                }
                Some(value)
            }
            Ok(Err(error)) => {
                self.failed(what, &error.to_string());
                None
            }
            Err(_) => {
                self.failed(what, "timed out");
                None
            }
        }
    }

    fn failed(&self, what: &'static str, why: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.retry_at
            .store(now_ms() + RETRY_AFTER_FAILURE_MS, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                operation = what,
                why,
                "redis unavailable; carrying on with the local cache and id6"
            );
        }
    }

    /// The shared verdict for `key`, if Redis has one (and answers in time), with its age
    /// when known: the entry's lifetime less what Redis has left of it.
    async fn get(&self, key: &TokenKey) -> Option<(Authentication, Option<Duration>)> {
        let entry = self.entry(key);
        // One byte past the cap tells an oversized value from one that fits.
        let last = isize::try_from(self.max_value_bytes).unwrap_or(isize::MAX);
        let (raw, left_ms): (Vec<u8>, i64) = self
            .run("get", |mut c| async move {
                redis::pipe()
                    .atomic()
                    .getrange(&entry, 0, last)
                    .pttl(&entry)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if raw.len() > self.max_value_bytes {
            tracing::debug!(
                cap = self.max_value_bytes,
                "a shared entry over the size cap: ignored"
            );
            return None;
        }
        // No expiry (-1) or none left: no known age.
        let left = u64::try_from(left_ms).ok().map(Duration::from_millis);
        let aged = |lifetime: Duration| left.and_then(|left| lifetime.checked_sub(left));
        Some(match serde_json::from_slice(&raw).ok()? {
            Stored::UserFor { user, ttl } => (
                Authentication::Authenticated(Arc::new(user)),
                aged(Duration::from_millis(ttl)),
            ),
            Stored::User(user) | Stored::UserAt { user } => {
                (Authentication::Authenticated(Arc::new(user)), None)
            }
            // A rejection kept no longer here than its TTL in Redis and locally together.
            Stored::Rejected => (
                Authentication::Rejected(TokenRejection::InvalidToken),
                Some(aged(self.negative_ttl).unwrap_or_default()),
            ),
            Stored::RejectedAs(code) => (
                Authentication::Rejected(TokenRejection::from_code(Some(&code))),
                Some(aged(self.negative_ttl).unwrap_or_default()),
            ),
        })
    }

    /// Shares an id6 verdict from a load that began at `started`.
    async fn store(&self, key: &TokenKey, verdict: &Authentication, started: Instant) {
        if let Some(user) = verdict.user() {
            if let Some(revoked_at) = user.invalidate_tokens_at {
                self.revoke_user(user.id, Some(revoked_at)).await;
            }
        }
        let entry = self.entry(key);
        match verdict {
            Authentication::Authenticated(user) => {
                let lifetime = millis(self.positive_ttl);
                let began_ago = millis(started.elapsed());
                // What is left of the answer's TTL: its age in Redis counts from the load.
                let Some(left) = lifetime.checked_sub(began_ago).filter(|left| *left > 0) else {
                    return;
                };
                let stored = Stored::UserFor {
                    user: User::clone(user),
                    ttl: lifetime,
                };
                let Ok(value) = serde_json::to_vec(&stored) else {
                    return;
                };
                let mut invocation = self.store_user.prepare_invoke();
                invocation
                    .key(entry)
                    .key(format!("{}rev:{}", self.prefix, user.id))
                    .key(format!("{}u:{}", self.prefix, user.id))
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
                let stored = Stored::RejectedAs(why.error_code().to_owned());
                let Ok(value) = serde_json::to_vec(&stored) else {
                    return;
                };
                let ttl = millis(self.negative_ttl);
                let _: Option<()> = self
                    .run("store", |mut c| async move {
                        c.pset_ex(entry, value, ttl).await
                    })
                    .await;
            }
            Authentication::Anonymous | Authentication::Unavailable(_) => {}
        }
    }

    /// The second-level part of an eviction: shared entries deleted, every instance told.
    async fn evict(&self, scope: Scope) {
        match scope {
            Scope::Token(key) => self.invalidate_token(&key).await,
            Scope::User(user_id) => self.revoke_user(user_id, None).await,
            Scope::All => self.clear().await,
        }
    }

    /// Deletes a token's shared entry and tells every instance.
    async fn invalidate_token(&self, key: &TokenKey) {
        let (entry, channel, message) =
            (self.entry(key), self.channel(), format!("t:{}", hex(key)));
        let _: Option<()> = self
            .run("invalidate", |mut c| async move {
                redis::pipe()
                    .del(entry)
                    .publish(channel, message)
                    .query_async(&mut c)
                    .await
            })
            .await;
    }

    /// Marks the user revoked (refusing in-flight stores), deletes its shared entries and
    /// tells every instance: an eviction of ours, or (`shown`) the `invalidateTokensAt` of an
    /// id6 answer, then only if no instance handled that revocation (or a later one) yet.
    async fn revoke_user(&self, user_id: u64, shown: Option<u64>) {
        let mut invocation = self.revoke_user.prepare_invoke();
        invocation
            .key(format!("{}rev:{user_id}", self.prefix))
            .key(format!("{}u:{user_id}", self.prefix))
            .key(format!("{}seen:{user_id}", self.prefix))
            .arg(&self.prefix)
            .arg(user_id)
            .arg(millis(self.positive_ttl).saturating_add(60_000))
            .arg(self.channel())
            .arg(shown.map(|at| at.to_string()).unwrap_or_default())
            .arg(millis(SEEN_TTL));
        let _: Option<i64> = self
            .run("invalidate", |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await;
    }

    /// Deletes every shared entry under the prefix and tells every instance.
    async fn clear(&self) {
        // Tell every instance first, in an operation of its own: the scan below may take
        // longer than one operation's timeout on a big Redis, and must not hold the news back.
        let channel = self.channel();
        let _: Option<()> = self
            .run(
                "clear",
                |mut c| async move { c.publish(channel, "*").await },
            )
            .await;
        let pattern = format!("{}t:*", self.prefix);
        let _: Option<()> = self
            .run("clear", |mut c| async move {
                let keys: Vec<String> = {
                    let mut iter = c.scan_match::<_, String>(pattern).await?;
                    let mut keys = Vec::new();
                    while let Some(key) = iter.next_item().await {
                        keys.push(key?);
                    }
                    keys
                };
                // An empty pipeline is an error to Redis, not a no-op.
                if keys.is_empty() {
                    return Ok(());
                }
                let mut pipe = redis::pipe();
                for key in keys {
                    pipe.del(key);
                }
                pipe.query_async(&mut c).await
            })
            .await;
    }

    /// Starts, once, the task that applies other instances' evictions to `local`.
    fn start_listening(self: &Arc<Self>, local: Arc<dyn EvictionSink>) {
        // Called on every miss: a read first, the write only once.
        if self.subscribed.load(Ordering::Relaxed) || self.subscribed.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.subscribed.store(false, Ordering::SeqCst);
            return;
        };
        let shared = Arc::downgrade(self);
        let mut stop = self.stop.subscribe();
        runtime.spawn(async move {
            // Ends when the handle goes (its `stop` sender is dropped), whatever it waits on.
            let stopped = async move { while stop.changed().await.is_ok() {} };
            tokio::select! {
                () = stopped => tracing::debug!("id6 handle dropped; redis subscriber ends"),
                () = listen(shared, local) => {}
            }
        });
    }
}

/// Applies other instances' evictions to `local`, reconnecting as needed, while the
/// handle's `Shared` lives.
async fn listen(shared: std::sync::Weak<Redis>, local: Arc<dyn EvictionSink>) {
    let mut was_connected = false;
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(this) = shared.upgrade() else { return };
        let (client, channel) = (this.client.clone(), this.channel());
        drop(this);
        let subscription = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        // How long a subscription lasted; one that failed or ended at once is backed off
        // the same way, rather than retried (and the cache cleared) in a tight loop.
        let lasted = match tokio::time::timeout(Duration::from_secs(2), subscription).await {
            Ok(Ok(pubsub)) => {
                // Broadcasts may have been missed while cut off, or before a first
                // subscription that came late (Redis down at start) while answers were cached.
                if was_connected || local.holds_any() {
                    tracing::info!("redis subscription (re)established; clearing the local cache");
                    local.evict(Scope::All);
                }
                was_connected = true;
                let subscribed_at = std::time::Instant::now();
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    let Ok(payload) = message.get_payload::<String>() else {
                        continue;
                    };
                    if let Some(scope) = parse(&payload) {
                        // Applied locally only: not broadcast again.
                        local.evict(scope);
                    }
                }
                subscribed_at.elapsed()
            }
            _ => Duration::ZERO,
        };
        if lasted < Duration::from_secs(2) {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        } else {
            backoff = Duration::from_millis(50);
        }
    }
}

impl SecondLevel for Redis {
    fn get<'a>(
        &'a self,
        key: &'a TokenKey,
    ) -> BoxFuture<'a, Option<(Authentication, Option<Duration>)>> {
        Redis::get(self, key).boxed()
    }

    fn store<'a>(
        &'a self,
        key: &'a TokenKey,
        verdict: &'a Authentication,
        started: Instant,
    ) -> BoxFuture<'a, ()> {
        Redis::store(self, key, verdict, started).boxed()
    }

    fn evict(self: Arc<Self>, scope: Scope) -> BoxFuture<'static, ()> {
        async move { Redis::evict(&self, scope).await }.boxed()
    }

    fn subscribe(self: Arc<Self>, local: Arc<dyn EvictionSink>) {
        self.start_listening(local);
    }

    fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
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

/// Another instance's eviction, as broadcast: `*`, `u:<user id>` or `t:<key hex>`.
fn parse(message: &str) -> Option<Scope> {
    if message == "*" {
        Some(Scope::All)
    } else if let Some(id) = message.strip_prefix("u:") {
        id.parse().ok().map(Scope::User)
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
