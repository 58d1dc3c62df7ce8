//! The conformance suite against [`MemoryQueue`], plus the suite's own plumbing.
#![cfg(feature = "test-kit")]

mod conformance {
    agentic_queue::queue_conformance_suite!(
        make = async { agentic_queue::MemoryQueue::new() },
        prefix = "memory",
    );
}

/// An `Arc<dyn TaskQueue>` works as `make`'s output as well, and `None` skips.
mod plumbing {
    use std::sync::Arc;

    use agentic_queue::TaskQueue;
    use agentic_queue::testkit::{CASES, CaseOutcome, IntoQueueUnderTest, run_case};

    #[test]
    fn none_skips_every_case() -> Result<(), agentic_queue::QueueError> {
        agentic_queue::testkit::__run_test("roundtrip", "skip", async {
            None::<agentic_queue::MemoryQueue>
        })
    }

    #[test]
    fn arc_dyn_is_a_queue_under_test() {
        let queue: Arc<dyn TaskQueue> = Arc::new(agentic_queue::MemoryQueue::new());
        assert!(queue.into_queue_under_test().is_some());
    }

    #[test]
    fn case_names_are_unique() {
        let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CASES.len());
        assert!(CASES.len() >= 21);
    }

    #[tokio::test]
    async fn unknown_case_is_an_error() {
        let queue: Arc<dyn TaskQueue> = Arc::new(agentic_queue::MemoryQueue::new());
        assert!(run_case("no_such_case", queue.clone(), "x").await.is_err());
        assert_eq!(
            run_case("roundtrip", queue, "x").await.ok(),
            Some(CaseOutcome::Passed)
        );
    }
}

/// A queue that claims no optional capability: the capability cases must say they skip.
mod skips {
    use std::sync::Arc;
    use std::time::Duration;

    use agentic_queue::testkit::{CaseOutcome, run_case};
    use agentic_queue::*;

    struct Bare(MemoryQueue);

    #[async_trait::async_trait]
    impl TaskQueue for Bare {
        fn capabilities(&self) -> QueueCapabilities {
            let mut caps = self.0.capabilities();
            caps.priority_levels = 1;
            caps.delays = false;
            caps.idempotency = false;
            caps
        }
        async fn enqueue_batch(
            &self,
            q: &str,
            jobs: Vec<NewJob>,
        ) -> Result<Vec<Enqueued>, QueueError> {
            self.0.enqueue_batch(q, jobs).await
        }
        async fn dequeue(
            &self,
            q: &str,
            max: usize,
            lease: Duration,
            wait: Duration,
        ) -> Result<Vec<Delivery>, QueueError> {
            self.0.dequeue(q, max, lease, wait).await
        }
        async fn ack(&self, lease: &Lease) -> Result<(), QueueError> {
            self.0.ack(lease).await
        }
        async fn nack(
            &self,
            lease: &Lease,
            retry: Retry,
            reason: &str,
        ) -> Result<NackOutcome, QueueError> {
            self.0.nack(lease, retry, reason).await
        }
        async fn extend_lease(
            &self,
            lease: &Lease,
            lease_for: Duration,
        ) -> Result<Lease, QueueError> {
            self.0.extend_lease(lease, lease_for).await
        }
        async fn dead_letters(&self, q: &str, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
            self.0.dead_letters(q, limit).await
        }
        async fn requeue_dead(&self, q: &str, ids: &[JobId]) -> Result<usize, QueueError> {
            self.0.requeue_dead(q, ids).await
        }
        async fn stats(&self, q: &str) -> Result<QueueStats, QueueError> {
            self.0.stats(q).await
        }
    }

    #[tokio::test]
    async fn capability_cases_report_a_named_skip() {
        let queue: Arc<dyn TaskQueue> = Arc::new(Bare(MemoryQueue::new()));
        for (case, missing) in [
            ("priorities_higher_first", "10 priority levels"),
            ("delayed_job_not_delivered_early", "delays"),
            ("idempotent_enqueue", "idempotency"),
        ] {
            let outcome = run_case(case, queue.clone(), "bare").await.ok();
            assert_eq!(outcome, Some(CaseOutcome::Skipped { missing }), "{case}");
        }
        // Cases that adapt rather than skip still pass without the capabilities.
        for case in [
            "nack_retry_after_redelivers",
            "stats_counts_by_state",
            "invalid_jobs_refused",
            "roundtrip",
        ] {
            let outcome = run_case(case, queue.clone(), "bare").await.ok();
            assert_eq!(outcome, Some(CaseOutcome::Passed), "{case}");
        }
    }
}
