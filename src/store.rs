//! The shared store: Redis (or Redis Cluster) through `fred`, for fleet mode (SPEC §6).
//!
//! Owns the key layout, one function per key ([`Store::ids_key`] and friends), and every
//! command the fleet sends. Concurrent commands are pipelined by fred; nothing here grows
//! with a window's size on the request path (no `KEYS`, `SMEMBERS`, `SCAN` there). While the
//! client is disconnected, calls fail at once with [`StoreError::Unavailable`] rather than
//! queueing behind a dead connection. Every key is created by a command (or script) that
//! also sets its absolute expiry (SPEC §6.2): none depends on a later `EXPIREAT` arriving.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fred::bytes_utils::Str;
use fred::prelude::*;
use fred::types::config::{
    ClusterDiscoveryPolicy, ReconnectError, ServerConfig, UnresponsiveConfig,
};
use fred::types::{Expiration, MultipleKeys, SetOptions};
use futures::StreamExt;
use futures::future::try_join_all;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot, watch};

use crate::lanes::Lanes;

/// The longest pause between attempts to reconnect (they start at 50 ms and double).
pub const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// Ids re-added per script call when an instance refills Redis.
const READD_BATCH: usize = 1000;

/// Most ids the batcher takes off its queue for one round.
const MAX_BATCH: usize = 1024;

/// Times the batcher lets other tasks run, while its queue keeps growing, before a round.
const MAX_YIELDS: usize = 4;

/// Ids waiting for the batcher; beyond this a request is shed with 503.
const ADD_QUEUE: usize = 65_536;

/// Where the batcher tells a request its id's outcome.
type Answer = oneshot::Sender<Result<(), StoreError>>;

/// A Lua script, called by its SHA-1 (`EVALSHA`): sent in full (`EVAL`, which also caches
/// it) only when Redis lacks it (restarted, a new node) and answers `NOSCRIPT`. One round
/// trip, two only then; the SHA-1 is computed once and shared by every call without a copy.
pub struct Script {
    text: &'static str,
    sha: std::sync::OnceLock<Str>,
}

impl Script {
    const fn new(text: &'static str) -> Self {
        Self {
            text,
            sha: std::sync::OnceLock::new(),
        }
    }

    fn sha(&self) -> Str {
        self.sha
            .get_or_init(|| {
                let digest = ring::digest::digest(
                    &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                    self.text.as_bytes(),
                );
                Str::from(
                    digest
                        .as_ref()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>(),
                )
            })
            .clone()
    }

    /// Runs the script on `client` (a node of a cluster, with `with_cluster_node`).
    async fn call<R: FromValue>(
        &self,
        client: &(impl LuaInterface + Sync),
        keys: impl Into<MultipleKeys>,
        args: Vec<Value>,
    ) -> Result<R, fred::error::Error> {
        let keys: MultipleKeys = keys.into();
        match client.evalsha(self.sha(), keys.clone(), args.clone()).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                client.eval(Str::from_static(self.text), keys, args).await
            }
            outcome => outcome,
        }
    }
}

/// One id waiting to be added, and who to tell.
struct PendingAdd {
    window_start: i64,
    id: i64,
    done: Answer,
}

/// The shard of `id` among `shards`: the same on every instance (unseeded xxh3).
pub fn shard_of(id: i64, shards: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(&id.to_le_bytes()) % u64::from(shards)) as u32
}

/// `<prefix>:{<window_start>:<shard>}:ids` — the hash tag spreads a window over a cluster.
pub fn ids_key(prefix: &str, window_start: i64, shard: u32) -> String {
    format!("{prefix}:{{{window_start}:{shard}}}:ids")
}

/// Adds ids to a window's shard set and sets the set's expiry, atomically, so the command that
/// creates the key is the one that gives it its expiry (SPEC §6.2): a write whose answer is
/// lost or late (a timeout, the cutoff) still leaves a key that expires. KEYS[1]: the shard
/// set; ARGV[1]: its expiry (epoch seconds, absolute, so every write repeats it harmlessly);
/// ARGV[2..]: the ids. `SADD` takes them 1000 at a time: `unpack` puts each on Lua's C
/// stack, which holds about 8000.
static ADD_IDS: Script = Script::new(
    r"
local n = #ARGV
for i = 2, n, 1000 do
  redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, n)))
end
redis.call('EXPIREAT', KEYS[1], ARGV[1])
",
);

/// The generation of the node a script runs on: its `run_id` and its `master_replid` (which
/// a promotion changes even when the `run_id` comes back: A, then B, then A again).
static RUN_ID: Script = Script::new(
    r"
return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') .. ':' ..
  string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
",
);

/// Renews (or, with ARGV[3] = 0, withdraws) an instance's heartbeat in the fleet's members
/// (KEYS[1], a sorted set scored by each member's expiry on Redis's clock, ms), dropping
/// the expired. ARGV: the instance, the TTL (ms), 1 to join. Answers Redis's clock (seconds,
/// microseconds), its generation (as [`RUN_ID`]) and its uptime (s): one round trip measures the clock and the
/// generation.
static HEARTBEAT: Script = Script::new(
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl * 10)
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
local info = redis.call('INFO', 'server')
local generation = string.match(info, 'run_id:(%x+)') .. ':' ..
  string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
return {t[1], t[2], generation, tonumber(string.match(info, 'uptime_in_seconds:(%d+)'))}
",
);

/// The live members (KEYS[1]; see [`HEARTBEAT`]), by Redis's clock.
static MEMBERS: Script = Script::new(
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
",
);

/// Marks a window drained by an instance (KEYS[1], a hash: instance → the generation its ids
/// are in), with the hash's expiry. ARGV: the instance, the generation, the expiry (epoch s).
static MARK: Script = Script::new(
    r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIREAT', KEYS[1], ARGV[3])
",
);

/// Fixes a window's count once (KEYS[1]): `SET NX GET`, so a racing leader (or a re-publish
/// after an empty restart) adopts the stored value; refused while Redis's clock stands before
/// the window's end + grace (ARGV[2], ms), so an instance whose clock leapt ahead cannot fix
/// a window still counting. ARGV: the count, that instant, the key's expiry (epoch s).
/// Answers {count, connected replicas}, or {-1, 0} when too early.
static FIX: Script = Script::new(
    r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now < tonumber(ARGV[2]) then
  return {-1, 0}
end
local old = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'GET', 'EXAT', ARGV[3])
local replicas = string.match(redis.call('INFO', 'replication'), 'connected_slaves:(%d+)')
return {tonumber(old or ARGV[1]), tonumber(replicas or '0')}
",
);

