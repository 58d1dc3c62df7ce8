//! [`CostMeter`]: prices every answer from a [`PriceTable`] and enforces [`Budgets`].
//!
//! Prices are US dollars per million tokens, four of them per model: input, output, cache
//! write and cache read.
//!
//! **Where the built-in prices come from.** [`PriceTable::builtin`] holds the list prices
//! of common Anthropic and OpenAI models as the author knew them in November 2025
//! ([`PRICES_AS_OF`]). They were written down without access to the vendors' pages and
//! have not been checked against them since: compare them with
//! <https://www.anthropic.com/pricing> and <https://openai.com/api/pricing> before relying
//! on a cost or a budget, and supply your own where they differ or are missing.
//!
//! **Your own prices.** Change or add a model with [`PriceTable::with`]; merge a whole
//! table over another with [`PriceTable::extend`]; or start from [`PriceTable::empty`] to
//! use only yours. A table is also plain JSON (model → the four rates), so it can live in
//! a configuration file:
//!
//! ```
//! use agentic_llm::layers::{ModelPrice, PriceTable};
//!
//! // Your own model, at the price your contract says (the numbers are placeholders).
//! let mine: PriceTable = serde_json::from_str(r#"{
//!     "my-finetune": {"input": 0.5, "output": 1.5, "cache_write": 0.5, "cache_read": 0.05}
//! }"#)?;
//! let prices = PriceTable::builtin().extend(mine); // yours win where both list a model
//! assert_eq!(prices.price("my-finetune"), Some(ModelPrice::new(0.5, 1.5, 0.5, 0.05)));
//! # Ok::<(), serde_json::Error>(())
//! ```
//!
//! A model the table does not know is priced by the meter's [`UnknownModel`] policy (like
//! the dearest model, by default).
//!
//! A budget belongs to a metadata tag (`goal = g-42`, `tenant = acme`): every request whose
//! `metadata.tags` carry that tag draws from it. Before a call the meter computes its worst
//! case (the prompt estimate at the input price, or the cache-write price if the request
//! asks for caching and that is dearer, plus `max_tokens` at the output price) and refuses
//! the call with [`LlmError::BudgetExceeded`] if any of its budgets has less left; the worst
//! case is reserved while the call runs, so concurrent calls cannot overspend together, and
//! replaced by the real cost when the answer arrives.

use std::collections::{BTreeMap, HashMap};

/// The hasher of the per-call maps: seeded per map like std's, a fraction of SipHash's cost.
type FastHash = foldhash::fast::RandomState;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use futures::StreamExt;

use crate::stream::StreamEvent;
use crate::{
    ChatRequest, ChatResponse, ContentBlock, Cost, EventStream, LlmError, LlmProvider,
    ProviderCapabilities, Usage,
};

/// When the built-in prices were taken: from the author's knowledge of the vendors' list
/// prices, not verified online (see the [module docs](self)).
pub const PRICES_AS_OF: &str = "2025-11 (not verified online: check before relying on them)";

/// What one model costs, in USD per million tokens. In JSON:
/// `{"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.3}`.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct ModelPrice {
    /// Prompt tokens.
    pub input: f64,
    /// Generated tokens.
    pub output: f64,
    /// Prompt tokens written to the provider's cache (Anthropic: 1.25x input for the
    /// 5-minute cache; OpenAI: the input price, writes are not charged extra).
    pub cache_write: f64,
    /// Prompt tokens read from the cache.
    pub cache_read: f64,
}

impl ModelPrice {
    /// A price from the four rates.
    pub const fn new(input: f64, output: f64, cache_write: f64, cache_read: f64) -> Self {
        ModelPrice {
            input,
            output,
            cache_write,
            cache_read,
        }
    }

    /// What `usage` costs at this price.
    #[allow(clippy::cast_precision_loss)]
    pub fn cost(&self, usage: &Usage) -> Cost {
        let usd = (usage.input_tokens as f64 * self.input
            + usage.output_tokens as f64 * self.output
            + usage.cache_write_tokens as f64 * self.cache_write
            + usage.cache_read_tokens as f64 * self.cache_read)
            / 1_000_000.0;
        Cost { usd }
    }
}

