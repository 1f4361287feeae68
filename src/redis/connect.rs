//! How this instance reaches Redis: the client built from the settings (the URL, with its
//! user and password). Everything about topology and transport lives here, so that the
//! shared tier (`mod.rs`) speaks to "a connection" and never to a URL.

use crate::config::RedisSettings;
use crate::error::Error;

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
