//! How this instance reaches Redis: the client built from the settings (the URL, with its
//! user and password, and for `rediss://` the TLS material). Everything about topology and
//! transport lives here, so that the shared tier (`mod.rs`) speaks to "a connection" and
//! never to a URL.
//!
//! TLS is rustls (features `redis` and `rustls` together): the server is verified against
//! the public roots (webpki-roots) or the CA given, never skipped; a certificate that does
//! not verify fails the connection, which the shared tier counts as an outage like any other.
//! Nothing here ever falls back to plain text.

use crate::config::{setting, RedisSettings};
use crate::error::Error;
use crate::telemetry::Topology;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};

/// The client for `settings`. Never connects: Redis may be down at start.
///
/// # Errors
///
/// A URL that is not a Redis URL, a `rediss://` one in a build without TLS for Redis or that
/// asks for no verification (`#insecure`), a CA file without a certificate, a client
/// certificate or key that does not parse or does not match: each named by its setting. The
/// URL itself is never printed (it may carry a password), nor is the key.
pub(super) fn client(settings: &RedisSettings) -> Result<redis::Client, Error> {
    client_of(&settings.url, settings, setting::REDIS_URL)
}

/// The client for `url` (the server's, or one cluster seed's), errors naming `row`.
fn client_of(
    url: &str,
    settings: &RedisSettings,
    row: crate::error::Setting,
) -> Result<redis::Client, Error> {
    let not_a_url = |e: redis::RedisError| Error::config(row, format!("not a Redis URL: {e}"));
    if !is_tls(url) {
        return redis::Client::open(url).map_err(not_a_url);
    }
    #[cfg(not(feature = "rustls"))]
    {
        let _ = settings;
        Err(no_tls(row))
    }
    #[cfg(feature = "rustls")]
    {
        let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(not_a_url)?;
        verified(std::slice::from_ref(&info), row)?;
        tls::client(info, settings)
    }
}

/// A Sentinel client over TLS (`rediss://` Sentinels): the Sentinels and the master they
/// name both spoken to over TLS, verified as a `rediss://` server is (the public roots, or
/// the CA file; the client certificate when set), with the first URL's user and password.
fn sentinels_over_tls(
    settings: &RedisSettings,
    infos: &[redis::ConnectionInfo],
    master: &str,
) -> Result<SentinelClient, Error> {
    let row = setting::REDIS_SENTINELS;
    if infos
        .iter()
        .any(|info| !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }))
    {
        return Err(Error::config(row, "mixes rediss:// and redis:// Sentinels"));
    }
    #[cfg(not(feature = "rustls"))]
    {
        let _ = (settings, master);
        Err(no_tls(row))
    }
    #[cfg(feature = "rustls")]
    {
        use redis::sentinel::SentinelClientBuilder;
        use redis::TlsMode;
        verified(infos, row)?;
        let certificates = tls::certificates(settings)?;
        let refused = |_| Error::config(row, "unusable as Sentinels over TLS");
        let addresses = infos.iter().map(|info| info.addr().clone());
        let mut builder = SentinelClientBuilder::new(addresses, master, SentinelServerType::Master)
            .map_err(refused)?
            .set_client_to_sentinel_tls_mode(TlsMode::Secure)
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_certificates(certificates.clone())
            .set_client_to_redis_certificates(certificates);
        let auth = infos.first().map(redis::ConnectionInfo::redis_settings);
        if let Some(user) = auth.and_then(|a| a.username()) {
            builder = builder
                .set_client_to_sentinel_username(user)
                .set_client_to_redis_username(user);
        }
        if let Some(password) = auth.and_then(|a| a.password()) {
            builder = builder
                .set_client_to_sentinel_password(password)
                .set_client_to_redis_password(password);
        }
        builder.build().map_err(refused)
    }
}

