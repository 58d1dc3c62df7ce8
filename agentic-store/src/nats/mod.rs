//! The NATS KV backend (issue #7): being implemented.
