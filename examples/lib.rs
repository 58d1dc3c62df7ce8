//! Runnable examples for the agentic SDK; see the `[[example]]` targets.
