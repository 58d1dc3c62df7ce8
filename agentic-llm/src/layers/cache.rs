//! [`ResponseCache`]: answers a repeated deterministic request from memory.
//!
//! Only deterministic requests are cached: temperature 0, or `metadata.cacheable` set by a
//! caller who knows better (a temperature-1 request is a request for a new sample each
//! time). The key is a stable 128-bit hash (XXH3-128) of the provider's name and the
//! normalized request: a canonical encoding of its JSON data model, with the `metadata` left
//! out (routing and accounting hints do not change the answer); see [`request_key`]. Entries expire after a TTL; when the
//! cache is full the least recently used entry goes.

mod key;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::Value;
use tokio::time::Instant;

use crate::stream::{StreamAccumulator, StreamEvent, events_for};
use crate::{ChatRequest, ChatResponse, EventStream, LlmError, LlmProvider, ProviderCapabilities};

/// The bounds of a [`ResponseCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// How long an answer stays valid (default 10 min).
    pub ttl: Duration,
    /// Most answers kept (default 1 000).
    pub max_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: Duration::from_secs(600),
            max_entries: 1000,
        }
    }
}

#[derive(Debug)]
struct Entry {
    response: ChatResponse,
    expires: Instant,
    last_used: u64,
}

#[derive(Debug, Default)]
struct Store {
    // Keys are already hashes: foldhash instead of SipHash (std's default, ~4 times the
    // instructions per lookup here).
    entries: HashMap<u128, Entry, foldhash::fast::RandomState>,
    /// Keys by last use (a logical clock, cheaper than reading time), oldest first: the
    /// next to evict is the first, so eviction costs a log, not a scan of the cache.
    recency: BTreeMap<u64, u128>,
    tick: u64,
}

impl Store {
    fn touch(&mut self, key: u128) -> u64 {
        self.tick += 1;
        self.recency.insert(self.tick, key);
        self.tick
    }

    fn remove(&mut self, key: u128) {
        if let Some(entry) = self.entries.remove(&key) {
            self.recency.remove(&entry.last_used);
        }
    }

    fn get(&mut self, key: u128, now: Instant) -> Option<ChatResponse> {
        let (expired, last_used) = match self.entries.get(&key) {
            Some(entry) => (entry.expires <= now, entry.last_used),
            None => return None,
        };
        if expired {
            self.remove(key);
            return None;
        }
        self.recency.remove(&last_used);
        let tick = self.touch(key);
        let entry = self.entries.get_mut(&key)?;
        entry.last_used = tick;
        Some(entry.response.clone())
    }