/// Approx mode: merges an instance's sketch (ARGV[1], Redis's dense encoding) into the
/// window's HyperLogLog (KEYS[1]) through a scratch key of the instance (KEYS[2], the same
/// hash tag), and gives the HLL its expiry (ARGV[2], epoch s) in the same step: `PFMERGE`
/// keeps every register's maximum, so merges repeat harmlessly and in any order.
static MERGE: Script = Script::new(
    r"
redis.call('SET', KEYS[2], ARGV[1], 'PX', 60000)
redis.call('PFMERGE', KEYS[1], KEYS[2])
redis.call('DEL', KEYS[2])
redis.call('EXPIREAT', KEYS[1], ARGV[2])
",
);

/// Takes a window's lease (KEYS[1]) if no one holds it and ARGV[3] is 1, or renews it if
/// this instance (ARGV[1]) holds it, for ARGV[2] ms: compare-and-expire in one step, so no
/// instance ever extends another's lease. Answers 1 when this instance holds it.
static LEAD: Script = Script::new(
    r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder and ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
",
);

/// Registers an endpoint for a window within the fleet's bounds, atomically, so the first
/// endpoints registered anywhere in the fleet are the ones kept (SPEC §6.1 I-endpoint).
/// KEYS[1]: the window's endpoint set; KEYS[2]: its endpoints per domain (a hash keyed by
/// the endpoint's [`Site`] as text), both under the window's hash tag (one cluster slot).
/// ARGV: the normalized endpoint, its site, the most endpoints per window, the most per
/// domain, the keys' expiry (epoch seconds), and 1 to add it whatever the bounds (a re-add
/// of an endpoint registered within them before Redis lost it). Answers 0 registered (or already), 1 the window
/// is full, 2 the domain is. Every outcome re-applies the expiry (absolute, so repeating it
/// is harmless) to both keys: `EXPIREAT` of a missing key creates nothing, and a key is
/// created only in the same script as its expiry.
///
/// [`Site`]: crate::http::query::Site
static ADD_ENDPOINT: Script = Script::new(
    r"
local at = tonumber(ARGV[5])
local outcome = 0
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  if ARGV[6] == '1' then
    redis.call('SADD', KEYS[1], ARGV[1])
    redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
  elseif redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[3]) then
    outcome = 1
  elseif tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0') >= tonumber(ARGV[4]) then
    outcome = 2
  else
    redis.call('SADD', KEYS[1], ARGV[1])
    redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
  end
end
redis.call('EXPIREAT', KEYS[1], at)
redis.call('EXPIREAT', KEYS[2], at)
return outcome
",
);

/// The bounds on a window's endpoints, fleet-wide: `--callback-max-endpoints` and
/// `--callback-max-per-domain`.
#[derive(Debug, Clone, Copy)]
pub struct EndpointCaps {
    pub per_window: u32,
    pub per_domain: u32,
}

/// What the fleet made of an endpoint offered for a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointAdd {
    /// Redis holds it (now, or already).
    Registered,
    /// The window holds the most endpoints already, fleet-wide.
    WindowFull,
    /// Its domain (or address prefix) holds the most already, fleet-wide.
    DomainFull,
}

/// The fleet's settings as [`Store::announce`] found them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announced {
    /// The same as this instance's (announced, or renewed, by it).
    Ours,
    /// Different: the fleet's.
    Theirs(String),
    /// None announced (and none claimed).
    Absent,
}

/// Why a store call did not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("not connected to Redis")]
    Unavailable,
    #[error("Redis did not answer in time")]
    Timeout,
    #[error("Redis error: {0}")]
    Redis(String),
}

impl From<fred::error::Error> for StoreError {
    fn from(e: fred::error::Error) -> Self {
        match e.kind() {
            fred::error::ErrorKind::Timeout => StoreError::Timeout,
            fred::error::ErrorKind::IO | fred::error::ErrorKind::Canceled => {
                StoreError::Unavailable
            }
            _ => StoreError::Redis(e.to_string()),
        }
    }
}

/// Connection settings, from the `--redis-*` flags.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub cluster: bool,
    pub shards: u32,
    pub timeout: Duration,
    pub prefix: String,
    /// PEM file of the CA that signed the server's certificate (`rediss://` with a private
    /// CA); unset trusts the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Seconds after a window's start at which its keys expire: every write of a shard set
    /// carries `window_start + expire_after` (see `report::fleet::expire_at`).
    pub expire_after: i64,
}

/// The fleet's view of Redis.
pub struct Store {
    /// Everything but the accept path's writes of ids: expiries, endpoints, counts, leases.
    client: Client,
    /// The accept path's writes of ids, one connection and batcher per lane.
    adders: Vec<Adder>,
    shards: u32,
    prefix: String,
    /// Bumped on every reconnection of any of the connections; a window opened before the
    /// last bump is re-added.
    epoch: Arc<watch::Sender<u64>>,
    /// Follow reconnections into `epoch`; stopped with the store.
    epoch_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// This instance's name in leader leases, membership and marks.
    instance: String,
    /// The generation of Redis this instance last saw (SPEC §6.3), from the heartbeat.
    generation: Arc<watch::Sender<Generation>>,
    cluster: bool,
    /// The first window this instance may answer for ([`Store::serve_from`]).
    first_window: std::sync::OnceLock<i64>,
    /// With Sentinel: a connection to each sentinel, and the service's name.
    sentinels: Option<(Vec<Client>, String)>,
    /// `--redis-timeout-ms`.
    timeout: Duration,
}

/// Which run of Redis the fleet's keys live in: the masters' `run_id`s (one, or a sorted
/// vector in a cluster), which change with every restart and failover — unlike a key (kept
/// by a failover that lost acknowledged writes) or a counter (1 again after an empty
/// restart). `seq` counts the changes this instance has seen; windows are tagged with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// Bumped by every change of generation, and by every reconnection of any connection
    /// (a proxy may have moved it to another server): a window opened before the last bump
    /// is re-added when it closes.
    pub seq: u64,
    pub id: Arc<str>,
    /// When this instance saw it first (at start-up: when Redis started, if recently).
    pub since: tokio::time::Instant,
    /// Changes of generation this instance has seen (start-up not counted).
    pub changes: u64,
    /// A connection came back since the last heartbeat read the generation: Redis may be
    /// a new one that no heartbeat has seen yet.
    pub unconfirmed: bool,
}

/// One acknowledged heartbeat: Redis's clock when it ran, and the generation it ran in.
#[derive(Debug, Clone)]
pub struct Beat {
    pub redis_ms: i64,
    pub generation: String,
    /// How long the master holding the members has been up.
    pub up_for: Duration,
}

