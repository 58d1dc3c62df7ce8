//! The NATS JetStream backend (issue #7): being implemented.