/// Prices by model name. See the [module docs](self).
///
/// A model is found by its exact name, or by a listed name followed by a snapshot suffix:
/// a date (`claude-sonnet-4-5-20250929`, `gpt-4o-mini-2024-07-18`) or `-latest`. A newer
/// version (`claude-opus-4-8`) does not inherit an older one's price: it is unknown until
/// added.
///
/// In JSON a table is an object from model name to [`ModelPrice`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct PriceTable {
    // A hash map, not a tree: a meter looks a model up after every call, when the caches
    // are cold from the network wait, and a tree lookup compares the name against a
    // string behind a pointer at every level. foldhash rather than std's SipHash: a
    // model is looked up two to four times per call (exact name, then without its snapshot
    // suffix; requested and answered model), and SipHash cost ~4 times the instructions.
    prices: HashMap<String, ModelPrice, FastHash>,
}

impl PriceTable {
    /// An empty table.
    pub fn empty() -> Self {
        Self::default()
    }

    /// List prices of common Anthropic and OpenAI models as of [`PRICES_AS_OF`].
    pub fn builtin() -> Self {
        const ANTHROPIC: &[(&str, ModelPrice)] = &[
            ("claude-opus-4-5", ModelPrice::new(5.0, 25.0, 6.25, 0.50)),
            ("claude-opus-4-1", ModelPrice::new(15.0, 75.0, 18.75, 1.50)),
            ("claude-opus-4", ModelPrice::new(15.0, 75.0, 18.75, 1.50)),
            ("claude-sonnet-4-5", ModelPrice::new(3.0, 15.0, 3.75, 0.30)),
            ("claude-sonnet-4", ModelPrice::new(3.0, 15.0, 3.75, 0.30)),
            ("claude-3-7-sonnet", ModelPrice::new(3.0, 15.0, 3.75, 0.30)),
            ("claude-3-5-sonnet", ModelPrice::new(3.0, 15.0, 3.75, 0.30)),
            ("claude-haiku-4-5", ModelPrice::new(1.0, 5.0, 1.25, 0.10)),
            ("claude-3-5-haiku", ModelPrice::new(0.80, 4.0, 1.0, 0.08)),
            ("claude-3-haiku", ModelPrice::new(0.25, 1.25, 0.30, 0.03)),
        ];
        const OPENAI: &[(&str, ModelPrice)] = &[
            ("gpt-5", ModelPrice::new(1.25, 10.0, 1.25, 0.125)),
            ("gpt-5-mini", ModelPrice::new(0.25, 2.0, 0.25, 0.025)),
            ("gpt-5-nano", ModelPrice::new(0.05, 0.40, 0.05, 0.005)),
            ("gpt-4.1", ModelPrice::new(2.0, 8.0, 2.0, 0.50)),
            ("gpt-4.1-mini", ModelPrice::new(0.40, 1.60, 0.40, 0.10)),
            ("gpt-4.1-nano", ModelPrice::new(0.10, 0.40, 0.10, 0.025)),
            ("gpt-4o", ModelPrice::new(2.50, 10.0, 2.50, 1.25)),
            ("gpt-4o-mini", ModelPrice::new(0.15, 0.60, 0.15, 0.075)),
            ("o3", ModelPrice::new(2.0, 8.0, 2.0, 0.50)),
            ("o4-mini", ModelPrice::new(1.10, 4.40, 1.10, 0.275)),
        ];
        let mut table = PriceTable::empty();
        for (model, price) in ANTHROPIC.iter().chain(OPENAI) {
            table = table.with(*model, *price);
        }
        table
    }

    /// Adds or replaces a model's price.
    pub fn with(mut self, model: impl Into<String>, price: ModelPrice) -> Self {
        self.prices.insert(model.into(), price);
        self
    }

    /// Adds every price of `other`, replacing this table's where both list a model.
    pub fn extend(mut self, other: PriceTable) -> Self {
        self.prices.extend(other.prices);
        self
    }

    /// The price of `model` (see the type's docs for how names match).
    pub fn price(&self, model: &str) -> Option<ModelPrice> {
        if let Some(price) = self.prices.get(model) {
            return Some(*price);
        }
        // The listed name is what remains once the snapshot suffix is cut: two lookups, no
        // scan of the table.
        snapshot_base(model).and_then(|base| self.prices.get(base).copied())
    }

    /// The dearest model (highest output price): the conservative guess for a model the
    /// table does not know.
    pub fn most_expensive(&self) -> Option<ModelPrice> {
        self.prices
            .values()
            .copied()
            .max_by(|a, b| a.output.total_cmp(&b.output))
    }

    /// The models listed, in alphabetical order.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        let mut models: Vec<&str> = self.prices.keys().map(String::as_str).collect();
        models.sort_unstable();
        models.into_iter()
    }
}