/// A window's count as the fleet fixed it ([`Store::fix`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fixed {
    /// The window's one count (ours, or the one stored first), and the replicas the master
    /// had connected when it was stored.
    Count { count: u64, replicas: u64 },
    /// Redis's clock stands before the window's end + grace: no count can be fixed yet.
    TooEarly,
}

/// A lane's connection for writing ids and the batcher that groups its ids into rounds.
struct Adder {
    client: Client,
    /// Ids for the batcher, which groups them into one [`ADD_IDS`] call per shard key.
    adds: mpsc::Sender<PendingAdd>,
    /// The batcher, running on the lane; stopped with the store.
    batcher: tokio::task::JoinHandle<()>,
}

impl Drop for Store {
    fn drop(&mut self) {
        for task in &self.epoch_tasks {
            task.abort();
        }
        for adder in &self.adders {
            adder.batcher.abort();
        }
    }
}

impl Store {
    /// Connects, waiting at most `connect_timeout` for the first connection: one for the
    /// fleet's bookkeeping, on the calling runtime, and one per lane for the accept path.
    pub async fn connect(
        settings: &Settings,
        connect_timeout: Duration,
        lanes: &Lanes,
    ) -> Result<Self, String> {
        Self::connect_unscrubbed(settings, connect_timeout, lanes)
            .await
            .map_err(|message| scrub_password(&settings.url, &message))
    }

    async fn connect_unscrubbed(
        settings: &Settings,
        connect_timeout: Duration,
        lanes: &Lanes,
    ) -> Result<Self, String> {
        let client = build_client(settings, connect_timeout)?;
        init(&client, connect_timeout).await?;
        let sentinels = sentinel_clients(settings, connect_timeout)?;
        let mut adders = Vec::with_capacity(lanes.len());
        for lane in 0..lanes.len() {
            let client = build_client(settings, connect_timeout)?;
            // fred runs a connection's task where it is initialised: on its lane.
            let started = client.clone();
            lanes
                .spawn(lane, async move { init(&started, connect_timeout).await })
                .await
                .map_err(|e| format!("--redis-url: cannot connect: {e}"))??;
            let (adds, queue) = mpsc::channel(ADD_QUEUE);
            let batcher = lanes.spawn(
                lane,
                run_batcher(
                    client.clone(),
                    settings.prefix.clone(),
                    settings.shards,
                    settings.expire_after,
                    queue,
                ),
            );
            adders.push(Adder {
                client,
                adds,
                batcher,
            });
        }
        let epoch = Arc::new(watch::Sender::new(0));
        let generation = Arc::new(watch::Sender::new(Generation {
            seq: 0,
            id: Arc::from(""),
            since: tokio::time::Instant::now(),
            changes: 0,
            unconfirmed: false,
        }));
        let epoch_tasks = std::iter::once(&client)
            .chain(adders.iter().map(|a| &a.client))
            .map(|client| {
                let mut reconnects = client.reconnect_rx();
                let bump = Arc::clone(&epoch);
                let generation = Arc::clone(&generation);
                tokio::spawn(async move {
                    loop {
                        match reconnects.recv().await {
                            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                bump.send_modify(|epoch| *epoch += 1);
                                generation.send_modify(|g| {
                                    g.seq += 1;
                                    g.unconfirmed = true;
                                });
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        }
                    }
                })
            })
            .collect();
        let instance = format!("{:016x}", crate::window::Xxh3Seeded::random().hash_one(0u8));
        Ok(Self {
            client,
            adders,
            shards: settings.shards,
            prefix: settings.prefix.clone(),
            epoch,
            epoch_tasks,
            instance,
            generation,
            cluster: settings.cluster,
            first_window: std::sync::OnceLock::new(),
            sentinels,
            timeout: settings.timeout,
        })
    }

    /// With Sentinel, checks that every connection is on the server the sentinels name as
    /// the primary, and reconnects those that are not (fred asks the sentinels only when it
    /// connects): `Err(Unavailable)` then. A primary failed over by hand, or demoted only
    /// later (a sentinel looks at the old one every 10 s), keeps taking writes on the
    /// connections still open to it, which the new primary never sees; so no heartbeat,
    /// generation read or count may run there. Sentinels that do not answer change nothing
    /// (the primary may be fine).
    async fn follow_primary(&self) -> Result<(), StoreError> {
        let Some((sentinels, service)) = &self.sentinels else {
            return Ok(());
        };
        let ask = fred::types::CustomCommand::new_static("SENTINEL", None, false);
        let mut named = None;
        for sentinel in sentinels.iter().filter(|s| s.is_connected()) {
            let args: Vec<Value> = vec!["get-master-addr-by-name".into(), service.as_str().into()];
            if let Ok(Value::Array(addr)) = sentinel.custom::<Value, _>(ask.clone(), args).await
                && let [host, port] = &addr[..]
                && let (Some(host), Some(port)) = (host.as_string(), port.as_string())
                && let Ok(port) = port.parse::<u16>()
            {
                named = Some((host, port));
                break;
            }
        }
        let Some((host, port)) = named else {
            return Ok(());
        };
        let mut moved = false;
        for client in self.clients() {
            let elsewhere = client
                .active_connections()
                .iter()
                .any(|server| server.port != port || *server.host != *host);
            if elsewhere {
                moved = true;
                reconnect_in_background(client);
            }
        }
        if moved {
            log::warn!(
                "the sentinels name {host}:{port} as the primary: moving this instance's connections there"
            );
            return Err(StoreError::Unavailable);
        }
        Ok(())
    }

