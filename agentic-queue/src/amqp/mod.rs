//! The RabbitMQ backend (issue #6): being implemented.
