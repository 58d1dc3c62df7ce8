//! Retry classification of every `LlmError` variant: retry and circuit-breaker layers rely
//! on `is_retryable` and `retry_after`, so a change here changes their behaviour.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use agentic_llm::LlmError;

fn p() -> String {
    "prov".to_owned()
}

/// Every variant, with whether it is retryable and the wait it carries.
fn all_variants() -> Vec<(LlmError, bool, Option<Duration>)> {
    let wait = Some(Duration::from_millis(1500));
    vec![
        (
            LlmError::RateLimited {
                provider: p(),
                message: "429".into(),
                retry_after: wait,
            },
            true,
            wait,
        ),
        (
            LlmError::RateLimited {
                provider: p(),
                message: "429".into(),
                retry_after: None,
            },
            true,
            None,
        ),
        (
            LlmError::Overloaded {
                provider: p(),
                message: "529".into(),
                retry_after: wait,
            },
            true,
            wait,
        ),
        (
            LlmError::Overloaded {
                provider: p(),
                message: "529".into(),
                retry_after: None,
            },
            true,
            None,
        ),
        (
            LlmError::Server {
                provider: p(),
                status: 503,
                message: "unavailable".into(),
            },
            true,
            None,
        ),
        (LlmError::Timeout(Duration::from_secs(30)), true, None),
        (
            LlmError::Connection {
                provider: p(),
                message: "reset".into(),
            },
            true,
            None,
        ),
        (
            LlmError::CircuitOpen {
                provider: p(),
                retry_after: wait,
            },
            true,
            wait,
        ),
        (
            LlmError::CircuitOpen {
                provider: p(),
                retry_after: None,
            },
            true,
            None,
        ),
        (
            LlmError::InvalidRequest {
                provider: p(),
                status: 400,
                message: "bad".into(),
            },
            false,
            None,
        ),
        (
            LlmError::Authentication {
                provider: p(),
                status: 401,
                message: "key".into(),
            },
            false,
            None,
        ),
        (
            LlmError::NotFound {
                provider: p(),
                message: "model".into(),
            },
            false,
            None,
        ),
        (LlmError::ContextTooLong("300k tokens".into()), false, None),
        (LlmError::ContentFiltered("policy".into()), false, None),
        (LlmError::Decode("bad json".into()), false, None),
        (LlmError::BudgetExceeded("$5 limit".into()), false, None),
        (LlmError::NoProvider("all failed".into()), false, None),
        (LlmError::Script("no reply".into()), false, None),
        (LlmError::Cancelled, false, None),
        (LlmError::Other("?".into()), false, None),
    ]
}

#[test]
fn every_variant_is_classified() {
    for (err, retryable, retry_after) in all_variants() {
        assert_eq!(err.is_retryable(), retryable, "is_retryable of {err:?}");
        assert_eq!(err.retry_after(), retry_after, "retry_after of {err:?}");
    }
}

#[test]
fn a_wait_is_only_reported_by_retryable_errors() {
    for (err, _, _) in all_variants() {
        if err.retry_after().is_some() {
            assert!(err.is_retryable(), "{err:?}");
        }
    }
}

#[test]
fn messages_name_the_provider_and_keep_its_words() {
    for (err, _, _) in all_variants() {
        let text = err.to_string();
        assert!(!text.is_empty());
        let debug = format!("{err:?}");
        if debug.contains("provider: \"prov\"") {
            assert!(text.contains("prov"), "{text}");
        }
    }
    let err = LlmError::Server {
        provider: "anthropic".into(),
        status: 502,
        message: "bad gateway".into(),
    };
    assert_eq!(err.to_string(), "anthropic server error 502: bad gateway");
}

#[test]
fn errors_are_send_sync_and_std_errors() {
    fn check<E: std::error::Error + Send + Sync + 'static>() {}
    check::<LlmError>();
}