    /// Follows the reconnection count: changes whenever a connection came back (the server
    /// may have restarted empty).
    pub fn reconnections(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// How many times a connection came back since start-up.
    pub fn reconnection_count(&self) -> u64 {
        *self.epoch.borrow()
    }

    /// Whether every connection is up.
    pub fn is_connected(&self) -> bool {
        self.clients().all(|c| c.is_connected())
    }

    /// Drops and rebuilds every connection, in the background: for a server that stopped
    /// answering with its connections up (SIGSTOPped, a hung host, a partition). fred's own
    /// check for an unresponsive connection counts from the last write, so a connection
    /// written to more often than that (heartbeats, retries, load) is never found out; a
    /// reconnection asks the sentinels (or the cluster) where the primary is now.
    pub fn reconnect(&self) {
        self.clients().for_each(reconnect_in_background);
    }

    /// Every client: the bookkeeping one, then each lane's.
    fn clients(&self) -> impl Iterator<Item = &Client> {
        std::iter::once(&self.client).chain(self.adders.iter().map(|a| &a.client))
    }

    /// Reconnections so far.
    pub fn epoch(&self) -> u64 {
        *self.epoch.borrow()
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The shard of `id`.
    pub fn shard(&self, id: i64) -> u32 {
        shard_of(id, self.shards)
    }

    pub fn ids_key(&self, window_start: i64, shard: u32) -> String {
        ids_key(&self.prefix, window_start, shard)
    }

    fn window_key(&self, window_start: i64, what: &str) -> String {
        format!("{}:{{{window_start}}}:{what}", self.prefix)
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.client.is_connected() {
            Ok(())
        } else {
            Err(StoreError::Unavailable)
        }
    }

    /// Adds one id to its window's shard set. Ids arriving while a round is in flight go
    /// together in the next round, one [`ADD_IDS`] script per shard key (group commit): the
    /// command count falls as load rises, and each id is answered once Redis holds it. The
    /// script sets the key's expiry with the ids, so no separate `EXPIREAT` follows.
    /// Goes through the connection of the lane it runs on (the first lane's off the lanes).
    pub async fn add(&self, window_start: i64, id: i64) -> Result<(), StoreError> {
        let adder = &self.adders[crate::lanes::current().unwrap_or(0) % self.adders.len()];
        if !adder.client.is_connected() {
            return Err(StoreError::Unavailable);
        }
        let (done, answer) = oneshot::channel();
        let pending = PendingAdd {
            window_start,
            id,
            done,
        };
        adder
            .adds
            .try_send(pending)
            .map_err(|_| StoreError::Unavailable)?;
        // No timer per request: every round carries fred's command timeout, so an answer
        // comes within two of them (the round in flight, then this one; a third only when
        // Redis lost the script and it is sent again in full).
        answer.await.unwrap_or(Err(StoreError::Unavailable))
    }

    /// Registers a callback endpoint for the window, fleet-wide and within `caps` (one
    /// script, `ADD_ENDPOINT`: the first registered wins). `site` is the endpoint's [`Site`]
    /// as text, the same on every instance (its domain key is seeded per process).
    ///
    /// [`Site`]: crate::http::query::Site
    pub async fn add_endpoint(
        &self,
        window_start: i64,
        endpoint: &str,
        site: &str,
        caps: EndpointCaps,
        expire_at: i64,
    ) -> Result<EndpointAdd, StoreError> {
        self.register(window_start, endpoint, site, caps, expire_at, false)
            .await
    }

    /// [`ADD_ENDPOINT`], within the bounds or (`force`) whatever they are.
    async fn register(
        &self,
        window_start: i64,
        endpoint: &str,
        site: &str,
        caps: EndpointCaps,
        expire_at: i64,
        force: bool,
    ) -> Result<EndpointAdd, StoreError> {
        self.check()?;
        let keys = vec![
            self.window_key(window_start, "endpoints"),
            self.window_key(window_start, "domains"),
        ];
        let args = vec![
            Value::from(endpoint),
            Value::from(site),
            Value::from(i64::from(caps.per_window)),
            Value::from(i64::from(caps.per_domain)),
            Value::from(expire_at),
            Value::from(i64::from(force)),
        ];
        let outcome: i64 = ADD_ENDPOINT.call(&self.client, keys, args).await?;
        match outcome {
            0 => Ok(EndpointAdd::Registered),
            1 => Ok(EndpointAdd::WindowFull),
            2 => Ok(EndpointAdd::DomainFull),
            other => Err(StoreError::Redis(format!(
                "registering an endpoint answered {other}"
            ))),
        }
    }

    /// Re-adds ids (and endpoints, each with its site) this instance answered for a window,
    /// in batches, each batch with its key's expiry in one script as on the accept path:
    /// after Redis lost them in a restart, or while it was unreachable. All in flight at
    /// once (pipelined), so a re-add takes a round trip or two, not one per endpoint. The
    /// endpoints were registered within the bounds before Redis lost them, so they come back
    /// whatever the bounds say now: an endpoint registered since (before this instance saw
    /// the restart) must not take the place of one that was answered `ok` first.
    pub async fn readd(
        &self,
        window_start: i64,
        ids: &[i64],
        endpoints: &[(Box<str>, String)],
        caps: EndpointCaps,
        expire_at: i64,
    ) -> Result<(), StoreError> {
        self.check()?;
        let mut by_shard: Vec<Vec<i64>> = vec![Vec::new(); self.shards as usize];
        for &id in ids {
            by_shard[self.shard(id) as usize].push(id);
        }
        let mut calls = Vec::new();
        for (shard, ids) in by_shard.iter().enumerate() {
            for batch in ids.chunks(READD_BATCH) {
                let key = Key::from(self.ids_key(window_start, shard as u32));
                calls.push(add_ids(&self.client, key, batch, expire_at));
            }
        }
        let registrations = endpoints.iter().map(|(endpoint, site)| {
            self.register(window_start, endpoint, site, caps, expire_at, true)
        });
        let (added, registered) = futures::join!(try_join_all(calls), try_join_all(registrations));
        added?;
        registered?;
        Ok(())
    }

    /// Whether any of the listed shard sets of the window is missing (Redis lost it).
    pub async fn any_missing(&self, window_start: i64, shards: &[u32]) -> Result<bool, StoreError> {
        self.check()?;
        let checks = shards.iter().map(|&s| {
            let key = self.ids_key(window_start, s);
            async move { self.client.exists::<u64, _>(key).await }
        });
        let present = try_join_all(checks).await?;
        Ok(present.contains(&0))
    }

    /// The fleet count: the sum of `SCARD` over the window's shard sets.
    pub async fn count(&self, window_start: i64) -> Result<u64, StoreError> {
        self.check()?;
        let reads = (0..self.shards).map(|s| {
            let key = self.ids_key(window_start, s);
            async move { self.client.scard::<u64, _>(key).await }
        });
        Ok(try_join_all(reads).await?.iter().sum())
    }

    /// Approx mode: merges this instance's sketch of the window (dense, as
    /// [`crate::sketch::Sketch::dense`] gives it) into the window's HLL ([`MERGE`]).
    pub async fn merge(
        &self,
        window_start: i64,
        dense: Vec<u8>,
        expire_at: i64,
    ) -> Result<(), StoreError> {
        self.check()?;
        let hll = self.window_key(window_start, "hll");
        let scratch = format!("{hll}:{}", self.instance);
        let args = vec![Value::Bytes(dense.into()), Value::from(expire_at)];
        let _: () = MERGE.call(&self.client, vec![hll, scratch], args).await?;
        Ok(())
    }

    /// Approx mode: the fleet count, `PFCOUNT` of the window's merged HLL.
    pub async fn approx_count(&self, window_start: i64) -> Result<u64, StoreError> {
        self.check()?;
        Ok(self
            .client
            .pfcount(self.window_key(window_start, "hll"))
            .await?)
    }

    /// Approx mode: the fleet's hash key (`<prefix>:hash-key`, no expiry). With `ours`, an
    /// absent key becomes it (`SET NX GET`); without, it is only read. Answers the key the
    /// fleet holds now, if any.
    pub async fn hash_key(&self, ours: Option<&str>) -> Result<Option<String>, StoreError> {
        self.check()?;
        let key = format!("{}:hash-key", self.prefix);
        Ok(match ours {
            Some(ours) => {
                let old: Option<String> = self
                    .client
                    .set(&key, ours, None, Some(SetOptions::NX), true)
                    .await?;
                Some(old.unwrap_or_else(|| ours.to_string()))
            }
            None => self.client.get(&key).await?,
        })
    }

    /// Approx mode: stores `ours` as the fleet's hash key whatever it held (see
    /// [`crate::report::fleet::announce_settings`]: only a member outranking a newcomer does).
    pub async fn replace_hash_key(&self, ours: &str) -> Result<(), StoreError> {
        self.check()?;
        let key = format!("{}:hash-key", self.prefix);
        let _: Option<String> = self.client.set(&key, ours, None, None, false).await?;
        Ok(())
    }

    /// Announces this instance's settings that shape keys and windows (SPEC §6.2) under
    /// `<prefix>:settings`, held `ttl` and renewed by every instance that agrees. With
    /// `claim`, an absent announcement becomes ours (`SET NX`); without, it is only read (an
    /// instance that differs from the fleet must not take the announcement over the moment
    /// Redis loses it).
    pub async fn announce(
        &self,
        ours: &str,
        ttl: Duration,
        claim: bool,
    ) -> Result<Announced, StoreError> {
        self.check()?;
        let key = format!("{}:settings", self.prefix);
        let ms = ttl.as_millis().max(1) as i64;
        if claim {
            let set: Option<String> = self
                .client
                .set(
                    &key,
                    ours,
                    Some(Expiration::PX(ms)),
                    Some(SetOptions::NX),
                    false,
                )
                .await?;
            if set.is_some() {
                return Ok(Announced::Ours);
            }
        }
        let theirs: Option<String> = self.client.get(&key).await?;
        match theirs {
            None => Ok(Announced::Absent),
            Some(theirs) if theirs != ours => Ok(Announced::Theirs(theirs)),
            Some(_) => {
                let _: i64 = self.client.pexpire(&key, ms, None).await?;
                Ok(Announced::Ours)
            }
        }
    }

    /// Puts this instance's settings in the announcement, whatever it holds (see
    /// `report::fleet::announce_settings`: only a member since before a new generation
    /// does, against one made within its trust period).
    pub async fn replace_announcement(&self, ours: &str, ttl: Duration) -> Result<(), StoreError> {
        self.check()?;
        let key = format!("{}:settings", self.prefix);
        let ms = ttl.as_millis().max(1) as i64;
        let _: Option<String> = self
            .client
            .set(&key, ours, Some(Expiration::PX(ms)), None, false)
            .await?;
        Ok(())
    }

    /// Takes (when `take`) or renews the window's leader lease, for `lease`: whether this
    /// instance holds it now. Renewal compares and expires in one script ([`LEAD`]).
    pub async fn lead(
        &self,
        window_start: i64,
        lease: Duration,
        take: bool,
    ) -> Result<bool, StoreError> {
        self.check()?;
        let key = self.window_key(window_start, "leader");
        let args: Vec<Value> = vec![
            self.instance.as_str().into(),
            (lease.as_millis().max(1) as i64).into(),
            i64::from(take).into(),
        ];
        let held: i64 = LEAD.call(&self.client, key, args).await?;
        Ok(held == 1)
    }

    /// The generation this instance last saw.
    pub fn generation(&self) -> Generation {
        self.generation.borrow().clone()
    }

    /// Follows the generation: changes whenever this instance sees Redis's change.
    pub fn generations(&self) -> watch::Receiver<Generation> {
        self.generation.subscribe()
    }

    /// Records the generation a heartbeat (or a read) found, Redis having been up for
    /// `up_for`: whether it differs from the last one seen. The first one seen is not a
    /// change, but it is taken as seen since Redis started, if that was recently.
    pub fn observe_generation(&self, id: &str, up_for: Duration) -> bool {
        let now = tokio::time::Instant::now();
        let mut changed = false;
        self.generation.send_if_modified(|seen| {
            let was_unconfirmed = std::mem::replace(&mut seen.unconfirmed, false);
            if &*seen.id == id {
                return was_unconfirmed;
            }
            if seen.id.is_empty() {
                // When Redis started, as this instance's monotonic clock reads it.
                let up_for = up_for.min(Duration::from_secs(3600));
                seen.since = now.checked_sub(up_for).unwrap_or(seen.since);
            } else {
                seen.seq += 1;
                seen.changes += 1;
                seen.since = now;
                changed = true;
            }
            seen.id = Arc::from(id);
            true
        });
        changed
    }

    /// Whether a change of generation was seen less than `trust` ago, or a connection came
    /// back since the last heartbeat (Redis may be new): the members may not all have
    /// re-added their windows (their endpoints among them) yet.
    pub fn settling(&self, trust: Duration) -> bool {
        let generation = self.generation.borrow();
        generation.unconfirmed || (generation.changes > 0 && generation.since.elapsed() < trust)
    }

    /// Reads the generation from Redis now: the `run_id` of the master (every master's,
    /// sorted, in a cluster).
    pub async fn read_generation(&self) -> Result<String, StoreError> {
        self.check()?;
        self.follow_primary().await?;
        if !self.cluster {
            let id: String = RUN_ID
                .call(&self.client, Vec::<Key>::new(), Vec::new())
                .await?;
            return Ok(id);
        }
        let primaries = self
            .client
            .cached_cluster_state()
            .map(|state| state.unique_primary_nodes())
            .unwrap_or_default();
        if primaries.is_empty() {
            return Err(StoreError::Unavailable);
        }
        let reads = primaries.into_iter().map(|server| async move {
            // (Scripts cannot be sent to a chosen node: `INFO` can.)
            let info: String = self.client.with_cluster_node(server).info(None).await?;
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
                    .ok_or_else(|| {
                        fred::error::Error::new(fred::error::ErrorKind::Parse, "no run_id in INFO")
                    })
            };
            Ok::<_, fred::error::Error>(format!(
                "{}:{}",
                field("run_id:")?,
                field("master_replid:")?
            ))
        });
        let mut ids = try_join_all(reads).await?;
        ids.sort();
        Ok(ids.join(","))
    }

    fn members_key(&self) -> String {
        format!("{}:members", self.prefix)
    }

    /// Sets the first window this instance may answer for: a member's name in the
    /// heartbeats carries it, so that the barrier of an earlier window never waits for an
    /// instance that started after it. Once; later calls change nothing.
    pub fn serve_from(&self, first_window: i64) {
        let _ = self.first_window.set(first_window);
    }

    /// This instance's name among the members: `<instance>@<first window>`.
    fn member_name(&self) -> String {
        let first = self.first_window.get().copied().unwrap_or(i64::MIN);
        format!("{}@{first}", self.instance)
    }

    /// Renews this instance's heartbeat (`join`), or withdraws it, for `ttl`; answers
    /// Redis's clock and the generation (read again from every master in a cluster).
    pub async fn heartbeat(&self, ttl: Duration, join: bool) -> Result<Beat, StoreError> {
        self.check()?;
        self.follow_primary().await?;
        let args: Vec<Value> = vec![
            self.member_name().into(),
            (ttl.as_millis().max(1) as i64).into(),
            i64::from(join).into(),
        ];
        let (secs, micros, run_id, uptime): (i64, i64, String, i64) = HEARTBEAT
            .call(&self.client, self.members_key(), args)
            .await?;
        let generation = if self.cluster {
            self.read_generation().await?
        } else {
            run_id
        };
        Ok(Beat {
            redis_ms: secs * 1000 + micros / 1000,
            generation,
            up_for: Duration::from_secs(uptime.max(0) as u64),
        })
    }

    /// The fleet's live members, by Redis's clock: each instance, and the first window it
    /// may answer for.
    pub async fn members(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.check()?;
        let names: Vec<String> = MEMBERS
            .call(&self.client, self.members_key(), Vec::new())
            .await?;
        Ok(names
            .into_iter()
            .filter_map(|name| {
                let (instance, first) = name.rsplit_once('@')?;
                Some((instance.to_string(), first.parse().ok()?))
            })
            .collect())
    }

    /// Marks the window drained by this instance, its ids in `generation`.
    pub async fn mark(
        &self,
        window_start: i64,
        generation: &str,
        expire_at: i64,
    ) -> Result<(), StoreError> {
        self.check()?;
        let args: Vec<Value> = vec![
            self.instance.as_str().into(),
            generation.into(),
            expire_at.into(),
        ];
        let _: () = MARK
            .call(&self.client, self.window_key(window_start, "marks"), args)
            .await?;
        Ok(())
    }

    /// The window's drained marks: instance → generation.
    pub async fn marks(&self, window_start: i64) -> Result<HashMap<String, String>, StoreError> {
        self.check()?;
        Ok(self
            .client
            .hgetall(self.window_key(window_start, "marks"))
            .await?)
    }

    /// Fixes the window's count to `count` unless one is fixed already ([`FIX`]); refused
    /// while Redis's clock stands before `not_before_ms`.
    pub async fn fix(
        &self,
        window_start: i64,
        count: u64,
        not_before_ms: i64,
        expire_at: i64,
    ) -> Result<Fixed, StoreError> {
        self.check()?;
        let args: Vec<Value> = vec![
            (count as i64).into(),
            not_before_ms.into(),
            expire_at.into(),
        ];
        let (count, replicas): (i64, i64) = FIX
            .call(&self.client, self.window_key(window_start, "count"), args)
            .await?;
        Ok(match u64::try_from(count) {
            Ok(count) => Fixed::Count {
                count,
                replicas: replicas.max(0) as u64,
            },
            Err(_) => Fixed::TooEarly,
        })
    }

    /// The window's fixed count, if one is.
    pub async fn fixed(&self, window_start: i64) -> Result<Option<u64>, StoreError> {
        self.check()?;
        Ok(self
            .client
            .get(self.window_key(window_start, "count"))
            .await?)
    }

    /// Waits (at most `timeout`, and within the command timeout) until `replicas` replicas
    /// hold the window's count: `WAIT` on the master that holds it. Answers how many
    /// acknowledged.
    pub async fn replicate(
        &self,
        window_start: i64,
        replicas: u64,
        timeout: Duration,
    ) -> Result<u64, StoreError> {
        self.check()?;
        let key = self.window_key(window_start, "count");
        let slot = fred::types::cluster::ClusterRouting::hash_key(key.as_bytes());
        let wait = fred::types::CustomCommand::new_static("WAIT", Some(slot), false);
        // Within the command timeout, so that fred has the answer and the connection (which
        // Redis blocks meanwhile) is free again before a heartbeat queued behind it is late.
        let timeout = timeout.min(self.timeout * 3 / 4);
        let args: Vec<Value> = vec![
            (replicas as i64).into(),
            (timeout.as_millis() as i64).into(),
        ];
        let acked: i64 = self.client.custom(wait, args).await?;
        Ok(acked.max(0) as u64)
    }

    /// Marks the window's fleet report as delivered (one `SET … EXAT`: the mark never
    /// outlives the window's keys).
    pub async fn mark_done(&self, window_start: i64, expire_at: i64) -> Result<(), StoreError> {
        self.check()?;
        let key = self.window_key(window_start, "done");
        let _: Option<String> = self
            .client
            .set(&key, "1", Some(Expiration::EXAT(expire_at)), None, false)
            .await?;
        Ok(())
    }

    /// Re-applies the window's expiry to all its shard keys and to its endpoint set and
    /// per-domain counts, off the request path (once, at the window's close): each key got it
    /// from the command that created it; this is a second line for a key whose expiry was
    /// removed since (`PERSIST`, another version's writes). Absolute and idempotent, and
    /// `EXPIREAT` on a missing key creates nothing, so every shard is covered, written by
    /// this instance or not.
    pub async fn expire_window(&self, window_start: i64, expire_at: i64) -> Result<(), StoreError> {
        self.check()?;
        let keys = (0..self.shards)
            .map(|s| self.ids_key(window_start, s))
            .chain(["endpoints", "domains", "hll"].map(|what| self.window_key(window_start, what)));
        let calls = keys.map(|key| async move {
            let _: i64 = self.client.expire_at(key, expire_at, None).await?;
            Ok::<_, fred::error::Error>(())
        });
        try_join_all(calls).await?;
        Ok(())
    }

    pub async fn is_done(&self, window_start: i64) -> Result<bool, StoreError> {
        self.check()?;
        let n: u64 = self
            .client
            .exists(self.window_key(window_start, "done"))
            .await?;
        Ok(n == 1)
    }

    /// The window's endpoints, fleet-wide (read once per window by its leader).
    pub async fn endpoints(&self, window_start: i64) -> Result<Vec<String>, StoreError> {
        self.check()?;
        Ok(self
            .client
            .smembers(self.window_key(window_start, "endpoints"))
            .await?)
    }
}

/// `message` with the password of `url` (`scheme://[user:]password@host…`) replaced, so no
/// error about the Redis URL can print it.
pub fn scrub_password(url: &str, message: &str) -> String {
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
    let password = authority
        .rsplit_once('@')
        .map(|(userinfo, _)| userinfo.split_once(':').map_or(userinfo, |(_, pw)| pw))
        .filter(|pw| !pw.is_empty());
    match password {
        Some(password) => message.replace(password, "(hidden)"),
        None => message.to_string(),
    }
}

/// `url` as fred parses it: hosts after the first, comma-separated in the authority
/// (`redis-sentinel://a:26379,b:26379?sentinelServiceName=m`, or a cluster's seeds), become
/// `node=` query parameters (`…://a:26379?sentinelServiceName=m&node=b:26379`). The
/// authority ends where the URL standard ends it (the first `/`, `?` or `#`), and a password
/// may hold commas: only what follows its last `@` is split.
pub fn with_node_params(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let mut hosts = hosts.split(',').filter(|h| !h.is_empty());
    let first = hosts.next().unwrap_or("");
    let nodes: Vec<String> = hosts.map(|h| format!("node={h}")).collect();
    if nodes.is_empty() && !authority.contains(',') {
        return url.to_string();
    }
    let (tail, fragment) = tail.split_at(tail.find('#').unwrap_or(tail.len()));
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    let query: Vec<&str> = std::iter::once(query)
        .filter(|q| !q.is_empty())
        .chain(nodes.iter().map(String::as_str))
        .collect();
    let userinfo = userinfo.map_or(String::new(), |u| format!("{u}@"));
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    format!("{scheme}://{userinfo}{first}{path}{query}{fragment}")
}

/// fred's configuration of `settings`: the URL (more hosts as `node=` parameters), the
/// cluster's discovery, the private CA.
fn build_config(settings: &Settings) -> Result<Config, String> {
    let url = with_node_params(&settings.url);
    let mut config = if settings.cluster {
        Config::from_url_clustered(&url)
    } else {
        // `redis-sentinel://` and `rediss-sentinel://` too: fred asks the sentinels for
        // the primary at every (re)connection.
        Config::from_url(&url)
    }
    .map_err(|e| format!("--redis-url: {}", e.details()))?;
    if settings.cluster {
        // Rebuild the cluster map from any node it last knew, not only the seeds in the
        // URL: fred's default asks the seeds alone, so when the one seed was the master
        // that died, its reconnection never found the promoted replica (issue 16).
        config
            .server
            .set_cluster_discovery_policy(ClusterDiscoveryPolicy::UseCache)
            .map_err(|e| format!("--redis-url: {}", e.details()))?;
    }
    if let Some(ca_file) = &settings.ca_file {
        let tls = tls_trusting(ca_file)
            .map_err(|e| format!("--redis-ca-file {}: {e}", ca_file.display()))?;
        config.tls = Some(fred::types::config::TlsConnector::from(tls).into());
    }
    Ok(config)
}

/// A client for `settings`, not yet connected.
fn build_client(settings: &Settings, connect_timeout: Duration) -> Result<Client, String> {
    let config = build_config(settings)?;
    let timeout = settings.timeout;
    Builder::from_config(config)
        .with_performance_config(|p| p.default_command_timeout = timeout)
        .with_connection_config(|c| {
            // A reconnection gives up on a server that does not answer its set-up (a stalled
            // primary's socket still accepts) in a second by default, and asks again where
            // the primary is; the set-up is a few round trips, each within `timeout` on a
            // slow link. The first connection has `connect_timeout` in all (`init`).
            let setup = (timeout * 3)
                .max(Duration::from_secs(1))
                .min(connect_timeout);
            c.connection_timeout = setup;
            c.internal_command_timeout = setup;
            // A master turned replica under its clients (a manual or Sentinel failover, a
            // stale master demoted) answers writes `READONLY` on a connection that stays
            // up: reconnect then, and find the primary again (Sentinel asks the sentinels),
            // as on `LOADING` and `CLUSTERDOWN`.
            c.reconnect_errors = vec![
                ReconnectError::ReadOnly,
                ReconnectError::Loading,
                ReconnectError::ClusterDown,
            ];
            // A connection that stops answering is dropped and rebuilt, not waited on.
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(timeout * 4),
                interval: Duration::from_millis(100),
            };
        })
        .set_policy(reconnect_policy())
        .build()
        .map_err(|e| format!("--redis-url: {}", e.details()))
}

