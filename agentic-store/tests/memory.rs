//! The conformance suite against [`MemoryStore`](agentic_store::MemoryStore): the same case
//! bodies every other backend runs, each on a fresh store.

agentic_store::store_conformance_suite!(
    make = std::sync::Arc::new(agentic_store::MemoryStore::new())
);