/// Refuses TLS addresses that ask for no certificate verification (`#insecure`).
#[cfg(feature = "rustls")]
fn verified(infos: &[redis::ConnectionInfo], row: crate::error::Setting) -> Result<(), Error> {
    let insecure = infos.iter().any(|info| {
        matches!(
            info.addr(),
            redis::ConnectionAddr::TcpTls { insecure: true, .. }
        )
    });
    if insecure {
        return Err(Error::config(
            row,
            "asks for no certificate verification (`#insecure`): not supported; name \
             Redis's CA with ID6_REDIS_CA_FILE instead",
        ));
    }
    Ok(())
}

/// Whether the URL asks for TLS (`rediss://`, or Valkey's `valkeys://`), as redis-rs reads it.
fn is_tls(url: &str) -> bool {
    redis::parse_redis_url(url).is_some_and(|url| matches!(url.scheme(), "rediss" | "valkeys"))
}

#[cfg(feature = "rustls")]
mod tls {
    use std::sync::Arc;

    use rustls::crypto::{aws_lc_rs, CryptoProvider};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use rustls::sign::CertifiedKey;
    use rustls::RootCertStore;

    use crate::config::{setting, RedisSettings};
    use crate::error::Error;

    /// A TLS client for `info` (a `rediss://` URL), with the settings' files.
    pub(super) fn client(
        info: redis::ConnectionInfo,
        settings: &RedisSettings,
    ) -> Result<redis::Client, Error> {
        let certificates = certificates(settings)?;
        // Checked by `certificates`; should redis-rs still refuse a file, its words could
        // quote the key: the setting is named, not the reason.
        redis::Client::build_with_tls(info, certificates).map_err(|_| {
            let which = if settings.client_pem.is_some() {
                setting::REDIS_CLIENT_CERT
            } else {
                setting::REDIS_CA_FILE
            };
            Error::config(which, "unusable for TLS")
        })
    }

    /// The settings' CA bundle and client certificate as redis-rs takes them (its cluster and
    /// Sentinel clients too), checked here, at build, so that a bad file is a line naming its
    /// variable rather than an outage at the first connection. Chooses the rustls provider.
    pub(super) fn certificates(settings: &RedisSettings) -> Result<redis::TlsCertificates, Error> {
        let provider = provider();
        if let Some(ca) = &settings.ca_pem {
            roots(ca)?;
        }
        if let Some((cert, key)) = &settings.client_pem {
            identity(cert, key, &provider)?;
        }
        Ok(redis::TlsCertificates {
            client_tls: settings
                .client_pem
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: settings.ca_pem.clone(),
        })
    }

    /// The process's rustls provider, which redis-rs's connections use: aws-lc-rs (reqwest's
    /// already) when the app installed none, rather than rustls's panic at the first
    /// connection when its crate features name no single provider.
    fn provider() -> Arc<CryptoProvider> {
        if CryptoProvider::get_default().is_none() {
            // Losing a race to another installer is fine: one provider is in place either way.
            let _ = aws_lc_rs::default_provider().install_default();
        }
        CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(aws_lc_rs::default_provider()))
    }

    /// The CA bundle: at least one certificate, each one a usable trust anchor.
    fn roots(pem: &[u8]) -> Result<(), Error> {
        let invalid = |why: String| Error::config(setting::REDIS_CA_FILE, why);
        let mut store = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| invalid(format!("not a PEM certificate bundle: {e}")))?;
            store
                .add(cert)
                .map_err(|e| invalid(format!("holds an unusable CA certificate: {e}")))?;
        }
        if store.is_empty() {
            return Err(invalid("holds no PEM certificate".to_owned()));
        }
        Ok(())
    }

    /// The client certificate chain and its key, which must match.
    fn identity(cert: &[u8], key: &[u8], provider: &CryptoProvider) -> Result<(), Error> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                Error::config(
                    setting::REDIS_CLIENT_CERT,
                    format!("not a PEM certificate chain: {e}"),
                )
            })?;
        if chain.is_empty() {
            return Err(Error::config(
                setting::REDIS_CLIENT_CERT,
                "holds no PEM certificate",
            ));
        }
        // No parser's words about the key: they could quote a line of it.
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| {
            Error::config(
                setting::REDIS_CLIENT_KEY,
                "not a PEM private key (PKCS#8, PKCS#1 or SEC1)",
            )
        })?;
        CertifiedKey::from_der(chain, key, provider).map_err(|e| {
            Error::config(
                setting::REDIS_CLIENT_KEY,
                format!("unusable with the client certificate: {e}"),
            )
        })?;
        Ok(())
    }
}