/// Forever, from 50 ms doubling to [`RECONNECT_MAX`].
fn reconnect_policy() -> ReconnectPolicy {
    ReconnectPolicy::new_exponential(0, 50, RECONNECT_MAX.as_millis() as u32, 2)
}

/// Drops and rebuilds `client`'s connections, in the background (fred answers once the
/// reconnection is done).
fn reconnect_in_background(client: &Client) {
    let client = client.clone();
    tokio::spawn(async move {
        if let Err(e) = client.force_reconnection().await {
            log::debug!("a forced reconnection failed: {e}");
        }
    });
}

/// With a `redis-sentinel://` URL, a client of each sentinel (with the sentinels'
/// credentials and the URL's TLS), connecting in the background and reconnecting forever:
/// a sentinel down at start-up is asked once it is back.
fn sentinel_clients(
    settings: &Settings,
    connect_timeout: Duration,
) -> Result<Option<(Vec<Client>, String)>, String> {
    let config = build_config(settings)?;
    let ServerConfig::Sentinel {
        hosts,
        service_name,
        username,
        password,
    } = &config.server
    else {
        return Ok(None);
    };
    let clients = hosts
        .iter()
        .map(|host| {
            let sentinel = Config {
                server: ServerConfig::Centralized {
                    server: host.clone(),
                },
                username: username.clone(),
                password: password.clone(),
                tls: config.tls.clone(),
                ..Config::default()
            };
            let client = Builder::from_config(sentinel)
                .with_performance_config(|p| p.default_command_timeout = settings.timeout)
                .with_connection_config(|c| {
                    c.connection_timeout = connect_timeout;
                    c.internal_command_timeout = connect_timeout;
                })
                .set_policy(reconnect_policy())
                .build()
                .map_err(|e| format!("--redis-url: {}", e.details()))?;
            // The connection task runs on by itself: the handle is not waited on.
            drop(client.connect());
            Ok(client)
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Some((clients, service_name.clone())))
}

/// Connects `client` (its connection task runs on the calling runtime), waiting at most
/// `connect_timeout`; it reconnects by itself from then on.
async fn init(client: &Client, connect_timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(connect_timeout, client.init()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("--redis-url: cannot connect: {}", e.details())),
        Err(_) => Err("--redis-url: cannot connect: timed out".to_string()),
    }
}