/// `model` without its snapshot suffix (`-20250929`, `-2024-07-18` or `-latest`), if it has
/// one.
fn snapshot_base(model: &str) -> Option<&str> {
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(base) = model.strip_suffix("-latest") {
        return Some(base);
    }
    let (base, last) = model.rsplit_once('-')?;
    if digits(last, 8) {
        return Some(base);
    }
    // `-YYYY-MM-DD`: the last three dash-separated parts.
    let (rest, month) = base.rsplit_once('-')?;
    let (base, year) = rest.rsplit_once('-')?;
    (digits(year, 4) && digits(month, 2) && digits(last, 2)).then_some(base)
}

/// What a [`CostMeter`] does with a model its table does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UnknownModel {
    /// Price it like the most expensive model in the table (default): budgets stay safe.
    #[default]
    MostExpensive,
    /// Price it at zero (local models).
    Free,
    /// Leave the cost unset, and refuse calls that draw from a budget (their worst case
    /// cannot be known).
    Refuse,
}

#[derive(Debug)]
struct Account {
    /// The tag, for the refusal's message.
    key: String,
    value: String,
    limit: f64,
    spent: f64,
    reserved: f64,
}

/// Spending limits per metadata tag, shared by every meter they are given to (clones share
/// the accounts). See the [module docs](self).
///
/// ```
/// use agentic_llm::layers::Budgets;
///
/// let budgets = Budgets::new();
/// budgets.set("goal", "g-42", 5.00);
/// assert_eq!(budgets.remaining("goal", "g-42"), Some(5.00));
/// assert_eq!(budgets.remaining("goal", "other"), None);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Budgets {
    // A std `Mutex`: reservations and settlements are a few additions, never across an
    // `.await`.
    accounts: Arc<Mutex<Accounts>>,
}

/// The accounts, and where each tag's is. Accounts are never removed, so a call holds the
/// indices of its accounts from admission to settlement: no tag is copied or hashed again.
#[derive(Debug, Default)]
struct Accounts {
    list: Vec<Account>,
    /// Keyed tag name, then tag value, so lookups by `&str` allocate nothing.
    index: HashMap<String, HashMap<String, usize, FastHash>, FastHash>,
}

impl Accounts {
    fn find(&self, key: &str, value: &str) -> Option<usize> {
        self.index.get(key)?.get(value).copied()
    }

    fn get(&self, key: &str, value: &str) -> Option<&Account> {
        self.find(key, value).and_then(|i| self.list.get(i))
    }
}

impl Budgets {
    /// No budgets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the limit of tag `key = value` to `limit_usd` (what was spent is kept).
    pub fn set(&self, key: &str, value: &str, limit_usd: f64) {
        let mut guard = self.lock();
        let accounts = &mut *guard;
        if let Some(account) = accounts
            .find(key, value)
            .and_then(|i| accounts.list.get_mut(i))
        {
            account.limit = limit_usd;
            return;
        }
        accounts
            .index
            .entry(key.to_owned())
            .or_default()
            .insert(value.to_owned(), accounts.list.len());
        accounts.list.push(Account {
            key: key.to_owned(),
            value: value.to_owned(),
            limit: limit_usd,
            spent: 0.0,
            reserved: 0.0,
        });
    }

    /// What tag `key = value` spent so far (0 without a budget).
    pub fn spent(&self, key: &str, value: &str) -> f64 {
        self.lock().get(key, value).map_or(0.0, |a| a.spent)
    }

    /// What is left of the budget of tag `key = value` (calls in flight not counted), or
    /// `None` when it has none.
    pub fn remaining(&self, key: &str, value: &str) -> Option<f64> {
        self.lock().get(key, value).map(|a| a.limit - a.spent)
    }

    fn lock(&self) -> MutexGuard<'_, Accounts> {
        self.accounts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The accounts a request draws from.
    fn applicable(&self, tags: &BTreeMap<String, String>) -> Vec<usize> {
        if tags.is_empty() {
            return Vec::new();
        }
        let accounts = self.lock();
        tags.iter()
            .filter_map(|(k, v)| accounts.find(k, v))
            .collect()
    }

