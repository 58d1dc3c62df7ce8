//! [`ApiKey`]: a credential that cannot leak through `Debug`, `Display` or serde.

use std::fmt;

/// An API key. Its `Debug` shows `ApiKey(<redacted>)`; it has no `Display` and no
/// `Serialize`, so it cannot end up in logs, error messages or stored configuration by
/// accident. Read it with [`ApiKey::expose`] where it is put on the wire, and nowhere else.
///
/// ```
/// use agentic_llm::ApiKey;
///
/// let key = ApiKey::new("sk-ant-very-secret");
/// assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
/// assert_eq!(key.expose(), "sk-ant-very-secret");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    /// The key from environment variable `var`, when it is set and not blank.
    pub fn from_env(var: &str) -> Option<Self> {
        std::env::var(var)
            .ok()
            .map(|key| key.trim().to_owned())
            .filter(|key| !key.is_empty())
            .map(ApiKey)
    }

    /// The key itself, to put in a request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl From<String> for ApiKey {
    fn from(key: String) -> Self {
        ApiKey(key)
    }
}

impl From<&str> for ApiKey {
    fn from(key: &str) -> Self {
        ApiKey(key.to_owned())
    }
}
