//! Several instances, one truth (feature `redis`): id6's answers shared through Redis, and
//! every eviction broadcast to every instance over Redis pub/sub.
//!
//! - After a local (moka) miss, Redis is asked before id6; answers are stored there under
//!   `{prefix}t:{sha256 hex}` (never the token) with their TTL as a Redis expiry. The hit
//!   path never touches Redis.
//! - An eviction deletes the shared entries and publishes `t:<key>`, `u:<user id>` or `*`
//!   on `{prefix}invalidate`; every instance evicts locally, with the same refill-race
//!   protection as a local eviction. A user eviction first sets `{prefix}rev:{id}` (ms): a
//!   store from a load that started before it is refused atomically (Lua), so an answer in
//!   flight during `disconnect` cannot poison the shared cache either.
//! - Pub/sub, not streams: invalidations are only useful live; an instance that was cut off
//!   clears its local cache when it subscribes again instead of replaying a backlog. So a
//!   revoked user is served by an instance that missed the broadcast for at most its local
//!   TTL while cut off, and not at all once it is back.
//! - Redis is optional at run time: every operation has a short timeout; failures are
//!   counted, logged once per outage, and the layer carries on with moka and id6.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use tokio::sync::OnceCell;

use futures_util::future::{BoxFuture, FutureExt};

use crate::clock::now_ms;
use crate::config::RedisSettings;
use crate::resolve::{AuthCache, Scope, SecondLevel};
use crate::token::TokenKey;
use crate::user::{Authentication, TokenRejection, User};

/// Atomic store: refused when the user's tokens were revoked after the load started.
const STORE_USER: &str = r"
local revoked = redis.call('GET', KEYS[2])
if revoked and tonumber(revoked) >= tonumber(ARGV[3]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return 1
";

/// How long Redis is left alone after a failed operation.
const RETRY_AFTER_FAILURE_MS: u64 = 500;

#[derive(serde::Serialize, serde::Deserialize)]
enum Stored {
    /// Written by earlier versions, without when id6 said so.
    #[serde(rename = "user")]
    User(User),
    /// A user, and when (ms since the epoch) the load that asked id6 began. (An earlier
    /// version reading it finds no verdict it knows, and asks id6.)
    #[serde(rename = "user_at")]
    UserAt { user: User, at: u64 },
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
    store_user: redis::Script,
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
    pub(crate) fn new(settings: RedisSettings) -> Result<Self, crate::Error> {
        let client = redis::Client::open(settings.url.as_str()).map_err(|e| {
            crate::Error::config(
                crate::config::setting::REDIS_URL,
                format!("not a Redis URL: {e}"),
            )
        })?;
        Ok(Redis {
            client,
            connection: OnceCell::new(),
            prefix: settings.prefix,
            timeout: settings.timeout,
            positive_ttl: settings.positive_ttl,
            negative_ttl: settings.negative_ttl,
            store_user: redis::Script::new(STORE_USER),
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
    /// when known.
    async fn get(&self, key: &TokenKey) -> Option<(Authentication, Option<Duration>)> {
        let entry = self.entry(key);
        let raw: Option<Vec<u8>> = self
            .run("get", |mut c| async move { c.get(entry).await })
            .await
            .flatten();
        // A rejection's age does not matter (a few seconds' TTL); an old-format user's is
        // unknown.
        Some(match serde_json::from_slice(&raw?).ok()? {
            Stored::UserAt { user, at } => {
                let age = Duration::from_millis(now_ms().saturating_sub(at));
                (Authentication::Authenticated(Arc::new(user)), Some(age))
            }
            Stored::User(user) => (Authentication::Authenticated(Arc::new(user)), None),
            Stored::Rejected => (
                Authentication::Rejected(TokenRejection::InvalidToken),
                Some(Duration::ZERO),
            ),
            Stored::RejectedAs(code) => (
                Authentication::Rejected(TokenRejection::from_code(Some(&code))),
                Some(Duration::ZERO),
            ),
        })
    }

    /// Shares an id6 verdict; `started_ms` is when the load that produced it began.
    async fn store(&self, key: &TokenKey, verdict: &Authentication, started_ms: u64) {
        if let Some(user) = verdict.user() {
            if let Some(revoked_at) = user.invalidate_tokens_at {
                self.note_revocation(user.id, revoked_at).await;
            }
        }
        let entry = self.entry(key);
        match verdict {
            Authentication::Authenticated(user) => {
                let stored = Stored::UserAt {
                    user: User::clone(user),
                    at: started_ms,
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
                    .arg(millis(self.positive_ttl))
                    .arg(started_ms)
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
            Scope::User(user_id) => self.invalidate_user(user_id).await,
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
    /// tells every instance.
    async fn invalidate_user(&self, user_id: u64) {
        let prefix = self.prefix.clone();
        let channel = self.channel();
        let mark_ttl = millis(self.positive_ttl) + 60_000;
        let _: Option<()> = self
            .run("invalidate", |mut c| async move {
                let set = format!("{prefix}u:{user_id}");
                let _: () = c
                    .pset_ex(format!("{prefix}rev:{user_id}"), now_ms(), mark_ttl)
                    .await?;
                let members: Vec<String> = c.smembers(&set).await?;
                let mut pipe = redis::pipe();
                for member in members {
                    pipe.del(format!("{prefix}t:{member}"));
                }
                pipe.del(set).publish(channel, format!("u:{user_id}"));
                pipe.query_async(&mut c).await
            })
            .await;
    }

    /// An `/authorize` answer showed when id6 last revoked the user's tokens: if no instance
    /// has evicted the user since, do it everywhere now.
    async fn note_revocation(&self, user_id: u64, revoked_at_ms: u64) {
        let marker = format!("{}rev:{user_id}", self.prefix);
        let known: Option<Option<u64>> = self
            .run("get", |mut c| async move { c.get(marker).await })
            .await;
        if let Some(known) = known {
            if known.is_none_or(|known| known < revoked_at_ms) {
                self.invalidate_user(user_id).await;
            }
        }
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
                let mut pipe = redis::pipe();
                for key in keys {
                    pipe.del(key);
                }
                pipe.query_async(&mut c).await
            })
            .await;
    }

    /// Starts, once, the task that applies other instances' evictions to `cache`.
    fn start_listening(self: &Arc<Self>, cache: AuthCache) {
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
                () = listen(shared, cache) => {}
            }
        });
    }
}

/// Applies other instances' evictions to `cache`, reconnecting as needed, while the
/// handle's `Shared` lives.
async fn listen(shared: std::sync::Weak<Redis>, cache: AuthCache) {
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
                if was_connected || cache.entry_count() > 0 {
                    tracing::info!("redis subscription (re)established; clearing the local cache");
                    cache.evict(Scope::All);
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
                        cache.evict(scope);
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
        started_ms: u64,
    ) -> BoxFuture<'a, ()> {
        Redis::store(self, key, verdict, started_ms).boxed()
    }

    fn evict(self: Arc<Self>, scope: Scope) -> BoxFuture<'static, ()> {
        async move { Redis::evict(&self, scope).await }.boxed()
    }

    fn subscribe(self: Arc<Self>, local: &AuthCache) {
        self.start_listening(local.clone());
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