    fn insert(&mut self, key: u128, response: ChatResponse, config: &CacheConfig, now: Instant) {
        if config.max_entries == 0 {
            return;
        }
        self.remove(key);
        // Expired entries are dropped when looked up; here the least recently used goes,
        // expired or not.
        while self.entries.len() >= config.max_entries {
            let Some((_, oldest)) = self.recency.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        let tick = self.touch(key);
        self.entries.insert(
            key,
            Entry {
                response,
                expires: super::later(now, config.ttl),
                last_used: tick,
            },
        );
    }
}

/// A provider with a response cache in front. See the [module docs](self).
///
/// Hits return the stored answer unchanged (same id, usage and cost), without calling the
/// provider. Put the cache outside a cost meter so that hits are not charged again.
/// Streams are cached too: a miss is passed through and stored once it completed; a hit is
/// replayed as events. Clones share the cache.
#[derive(Debug, Clone)]
pub struct ResponseCache<P> {
    inner: P,
    config: CacheConfig,
    // A std `Mutex`: lookups and inserts are short and never span an `.await`.
    store: Arc<Mutex<Store>>,
    hits: Arc<AtomicU64>,
    misses: Arc<AtomicU64>,
}

impl<P: LlmProvider> ResponseCache<P> {
    /// Wraps `inner` with an empty cache.
    pub fn new(inner: P, config: CacheConfig) -> Self {
        ResponseCache {
            inner,
            config,
            store: Arc::default(),
            hits: Arc::default(),
            misses: Arc::default(),
        }
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// Calls answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Cacheable calls that went to the provider.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Answers currently stored (expired ones included until they are looked up or evicted).
    pub fn len(&self) -> usize {
        lock(&self.store).entries.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key of `request`, or `None` when it must not be cached.
    fn key(&self, request: &ChatRequest) -> Option<u128> {
        let deterministic = request.temperature == Some(0.0) || request.metadata.cacheable;
        if !deterministic {
            return None;
        }
        Some(request_key(self.inner.name(), request))
    }

    fn lookup(&self, key: u128) -> Option<ChatResponse> {
        let hit = lock(&self.store).get(key, Instant::now());
        let counter = if hit.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }
}

fn lock(store: &Mutex<Store>) -> MutexGuard<'_, Store> {
    // The map is consistent after every operation, so a poisoned lock is still usable.
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The stable cache key of `request` sent to `provider`: XXH3-128 of the provider's name and
/// a canonical binary encoding of the request without `metadata` (see the `key` module: JSON's
/// data model, strings length-prefixed, numbers fixed-width little-endian).
///
/// Stable across processes, machines and versions of this crate (a cache may be shared), and
/// pinned by a test. Earlier builds hashed the request's JSON text with FNV-1a-128, one byte
/// at a time after escaping every string, which was a third of the layers' CPU per call; their
/// keys differ from these (a cache shared across that change misses once per request).
///
/// serde_json keeps object keys sorted unless some crate in the build turns on its
/// `preserve_order` feature; then the request goes through a `Value` whose objects are
/// written with their keys sorted (slower, and a different but equally stable key).
pub fn request_key(provider: &str, request: &ChatRequest) -> u128 {
    let view = KeyView::of(request);
    // Encoded into a buffer kept per thread, then hashed in one call: no allocation once
    // the buffer has grown, and XXH3 reads the bytes in blocks rather than one at a time.
    KEY_BUFFER.with_borrow_mut(|buffer| {
        buffer.clear();
        buffer.extend_from_slice(provider.as_bytes());
        buffer.push(0);
        if maps_are_sorted() {
            if let Err(e) = key::encode(buffer, &view) {
                buffer.extend_from_slice(e.to_string().as_bytes());
            }
        } else {
            match serde_json::to_value(&view) {
                Ok(value) => key::encode_value(buffer, &value),
                Err(e) => buffer.extend_from_slice(e.to_string().as_bytes()),
            }
        }
        let key = xxhash_rust::xxh3::xxh3_128(buffer);
        // A huge request does not pin its memory in the thread for good.
        if buffer.capacity() > MAX_KEPT_BUFFER {
            *buffer = Vec::new();
        }
        key
    })
}

thread_local! {
    /// The request's encoding while its key is computed.
    static KEY_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The largest key buffer a thread keeps between calls.
const MAX_KEPT_BUFFER: usize = 64 * 1024;

/// The request without its metadata. Built by an exhaustive destructuring, so a new field of
/// [`ChatRequest`] does not compile until it is decided whether it belongs in the key.
#[derive(serde::Serialize)]
struct KeyView<'a> {
    model: &'a Option<String>,
    system: &'a [crate::ContentBlock],
    messages: &'a [crate::Message],
    tools: &'a [crate::ToolDefinition],
    tool_choice: &'a Option<crate::ToolChoice>,
    max_tokens: u32,
    temperature: Option<f32>,
    top_p: Option<f32>,
    stop_sequences: &'a [String],
    response_format: &'a Option<crate::ResponseFormat>,
    thinking: &'a Option<crate::ThinkingConfig>,
}

impl<'a> KeyView<'a> {
    fn of(request: &'a ChatRequest) -> Self {
        let ChatRequest {
            model,
            system,
            messages,
            tools,
            tool_choice,
            max_tokens,
            temperature,
            top_p,
            stop_sequences,
            response_format,
            thinking,
            // Routing and accounting hints do not change the answer.
            metadata: _,
        } = request;
        KeyView {
            model,
            system,
            messages,
            tools,
            tool_choice,
            max_tokens: *max_tokens,
            temperature: *temperature,
            top_p: *top_p,
            stop_sequences,
            response_format,
            thinking,
        }
    }
}

/// Whether `serde_json::Map` iterates in key order (it does unless `preserve_order` is on).
fn maps_are_sorted() -> bool {
    static SORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SORTED.get_or_init(|| {
        let mut map = serde_json::Map::new();
        map.insert("b".to_owned(), Value::Null);
        map.insert("a".to_owned(), Value::Null);
        map.keys().next().map(String::as_str) == Some("a")
    })
}

#[async_trait]
impl<P: LlmProvider> LlmProvider for ResponseCache<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> ProviderCapabilities {
        self.inner.capabilities()
    }

    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        let Some(key) = self.key(&request) else {
            return self.inner.complete(request).await;
        };
        if let Some(hit) = self.lookup(key) {
            return Ok(hit);
        }
        let response = self.inner.complete_ref(&request).await?;
        lock(&self.store).insert(key, response.clone(), &self.config, Instant::now());
        Ok(response)
    }

    async fn stream(&self, request: ChatRequest) -> Result<EventStream, LlmError> {
        let Some(key) = self.key(&request) else {
            return self.inner.stream(request).await;
        };
        if let Some(hit) = self.lookup(key) {
            return Ok(futures::stream::iter(events_for(&hit).into_iter().map(Ok)).boxed());
        }
        let events = self.inner.stream(request).await?;
        let store = Arc::clone(&self.store);
        let config = self.config;
        let mut accumulator = Some(StreamAccumulator::new());
        Ok(events
            .map(move |item| {
                match &item {
                    Ok(event) => {
                        if let Some(acc) = accumulator.as_mut()
                            && acc.push(event).is_err()
                        {
                            accumulator = None;
                        }
                        if matches!(event, StreamEvent::MessageStop)
                            && let Some(Ok(response)) =
                                accumulator.take().map(StreamAccumulator::finish)
                        {
                            lock(&store).insert(key, response, &config, Instant::now());
                        }
                    }
                    // A failed stream is not an answer to keep.
                    Err(_) => accumulator = None,
                }
                item
            })
            .boxed())
    }
}
