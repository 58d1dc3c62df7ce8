//! Benchmarks for the agentic SDK; see the `[[bench]]` targets and `docs/benchmarks.md`.