/// The connection that carries commands: to one server (reconnecting by itself), or to a
/// cluster (routing each command to its slot's master, following `MOVED` and new topologies).
/// The shared tier speaks to it as to any Redis connection.
#[derive(Clone)]
pub(super) enum Connection {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

impl Connection {
    /// Every key matching `pattern`: one server's `SCAN`, or each master's in a cluster
    /// (a cluster's `SCAN` is per node). [`SCAN_PAGE`] keys a round trip: Redis's default
    /// of 10 made a clear of a 300 000-key Redis 30 000 round trips (5 s idle, past the
    /// clear's bound on a busy machine, leaving the entries it was to delete).
    pub(super) async fn scan(&mut self, pattern: &str) -> redis::RedisResult<Vec<String>> {
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
        let cluster = match self {
            Connection::Single(c) => {
                let mut keys = Vec::new();
                let mut cursor = 0u64;
                loop {
                    let (next, page): (u64, Vec<String>) =
                        scan_page(cursor, pattern).query_async(c).await?;
                    keys.extend(page);
                    if next == 0 {
                        return Ok(keys);
                    }
                    cursor = next;
                }
            }
            Connection::Cluster(c) => c,
        };
        let nodes = cluster
            .route_command(
                redis::cmd("CLUSTER").arg("NODES").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
            )
            .await?;
        let nodes: String = redis::from_redis_value(nodes)?;
        let mut keys = Vec::new();
        for (host, port) in masters(&nodes) {
            let mut cursor = 0u64;
            loop {
                let page = cluster
                    .route_command(
                        scan_page(cursor, pattern),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port,
                        }),
                    )
                    .await?;
                let (next, page): (u64, Vec<String>) = redis::from_redis_value(page)?;
                keys.extend(page);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(keys)
    }
}

/// How many keys one `SCAN` round trip looks at (Redis's `COUNT`, a hint).
const SCAN_PAGE: u32 = 1000;

/// One `SCAN` page: `SCAN cursor MATCH pattern COUNT SCAN_PAGE`.
fn scan_page(cursor: u64, pattern: &str) -> redis::Cmd {
    let mut page = redis::cmd("SCAN");
    page.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(SCAN_PAGE);
    page
}

/// The masters that `CLUSTER NODES` lists as serving (`<id> <ip:port@bus[,host]> <flags> …`),
/// failed ones left out.
fn masters(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, address, flags) = (fields.next()?, fields.next()?, fields.next()?);
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master") || flags.iter().any(|f| f.starts_with("fail")) {
                return None;
            }
            let (host, port) = address.split(['@', ',']).next()?.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

/// Where this instance's commands and subscription go: one server, the master that the
/// Sentinels name now, or a cluster.
pub(super) enum Target {
    /// One server, named by its URL.
    Single(redis::Client),
    /// The master of a Sentinel group, asked of the Sentinels when first needed and again
    /// after any failure (a failover moves it; the old address refuses or is read-only).
    Sentinel {
        sentinels: Box<tokio::sync::Mutex<SentinelClient>>,
        master: std::sync::Mutex<Option<redis::Client>>,
    },
    /// A Redis Cluster: commands through redis-rs's cluster client (found from the seeds);
    /// the subscription on one seed at a time, the next one after a cut. Plain `PUBLISH` is
    /// cluster-wide (every node forwards it over the cluster bus to its subscribers), so one
    /// subscription on any node hears every instance; sharded pub/sub (`SPUBLISH`) would
    /// confine a message to one slot's shard, and need a subscription per shard for one
    /// channel that is not per-key anyway.
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        seeds: Vec<redis::Client>,
        /// The seed the subscription uses now.
        seed: std::sync::atomic::AtomicUsize,
    },
}

