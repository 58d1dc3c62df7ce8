//! Retry classification of every `LlmError` variant: retry and circuit-breaker layers rely
//! on `is_retryable` and `retry_after`, so a change here changes their behaviour.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use agentic_llm::{ErrorBody, LlmError};

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
                source: None,
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
        (LlmError::Config("no key".into()), false, None),
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

#[test]
fn error_bodies_of_every_provider_shape_are_read() {
    let anthropic = ErrorBody::parse(
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}"#,
    );
    assert_eq!(anthropic.kind.as_deref(), Some("overloaded_error"));
    assert_eq!(anthropic.message, "Overloaded");
    let openai = ErrorBody::parse(
        br#"{"error":{"message":"Bad key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
    );
    assert_eq!(openai.code.as_deref(), Some("invalid_api_key"));
    assert_eq!(openai.message, "Bad key");
    let ollama = ErrorBody::parse(br#"{"error":"model not found"}"#);
    assert_eq!(
        (ollama.kind, ollama.message.as_str()),
        (None, "model not found")
    );
    let html = ErrorBody::parse(b"  <html>Bad Gateway</html>\n");
    assert_eq!(html.message, "<html>Bad Gateway</html>");
    let huge = ErrorBody::parse(&vec![b'x'; 10_000]);
    assert_eq!(huge.message.len(), 2000);
}

#[test]
fn http_statuses_map_to_their_variants() {
    let body = |kind: Option<&str>, message: &str| ErrorBody {
        kind: kind.map(str::to_owned),
        code: None,
        message: message.to_owned(),
    };
    let wait = Some(Duration::from_secs(2));
    let cases: Vec<(u16, ErrorBody, &str, bool)> = vec![
        (
            429,
            body(Some("rate_limit_error"), "slow"),
            "RateLimited",
            true,
        ),
        (
            529,
            body(Some("overloaded_error"), "Overloaded"),
            "Overloaded",
            true,
        ),
        (
            500,
            body(Some("overloaded_error"), "Overloaded"),
            "Overloaded",
            true,
        ),
        (500, body(Some("api_error"), "oops"), "Server", true),
        (503, body(None, "down"), "Server", true),
        (408, body(None, "slow client"), "Server", true),
        (409, body(None, "conflict"), "Server", true),
        (
            400,
            body(Some("invalid_request_error"), "bad"),
            "InvalidRequest",
            false,
        ),
        (
            400,
            body(
                Some("invalid_request_error"),
                "prompt is too long: 210000 tokens > 200000 maximum",
            ),
            "ContextTooLong",
            false,
        ),
        (
            413,
            body(Some("request_too_large"), "too big"),
            "ContextTooLong",
            false,
        ),
        (
            401,
            body(Some("authentication_error"), "key"),
            "Authentication",
            false,
        ),
        (
            403,
            body(Some("permission_error"), "no"),
            "Authentication",
            false,
        ),
        (
            404,
            body(Some("not_found_error"), "model"),
            "NotFound",
            false,
        ),
        (422, body(None, "unprocessable"), "InvalidRequest", false),
    ];
    for (status, body, variant, retryable) in cases {
        let error = LlmError::from_http("p", status, &body, wait);
        let debug = format!("{error:?}");
        assert!(debug.starts_with(variant), "{status}: {debug}");
        assert_eq!(error.is_retryable(), retryable, "{status}: {debug}");
        assert!(
            error.to_string().contains(&body.message),
            "{status}: the message is kept"
        );
    }
    // Mid-stream errors have no status: the type decides.
    let error = LlmError::from_stream_error("p", &body(Some("overloaded_error"), "Overloaded"));
    assert!(matches!(error, LlmError::Overloaded { .. }));
    let error = LlmError::from_stream_error("p", &body(None, "runner crashed"));
    assert!(matches!(error, LlmError::Server { status: 500, .. }));
    let error = LlmError::from_stream_error("p", &body(Some("invalid_request_error"), "bad"));
    assert!(!error.is_retryable());
}