/// A TLS client configuration trusting only the CA certificates in `ca_file`.
fn tls_trusting(ca_file: &Path) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| e.to_string())? {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no certificate in the file".to_string());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Adds `ids` to the shard set `key` with its expiry `at`, in one [`ADD_IDS`] script (each
/// id an inline [`Value::Integer`]).
async fn add_ids(
    client: &Client,
    key: Key,
    ids: &[i64],
    at: i64,
) -> Result<(), fred::error::Error> {
    let mut args = Vec::with_capacity(ids.len() + 1);
    args.push(Value::Integer(at));
    args.extend(ids.iter().map(|&id| Value::Integer(id)));
    ADD_IDS.call(client, key, args).await
}

/// Takes every queued id and sends one [`ADD_IDS`] script per shard key (pipelined by
/// fred), answering each id with its key's outcome: at most one round in flight per shard
/// key, so ids queue up behind their own key's round only — a stalled cluster node holds its
/// shards' ids, not the others'. After a round it yields while its queue still grows (at
/// most [`MAX_YIELDS`] times), so that the connections just answered can queue their next
/// ids into the key's next round.
async fn run_batcher(
    client: Client,
    prefix: String,
    shards: u32,
    expire_after: i64,
    mut queue: mpsc::Receiver<PendingAdd>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Ids waiting for their shard key's next round, and the keys with a round in flight:
    // each key has at most one, and a slow key (a stalled cluster node) holds only its own
    // ids, while the others' rounds go on.
    let mut waiting: HashMap<(i64, u32), (Vec<i64>, Vec<Answer>)> = HashMap::new();
    let mut busy: HashSet<(i64, u32)> = HashSet::new();
    let mut rounds = FuturesUnordered::new();
    let mut open = true;
    // With one shard key per window the queue is read only between rounds, as ids for a
    // busy key could only wait anyway: a request then wakes the batcher once a round, not
    // once an id. With several, it is read during rounds too, so a free key's ids go at once.
    let read_during_rounds = shards > 1;
    loop {
        let started = rounds.len();
        for (key, (ids, answers)) in waiting.extract_if(|key, _| !busy.contains(key)) {
            rounds.push(round(&client, &prefix, expire_after, key, ids, answers));
        }
        // The keys of the rounds just started are busy until each one ends.
        if rounds.len() > started {
            busy.clear();
            busy.extend(rounds.iter().map(Round::key));
        }
        if !open && rounds.is_empty() {
            return;
        }
        tokio::select! {
            received = queue.recv_many(&mut batch, MAX_BATCH),
                if open && (rounds.is_empty() || read_during_rounds) => {
                if received == 0 {
                    open = false; // the store is gone: finish the rounds in flight
                }
                for pending in batch.drain(..) {
                    let group = waiting
                        .entry((pending.window_start, shard_of(pending.id, shards)))
                        .or_default();
                    group.0.push(pending.id);
                    group.1.push(pending.done);
                }
            }
            Some(key) = rounds.next(), if !rounds.is_empty() => {
                busy.remove(&key);
                // Let the requests just answered run (and their connections' next requests
                // arrive) before the key's next round: fewer, fuller rounds under load.
                let mut queued = queue.len();
                for _ in 0..MAX_YIELDS {
                    tokio::task::yield_now().await;
                    let now = queue.len();
                    if now == queued || now >= MAX_BATCH {
                        break;
                    }
                    queued = now;
                }
            }
        }
    }
}

/// One [`ADD_IDS`] call of a shard key's waiting ids in flight; resolves to its key once every
/// id is answered with the outcome.
struct Round<'a> {
    key: (i64, u32),
    // Boxed: a fred command future is several KiB; the set of rounds moves it otherwise.
    add: Pin<Box<dyn Future<Output = (i64, u32)> + Send + 'a>>,
}