/// A `rediss://` URL in a build without TLS for Redis, named by its setting with the feature
/// that would serve it.
#[cfg(not(feature = "rustls"))]
fn no_tls(row: crate::error::Setting) -> Error {
    Error::config(
        row,
        "is rediss:// (TLS), but id6-tower was built without TLS for Redis: \
         enable its `rustls` feature (default) with `redis`",
    )
}

impl Target {
    /// The target `settings` name.
    ///
    /// # Errors
    ///
    /// A URL that is not a Redis URL, or no Sentinel URL at all.
    pub(super) fn new(settings: &RedisSettings) -> Result<Target, Error> {
        if let Some(seeds) = &settings.cluster {
            return cluster(settings, seeds);
        }
        let Some(sentinels) = &settings.sentinels else {
            return Ok(Target::Single(client(settings)?));
        };
        let not_a_url = |e: redis::RedisError| {
            Error::config(
                crate::config::setting::REDIS_SENTINELS,
                format!("not a list of Sentinel URLs: {e}"),
            )
        };
        let over_tls = sentinels.urls.iter().any(|url| is_tls(url));
        // Before parsing: without TLS, redis-rs refuses a `rediss://` URL in words that do
        // not name the feature that would serve it.
        #[cfg(not(feature = "rustls"))]
        if over_tls {
            return Err(no_tls(crate::config::setting::REDIS_SENTINELS));
        }
        let infos = sentinels
            .urls
            .iter()
            .map(|url| redis::IntoConnectionInfo::into_connection_info(url.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(not_a_url)?;
        let client = if over_tls {
            sentinels_over_tls(settings, &infos, &sentinels.master)?
        } else {
            // The master is reached as the Sentinels are: the same user and password.
            let node = infos.first().map(|info| {
                SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(info.redis_settings().clone())
            });
            SentinelClient::build(
                infos,
                sentinels.master.clone(),
                node,
                SentinelServerType::Master,
            )
            .map_err(not_a_url)?
        };
        Ok(Target::Sentinel {
            sentinels: Box::new(tokio::sync::Mutex::new(client)),
            master: std::sync::Mutex::new(None),
        })
    }

    /// The connection that carries commands, new (it connects on first use, or for a
    /// cluster now, finding its slots from the seeds). The settings bound each attempt.
    pub(super) async fn connect(
        &self,
        timeout: std::time::Duration,
    ) -> redis::RedisResult<Connection> {
        if let Target::Cluster { client, .. } = self {
            let config = redis::cluster::ClusterConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout);
            return Ok(Connection::Cluster(
                client.get_async_connection_with_config(config).await?,
            ));
        }
        let client = self.client().await?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        Ok(Connection::Single(
            redis::aio::ConnectionManager::new_lazy_with_config(client, config)?,
        ))
    }

    /// The client of the server to subscribe on now (for Sentinel, the master last named;
    /// for a cluster, the seed in turn).
    pub(super) async fn client(&self) -> redis::RedisResult<redis::Client> {
        match self {
            Target::Single(client) => Ok(client.clone()),
            Target::Cluster { seeds, seed, .. } => {
                let turn = seed.load(std::sync::atomic::Ordering::Relaxed);
                seeds
                    .get(turn % seeds.len().max(1))
                    .cloned()
                    .ok_or_else(|| {
                        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no seed"))
                    })
            }
            Target::Sentinel { sentinels, master } => {
                if let Some(client) = &*crate::lock::lock(master) {
                    return Ok(client.clone());
                }
                let mut sentinels = sentinels.lock().await;
                // Another caller may have asked while this one waited: one question at a time.
                if let Some(client) = &*crate::lock::lock(master) {
                    return Ok(client.clone());
                }
                let client = sentinels.async_get_client().await?;
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

    /// After a subscription was cut or never made: with a cluster, the next seed is tried
    /// (the node it was on may be the one down); elsewhere as [`forget`](Self::forget).
    pub(super) fn next_subscription(&self) {
        match self {
            Target::Cluster { seed, .. } => {
                seed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            _ => self.forget(),
        }
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster { .. })
    }

    pub(super) fn topology(&self) -> Topology {
        match self {
            Target::Single(_) => Topology::Single,
            Target::Sentinel { .. } => Topology::Sentinel,
            Target::Cluster { .. } => Topology::Cluster,
        }
    }
}

/// The cluster the seeds name: one cluster client (every node reached with the first seed's
/// user, password and TLS, as redis-rs requires) and a plain client per seed for the
/// subscription.
fn cluster(settings: &RedisSettings, urls: &[String]) -> Result<Target, Error> {
    let not_a_url = |e: redis::RedisError| {
        Error::config(
            setting::REDIS_CLUSTER,
            format!("not a list of Redis URLs of one cluster: {e}"),
        )
    };
    // The same checks as one server's URL (TLS feature, no `#insecure`), named as ours.
    let seeds = urls
        .iter()
        .map(|url| client_of(url, settings, setting::REDIS_CLUSTER))
        .collect::<Result<Vec<_>, _>>()?;
    let infos = seeds
        .iter()
        .map(|seed| seed.get_connection_info().clone())
        .collect::<Vec<_>>();
    #[allow(unused_mut)]
    let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
        // One retry (a `MOVED` after a slot moved, a reconnection): past it the operation
        // fails, fast, and the request asks id6.
        .retries(1)
        .min_retry_wait(10)
        .max_retry_wait(50);
    #[cfg(feature = "rustls")]
    if urls.iter().any(|url| is_tls(url)) {
        builder = builder.certs(tls::certificates(settings)?);
    }
    let client = builder.build().map_err(not_a_url)?;
    Ok(Target::Cluster {
        client: Box::new(client),
        seeds,
        seed: std::sync::atomic::AtomicUsize::new(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Id6Builder;

    fn settings(url: &str) -> RedisSettings {
        Id6Builder::new("http://127.0.0.1:9/api")
            .redis(url)
            .validate()
            .unwrap()
            .redis
            .unwrap()
    }

    #[test]
    fn the_serving_masters_of_cluster_nodes() {
        let nodes = "\
07c37dfeb2352 127.0.0.1:30004@40004 slave e7d1eecce10fd 0 1426238317239 4 connected
67ed2db8d677e 127.0.0.1:30002@40002,node-b master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7e 127.0.0.1:30003@40003 master - 0 1426238318243 3 connected 10923-16383
6ec23923021cf 127.0.0.1:30005@40005 master,fail - 1426238316232 0 5 disconnected
e7d1eecce10fd 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
";
        assert_eq!(
            masters(nodes),
            [
                ("127.0.0.1".to_owned(), 30002),
                ("127.0.0.1".to_owned(), 30003),
                ("127.0.0.1".to_owned(), 30001)
            ]
        );
    }

    /// Run in a build without `rustls` too (`--no-default-features --features redis`): there,
    /// `rediss://` is refused naming the feature, and plain URLs still build.
    #[test]
    fn rediss_needs_rustls_and_verification() {
        assert!(client(&settings("redis://app:S3CRET@127.0.0.1:1")).is_ok());
        let tls = client(&settings("rediss://app:S3CRET@127.0.0.1:1"));
        let insecure = client(&settings("rediss://app:S3CRET@127.0.0.1:1/#insecure"));
        for result in [&tls, &insecure] {
            if let Err(err) = result {
                assert_eq!(err.variable(), Some("ID6_REDIS_URL"), "{err}");
                assert!(!format!("{err} {err:?}").contains("S3CRET"), "{err:?}");
            }
        }
        assert!(insecure.is_err(), "verification cannot be turned off");
        #[cfg(feature = "rustls")]
        {
            assert!(tls.is_ok());
            // The app installed none: one is in place for redis-rs's connections.
            assert!(rustls::crypto::CryptoProvider::get_default().is_some());
        }
        #[cfg(not(feature = "rustls"))]
        {
            let err = tls.err().unwrap();
            assert!(err.to_string().contains("`rustls`"), "{err}");
        }
    }
}
