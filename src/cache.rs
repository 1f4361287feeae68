//! The moka cache of id6's verdicts per token key, with one id6 call per key however many
//! requests miss on it at once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use moka::sync::Cache;
use moka::Expiry;

use crate::config::Settings;
use crate::error::{Error, Kind};
use crate::token::TokenKey;
use crate::user::Authentication;

/// A resolution in flight, shared by every request that waits on it.
pub(crate) type Pending = Shared<BoxFuture<'static, Authentication>>;

/// The verdicts cache. Only `Authenticated` and `Anonymous` are stored; `Unavailable` never
/// is, so the next request asks id6 again.
///
/// moka's `sync` cache, not `future`: its `get` is a plain call, so a hit resolves inside
/// `Service::call` with no future to box. Its blocking `get_with` must not run on a runtime
/// thread, so concurrent misses are merged here instead, by a small map of in-flight loads.
#[derive(Clone)]
pub(crate) struct AuthCache {
    entries: Cache<TokenKey, Authentication>,
    inflight: Arc<Mutex<HashMap<TokenKey, Pending>>>,
}

/// Users live for the cache TTL, rejected tokens for the shorter negative TTL.
struct TtlByVerdict {
    positive: Duration,
    negative: Duration,
}

impl Expiry<TokenKey, Authentication> for TtlByVerdict {
    fn expire_after_create(
        &self,
        _key: &TokenKey,
        value: &Authentication,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(match value {
            Authentication::Authenticated(_) => self.positive,
            _ => self.negative,
        })
    }
}

impl AuthCache {
    pub(crate) fn new(settings: &Settings) -> Self {
        let entries = Cache::builder()
            .max_capacity(settings.max_capacity)
            .expire_after(TtlByVerdict {
                positive: settings.cache_ttl,
                negative: settings.negative_ttl,
            })
            .build();
        AuthCache {
            entries,
            inflight: Arc::default(),
        }
    }

    /// The cached verdict for `key`, if any: the whole hit path.
    pub(crate) fn get(&self, key: &TokenKey) -> Option<Authentication> {
        self.entries.get(key)
    }

    /// Waits on the load of `key` already in flight, or starts one with `fetch`.
    ///
    /// # Concurrent calls on the same key
    ///
    /// Only the first caller's `fetch` runs; it runs in its own task, so it completes (and
    /// fills the cache) even when every waiting request is dropped. The verdict is stored
    /// before the in-flight entry goes, and both are checked under one lock, so a caller
    /// never misses both and starts a second call.
    pub(crate) fn load<F, Fut>(&self, key: TokenKey, fetch: F) -> Pending
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Authentication> + Send + 'static,
    {
        let mut inflight = self.lock_inflight();
        if let Some(done) = self.entries.get(&key) {
            return ready(done);
        }
        if let Some(pending) = inflight.get(&key) {
            tracing::trace!("joining an id6 call in flight");
            return pending.clone();
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return ready(Authentication::Unavailable(Error::new(Kind::Runtime(
                "no tokio runtime to call id6 from",
            ))));
        };
        let guard = InflightGuard {
            cache: self.clone(),
            key,
        };
        let fetch = fetch();
        let task = runtime.spawn(async move {
            let verdict = fetch.await;
            if !matches!(verdict, Authentication::Unavailable(_)) {
                guard.cache.entries.insert(key, verdict.clone());
            }
            drop(guard);
            verdict
        });
        let pending = async move {
            task.await.unwrap_or_else(|_| {
                Authentication::Unavailable(Error::new(Kind::Runtime("the id6 call was aborted")))
            })
        }
        .boxed()
        .shared();
        inflight.insert(key, pending.clone());
        pending
    }

    fn lock_inflight(&self) -> MutexGuard<'_, HashMap<TokenKey, Pending>> {
        // The map stays consistent whatever panicked while holding it.
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    pub(crate) fn inflight_len(&self) -> usize {
        self.lock_inflight().len()
    }
}

fn ready(verdict: Authentication) -> Pending {
    futures_util::future::ready(verdict).boxed().shared()
}

/// Removes the in-flight entry when the load ends, even by panic or runtime shutdown.
struct InflightGuard {
    cache: AuthCache,
    key: TokenKey,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.cache.lock_inflight().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Id6Builder;
    use crate::User;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn cache() -> AuthCache {
        let settings = Id6Builder::new("http://127.0.0.1:9")
            .negative_ttl(Duration::from_millis(50))
            .validate()
            .unwrap();
        AuthCache::new(&settings)
    }

    #[tokio::test]
    async fn concurrent_loads_share_one_fetch() {
        let cache = cache();
        let key = TokenKey::of("t");
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        let gate = gate.shared();
        let waiters: Vec<Pending> = (0..50)
            .map(|_| {
                let calls = calls.clone();
                let gate = gate.clone();
                cache.load(key, move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let _ = gate.await;
                    Authentication::Authenticated(Arc::new(User::new(1, "A")))
                })
            })
            .collect();
        assert_eq!(cache.inflight_len(), 1);
        release.send(()).unwrap();
        for w in waiters {
            assert_eq!(w.await.user().map(|u| u.id), Some(1));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.inflight_len(), 0);
        assert!(cache.get(&key).is_some());
    }

    #[tokio::test]
    async fn unavailable_is_not_cached_and_dropped_waiters_do_not_cancel() {
        let cache = cache();
        let key = TokenKey::of("u");
        let pending = cache.load(key, || async {
            Authentication::Unavailable(Error::new(Kind::Connect))
        });
        assert!(pending.await.unavailable().is_some());
        assert!(cache.get(&key).is_none());
        assert_eq!(cache.inflight_len(), 0);

        // Nobody awaits this load: it still completes and fills the cache.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        drop(cache.load(key, move || async move {
            let _ = done_tx.send(());
            Authentication::Anonymous
        }));
        done_rx.await.unwrap();
        while cache.inflight_len() > 0 {
            tokio::task::yield_now().await;
        }
        assert!(cache.get(&key).unwrap().is_anonymous());
    }
}
