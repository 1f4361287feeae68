//! How this instance reaches Redis: the client built from the settings (the URL, with its
//! user and password). Everything about topology and transport lives here, so that the
//! shared tier (`mod.rs`) speaks to "a connection" and never to a URL.

use crate::config::RedisSettings;
use crate::error::Error;
use crate::telemetry::Topology;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};

/// The client for `settings`. Never connects: Redis may be down at start.
///
/// # Errors
///
/// A URL that is not a Redis URL (named by its setting; the URL itself is never printed).
pub(super) fn client(settings: &RedisSettings) -> Result<redis::Client, Error> {
    redis::Client::open(settings.url.as_str()).map_err(|e| {
        Error::config(
            crate::config::setting::REDIS_URL,
            format!("not a Redis URL: {e}"),
        )
    })
}

/// Where this instance's commands and subscription go: one server, or the master that the
/// Sentinels name now.
pub(super) enum Target {
    /// One server, named by its URL.
    Single(redis::Client),
    /// The master of a Sentinel group, asked of the Sentinels when first needed and again
    /// after any failure (a failover moves it; the old address refuses or is read-only).
    Sentinel {
        sentinels: Box<tokio::sync::Mutex<SentinelClient>>,
        master: std::sync::Mutex<Option<redis::Client>>,
    },
}

impl Target {
    /// The target `settings` name.
    ///
    /// # Errors
    ///
    /// A URL that is not a Redis URL, or no Sentinel URL at all.
    pub(super) fn new(settings: &RedisSettings) -> Result<Target, Error> {
        let Some(sentinels) = &settings.sentinels else {
            return Ok(Target::Single(client(settings)?));
        };
        let not_a_url = |e: redis::RedisError| {
            Error::config(
                crate::config::setting::REDIS_SENTINELS,
                format!("not a list of Sentinel URLs: {e}"),
            )
        };
        let infos = sentinels
            .urls
            .iter()
            .map(|url| redis::IntoConnectionInfo::into_connection_info(url.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(not_a_url)?;
        // The master is reached as the Sentinels are: the same user and password.
        let node = infos.first().map(|info| {
            SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(info.redis_settings().clone())
        });
        let client = SentinelClient::build(
            infos,
            sentinels.master.clone(),
            node,
            SentinelServerType::Master,
        )
        .map_err(not_a_url)?;
        Ok(Target::Sentinel {
            sentinels: Box::new(tokio::sync::Mutex::new(client)),
            master: std::sync::Mutex::new(None),
        })
    }

    /// The client of the server to talk to now (for Sentinel, the master last named).
    pub(super) async fn client(&self) -> redis::RedisResult<redis::Client> {
        match self {
            Target::Single(client) => Ok(client.clone()),
            Target::Sentinel { sentinels, master } => {
                if let Some(client) = &*crate::lock::lock(master) {
                    return Ok(client.clone());
                }
                let client = sentinels.lock().await.async_get_client().await?;
                *crate::lock::lock(master) = Some(client.clone());
                Ok(client)
            }
        }
    }

    /// After a failure: the next [`client`](Self::client) asks the Sentinels again.
    pub(super) fn forget(&self) {
        if let Target::Sentinel { master, .. } = self {
            crate::lock::lock(master).take();
        }
    }

    pub(super) fn topology(&self) -> Topology {
        match self {
            Target::Single(_) => Topology::Single,
            Target::Sentinel { .. } => Topology::Sentinel,
        }
    }
}