    /// Reserves `worst` on every account in `accounts`, or none if one has too little left.
    fn reserve(&self, accounts: &[usize], worst: f64) -> Result<(), String> {
        let mut guard = self.lock();
        for account in accounts.iter().filter_map(|&i| guard.list.get(i)) {
            let left = account.limit - account.spent - account.reserved;
            if worst > left {
                return Err(format!(
                    "{}={}: this call may cost up to ${worst:.6}, but only ${:.6} of ${:.6} is left",
                    account.key,
                    account.value,
                    left.max(0.0),
                    account.limit
                ));
            }
        }
        for &i in accounts {
            if let Some(account) = guard.list.get_mut(i) {
                account.reserved += worst;
            }
        }
        Ok(())
    }

    /// Replaces a reservation by what the call cost.
    fn settle(&self, accounts: &[usize], reserved: f64, cost: f64) {
        let mut guard = self.lock();
        for &i in accounts {
            if let Some(account) = guard.list.get_mut(i) {
                account.reserved = (account.reserved - reserved).max(0.0);
                account.spent += cost;
            }
        }
    }
}

/// A provider whose answers are priced and whose calls draw from budgets. See the
/// [module docs](self).
///
/// Every answer gets `cost` set (streams get a [`StreamEvent::Cost`] before
/// `MessageStop`), unless the model is unknown and the policy is [`UnknownModel::Refuse`].
/// Clones share the budgets and the running total.
#[derive(Debug, Clone)]
pub struct CostMeter<P> {
    inner: P,
    meter: Meter,
}

/// Everything but the inner provider: what a stream needs to settle after the call
/// returned.
#[derive(Debug, Clone)]
struct Meter {
    prices: Arc<PriceTable>,
    budgets: Budgets,
    unknown: UnknownModel,
    default_model: Option<String>,
    total: Arc<Mutex<f64>>,
}

impl<P: LlmProvider> CostMeter<P> {
    /// Wraps `inner` with `prices` and no budgets.
    pub fn new(inner: P, prices: PriceTable) -> Self {
        CostMeter {
            inner,
            meter: Meter {
                prices: Arc::new(prices),
                budgets: Budgets::new(),
                unknown: UnknownModel::default(),
                default_model: None,
                total: Arc::default(),
            },
        }
    }

    /// Enforces `budgets` (shared: keep a clone to set limits and read spending).
    pub fn with_budgets(mut self, budgets: Budgets) -> Self {
        self.meter.budgets = budgets;
        self
    }

    /// Sets the policy for models the table does not know.
    pub fn unknown_models(mut self, policy: UnknownModel) -> Self {
        self.meter.unknown = policy;
        self
    }