impl Round<'_> {
    fn key(&self) -> (i64, u32) {
        self.key
    }
}

impl Future for Round<'_> {
    type Output = (i64, u32);
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<(i64, u32)> {
        self.add.as_mut().poll(cx)
    }
}

/// The round of `ids` for `key` (window start, shard), whose set expires `expire_after`
/// seconds after the window's start.
fn round<'a>(
    client: &'a Client,
    prefix: &'a str,
    expire_after: i64,
    key: (i64, u32),
    ids: Vec<i64>,
    answers: Vec<Answer>,
) -> Round<'a> {
    let add = Box::pin(async move {
        let set = Key::from(ids_key(prefix, key.0, key.1));
        let outcome = add_ids(client, set, &ids, key.0 + expire_after)
            .await
            .map_err(StoreError::from);
        for done in answers {
            let _ = done.send(outcome.clone());
        }
        key
    });
    Round { key, add }
}

#[cfg(test)]
mod tests {
    use super::{scrub_password, with_node_params};

    #[test]
    fn more_hosts_become_node_parameters() {
        assert_eq!(
            with_node_params("redis-sentinel://a:26379,b:26379,c:26380?sentinelServiceName=m"),
            "redis-sentinel://a:26379?sentinelServiceName=m&node=b:26379&node=c:26380"
        );
        assert_eq!(
            with_node_params("rediss://u:p,w@a:7000,b:7001/0"),
            "rediss://u:p,w@a:7000/0?node=b:7001"
        );
        assert_eq!(
            with_node_params("redis://a:1,b:2?x=1#f"),
            "redis://a:1?x=1&node=b:2#f"
        );
        for unchanged in [
            "redis://u:p,w@a:6379/0",
            "redis://127.0.0.1:6379",
            "redis-sentinel://a:26379?sentinelServiceName=m&node=b:26379",
            "redis://a:1/x,y",
        ] {
            assert_eq!(with_node_params(unchanged), unchanged);
        }
    }

    #[test]
    fn passwords_never_reach_a_message() {
        let url = "redis://app:hunter2@db.internal:6379/0";
        assert_eq!(
            scrub_password(url, &format!("cannot parse {url}")),
            "cannot parse redis://app:(hidden)@db.internal:6379/0"
        );
        assert_eq!(
            scrub_password("rediss://:pw@h", "bad pw@h"),
            "bad (hidden)@h"
        );
        assert_eq!(scrub_password("redis://h:1", "down"), "down");
    }
}
