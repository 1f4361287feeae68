//! The subscriber: other instances' evictions applied to this one's local tiers, over one
//! pub/sub connection that is pinged, so that a dead flow is not taken for a quiet one.
//!
//! Why `PING` and not TCP keepalive: a flow cut by a NAT or a load balancer without a FIN is
//! often still alive at the TCP level on our side's peer (a proxy's kernel answers keepalive
//! probes while carrying nothing), and Linux's keepalive defaults wait two hours. A `PING`
//! crosses every hop to Redis and back. Every [`PING_EVERY`], a pong due within
//! [`PONG_WITHIN`]: a dead subscription is noticed within their sum (14 s). The pong's
//! wait is the longer part on purpose: a Redis that is slow but alive (a fork, a big
//! command) keeps its subscription, since replacing it clears every instance's local cache
//! at once. The same tick pings the connection that carries commands, which is replaced if
//! it does not answer.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;

use super::{parse, Redis};
use crate::resolve::{EvictionSink, Scope};

/// How often the subscription (and the command connection) is pinged.
const PING_EVERY: Duration = Duration::from_secs(4);
/// How long a pong may take: past it, the subscription is taken for dead. Longer than any
/// Redis stall worth riding out (a slow fork, a long command), so that a slow Redis does
/// not clear the fleet's caches; short enough that a dead flow is noticed within 15 s.
const PONG_WITHIN: Duration = Duration::from_secs(10);

/// Applies other instances' evictions to `local`, reconnecting as needed, while the
/// handle's tier lives.
pub(super) async fn listen(shared: Weak<Redis>, local: Arc<dyn EvictionSink>) {
    let mut was_connected = false;
    let mut backoff = Duration::from_millis(50);
    // Asked at once: a Redis that cannot be reached, or refuses our user, says so at start
    // (one warning, and `Id6::shared_health`), not at the first miss.
    if let Some(this) = shared.upgrade() {
        // Evictions queued by a lookup (a revocation claimed, not carried to its end) need
        // the task that applies the queue, which only an eviction of ours started so far.
        this.start_delivering();
        this.ping("connect").await;
    }
    loop {
        let Some(this) = shared.upgrade() else { return };
        let subscription = async {
            let client = this.target.client().await?;
            let mut pubsub = client.get_async_pubsub().await?;
            let channel = this.channel();
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        // How long a subscription lasted; one that failed or ended at once is backed off
        // the same way, rather than retried (and the cache cleared) in a tight loop.
        let subscribed = tokio::time::timeout(Duration::from_secs(2), subscription).await;
        // A subscription that cannot be made is an outage too (health, counters), even
        // while no request asks Redis anything.
        match &subscribed {
            Ok(Err(error)) => this.failed("subscribe", &error.to_string()),
            Err(_) => this.failed("subscribe", "timed out"),
            Ok(Ok(_)) => {}
        }
        drop(this);
        let lasted = match subscribed {
            Ok(Ok(pubsub)) => {
                // Broadcasts may have been missed while cut off, or before a first
                // subscription that came late (Redis down at start) while answers were cached.
                if was_connected || local.holds_any() {
                    tracing::info!("redis subscription (re)established; clearing the local cache");
                    local.evict(Scope::All);
                }
                if was_connected {
                    if let Some(this) = shared.upgrade() {
                        this.counters.resubscribed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                was_connected = true;
                // Up again as soon as subscribed, not at the next request's operation.
                if let Some(this) = shared.upgrade() {
                    this.ping("ping").await;
                }
                let subscribed_at = std::time::Instant::now();
                follow(pubsub, &shared, &*local).await;
                subscribed_at.elapsed()
            }
            _ => Duration::ZERO,
        };
        // Cut or never made: the server may be gone (with Sentinel, ask for the master again;
        // with a cluster, subscribe on the next seed).
        if let Some(this) = shared.upgrade() {
            this.target.next_subscription();
        }
        if lasted < Duration::from_secs(2) {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        } else {
            backoff = Duration::from_millis(50);
        }
    }
}

/// Applies the subscription's messages until it ends or stops answering pings.
async fn follow(pubsub: redis::aio::PubSub, shared: &Weak<Redis>, local: &dyn EvictionSink) {
    let Some(own) = shared.upgrade().map(|this| this.origin) else {
        return;
    };
    let (mut sink, mut messages) = pubsub.split();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else {
                    tracing::info!("redis subscription closed; subscribing again");
                    return;
                };
                let Ok(payload) = message.get_payload::<String>() else {
                    continue;
                };
                match parse(&payload) {
                    // This instance's own, come back once applied in Redis (at once, or from
                    // the queue after a stall): counted and told when it was made; evicted
                    // again quietly, for what a miss read back from Redis before the
                    // deletion there.
                    Some((Some(origin), scope)) if origin == own => local.evict_again(scope),
                    // Applied locally only: not broadcast again.
                    Some((_, scope)) => local.evict(scope),
                    None => {}
                }
            }
            _ = ticks.tick() => {
                let pong = tokio::time::timeout(PONG_WITHIN, sink.ping::<redis::Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    tracing::warn!(
                        "redis subscription did not answer a PING within {PONG_WITHIN:?}; \
                         subscribing again on a new connection"
                    );
                    return;
                }
                let Some(this) = shared.upgrade() else { return };
                this.ping("ping").await;
            }
        }
    }
}