    /// The model to assume for requests that name none (the inner provider's default), so
    /// that their worst case is priced right.
    pub fn default_model(mut self, model: impl Into<String>) -> Self {
        self.meter.default_model = Some(model.into());
        self
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// The budgets this meter enforces.
    pub fn budgets(&self) -> &Budgets {
        &self.meter.budgets
    }

    /// Everything this meter (and its clones) priced so far, in USD.
    pub fn total_usd(&self) -> f64 {
        *self
            .meter
            .total
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Meter {
    fn price(&self, model: Option<&str>) -> Option<ModelPrice> {
        // Lazily: the fallback scans the table.
        model
            .and_then(|m| self.prices.price(m))
            .or_else(|| match self.unknown {
                UnknownModel::MostExpensive => self.prices.most_expensive(),
                UnknownModel::Free => Some(ModelPrice::default()),
                UnknownModel::Refuse => None,
            })
    }

    /// Checks the budgets and reserves the worst case.
    fn admit(&self, request: &ChatRequest) -> Result<Admission, LlmError> {
        let accounts = self.budgets.applicable(&request.metadata.tags);
        let request_model = request.model.as_deref().or(self.default_model.as_deref());
        // The requested model's price is kept for an answer that names no model, so the
        // name need not be.
        let request_price = self.price(request_model);
        if accounts.is_empty() {
            return Ok(Admission {
                accounts,
                reserved: 0.0,
                request_price,
            });
        }
        let price = request_price.ok_or_else(|| {
            LlmError::BudgetExceeded(format!(
                "no price for model {}: the worst case of a call on a budget cannot be known",
                request_model.unwrap_or("(provider default)")
            ))
        })?;
        let worst = worst_case(request, &price);
        self.budgets
            .reserve(&accounts, worst)
            .map_err(LlmError::BudgetExceeded)?;
        Ok(Admission {
            accounts,
            reserved: worst,
            request_price,
        })
    }

    /// Prices what a call used (at the answering model's price, else the requested one's),
    /// charges it, and releases the reservation.
    fn settle(&self, admission: &Admission, model: &str, usage: Option<&Usage>) -> Option<Cost> {
        let cost = usage.and_then(|usage| {
            let price = if model.is_empty() {
                admission.request_price
            } else {
                self.price(Some(model))
            };
            price.map(|p| p.cost(usage))
        });
        let usd = cost.map_or(0.0, |c| c.usd);
        self.budgets
            .settle(&admission.accounts, admission.reserved, usd);
        *self.total.lock().unwrap_or_else(PoisonError::into_inner) += usd;
        cost
    }
}

struct Admission {
    /// Indices of the budgets' accounts the call draws from.
    accounts: Vec<usize>,
    reserved: f64,
    /// The price of the requested model (or of the unknown-model policy).
    request_price: Option<ModelPrice>,
}

/// The most a request can cost at `price`.
fn worst_case(request: &ChatRequest, price: &ModelPrice) -> f64 {
    let caches = request
        .system
        .iter()
        .chain(request.messages.iter().flat_map(|m| &m.content))
        .any(|b| {
            matches!(
                b,
                ContentBlock::Text {
                    cache_control: Some(_),
                    ..
                } | ContentBlock::ToolResult {
                    cache_control: Some(_),
                    ..
                }
            )
        })
        || request.tools.iter().any(|t| t.cache_control.is_some());
    // Writing the prompt to the cache costs more than reading it plainly (Anthropic 1.25x).
    let input_price = if caches {
        price.input.max(price.cache_write)
    } else {
        price.input
    };
    #[allow(clippy::cast_precision_loss)]
    let usd = (request.estimated_input_tokens() as f64 * input_price
        + f64::from(request.max_tokens) * price.output)
        / 1_000_000.0;
    usd
}

impl<P: LlmProvider> CostMeter<P> {
    /// Awaits an admitted call and prices its answer (or releases the reservation).
    async fn metered(
        &self,
        admission: Admission,
        call: impl std::future::Future<Output = Result<ChatResponse, LlmError>>,
    ) -> Result<ChatResponse, LlmError> {
        match call.await {
            Ok(mut response) => {
                response.cost =
                    self.meter
                        .settle(&admission, &response.model, Some(&response.usage));
                Ok(response)
            }
            Err(error) => {
                // Failed calls are not billed by the providers.
                self.meter.settle(&admission, "", None);
                Err(error)
            }
        }
    }
}

#[async_trait]
impl<P: LlmProvider> LlmProvider for CostMeter<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> ProviderCapabilities {
        self.inner.capabilities()
    }

    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        let admission = self.meter.admit(&request)?;
        self.metered(admission, self.inner.complete(request)).await
    }

    async fn complete_ref(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let admission = self.meter.admit(request)?;
        self.metered(admission, self.inner.complete_ref(request))
            .await
    }

    async fn stream(&self, request: ChatRequest) -> Result<EventStream, LlmError> {
        let admission = self.meter.admit(&request)?;
        let events = match self.inner.stream(request).await {
            Ok(events) => events,
            Err(error) => {
                self.meter.settle(&admission, "", None);
                return Err(error);
            }
        };
        let mut tally = Tally {
            meter: self.meter.clone(),
            admission: Some(admission),
            model: String::new(),
            usage: Usage::default(),
        };
        Ok(events
            .flat_map(move |item| {
                let mut out = Vec::with_capacity(2);
                match &item {
                    Ok(StreamEvent::MessageStart { model, usage, .. }) => {
                        tally.model.clone_from(model);
                        tally.usage.add(usage);
                    }
                    Ok(StreamEvent::MessageDelta { usage, .. }) => tally.usage.add(usage),
                    Ok(StreamEvent::MessageStop) => {
                        if let Some(cost) = tally.settle() {
                            out.push(Ok(StreamEvent::Cost { cost }));
                        }
                    }
                    Err(_) => {
                        tally.settle();
                    }
                    Ok(_) => {}
                }
                out.push(item);
                futures::stream::iter(out)
            })
            .boxed())
    }
}

/// A stream's usage so far; settles the budgets when the stream ends or is dropped.
struct Tally {
    meter: Meter,
    admission: Option<Admission>,
    model: String,
    usage: Usage,
}

impl Tally {
    /// Charges what was used (once) and returns its cost.
    fn settle(&mut self) -> Option<Cost> {
        let admission = self.admission.take()?;
        self.meter
            .settle(&admission, &self.model, Some(&self.usage))
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        // Ended early or dropped midway: the tokens reported so far were still used.
        self.settle();
    }
}
