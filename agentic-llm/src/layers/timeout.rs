//! [`Timeout`]: bounds a call, and the time to the first token of a stream.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};

use crate::stream::StreamEvent;
use crate::{ChatRequest, ChatResponse, EventStream, LlmError, LlmProvider, ProviderCapabilities};

/// The bounds of a [`Timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timeouts {
    /// The whole call: a complete answer, or a stream from the request to its last event.
    pub call: Option<Duration>,
    /// A stream's first token: from the request to the first delta (text, tool input,
    /// thinking) or the end of the answer. `message_start` does not count: providers send
    /// it before the model produced anything. Ignored by `complete`.
    pub first_token: Option<Duration>,
}

impl Timeouts {
    /// A bound on the whole call.
    pub fn call(call: Duration) -> Self {
        Timeouts {
            call: Some(call),
            first_token: None,
        }
    }

    /// Adds a bound on the time to the first token.
    pub fn first_token(mut self, first_token: Duration) -> Self {
        self.first_token = Some(first_token);
        self
    }
}

/// A provider whose calls are bounded in time; past a bound the call fails with
/// [`LlmError::Timeout`] (retryable) carrying the bound that was exceeded. Uses the tokio
/// clock, so `tokio::time::pause` makes tests exact.
#[derive(Debug, Clone)]
pub struct Timeout<P> {
    inner: P,
    timeouts: Timeouts,
}

impl<P: LlmProvider> Timeout<P> {
    /// Wraps `inner`.
    pub fn new(inner: P, timeouts: Timeouts) -> Self {
        Timeout { inner, timeouts }
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &P {
        &self.inner
    }
}

/// The deadlines of one stream.
#[derive(Clone, Copy)]
struct Deadlines {
    call: Option<(Instant, Duration)>,
    first_token: Option<(Instant, Duration)>,
}

impl Deadlines {
    fn new(timeouts: Timeouts) -> Self {
        let now = Instant::now();
        Deadlines {
            call: timeouts.call.map(|d| (super::later(now, d), d)),
            first_token: timeouts.first_token.map(|d| (super::later(now, d), d)),
        }
    }

    /// The nearest deadline that still applies, and its bound.
    fn next(&self, before_first_token: bool) -> Option<(Instant, Duration)> {
        let first = if before_first_token {
            self.first_token
        } else {
            None
        };
        match (self.call, first) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

fn is_token(event: &StreamEvent) -> bool {
    matches!(
        event,
        StreamEvent::TextDelta { .. }
            | StreamEvent::ToolInputDelta { .. }
            | StreamEvent::ThinkingDelta { .. }
            | StreamEvent::MessageDelta { .. }
            | StreamEvent::MessageStop
    )
}

/// The stream with its deadlines.
struct Bounded {
    inner: EventStream,
    deadlines: Deadlines,
    before_first_token: bool,
    sleep: Option<(Pin<Box<Sleep>>, Duration)>,
    finished: bool,
}

impl Bounded {
    fn arm(&mut self) {
        self.sleep = self
            .deadlines
            .next(self.before_first_token)
            .map(|(at, bound)| (Box::pin(tokio::time::sleep_until(at)), bound));
    }
}

impl Stream for Bounded {
    type Item = Result<StreamEvent, LlmError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        // Checked before the stream too: a stream that always has an item ready would
        // otherwise never let the deadline be seen.
        if let Some((sleep, bound)) = &self.sleep
            && sleep.is_elapsed()
        {
            let bound = *bound;
            self.finished = true;
            return Poll::Ready(Some(Err(LlmError::Timeout(bound))));
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(item)) => {
                if self.before_first_token && item.as_ref().is_ok_and(is_token) {
                    self.before_first_token = false;
                    self.arm();
                }
                return Poll::Ready(Some(item));
            }
            Poll::Ready(None) => {
                self.finished = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if let Some((sleep, bound)) = self.sleep.as_mut()
            && sleep.as_mut().poll(cx).is_ready()
        {
            let bound = *bound;
            self.finished = true;
            return Poll::Ready(Some(Err(LlmError::Timeout(bound))));
        }
        Poll::Pending
    }
}

impl<P: LlmProvider> Timeout<P> {
    /// `call` under the bound of a whole call, if there is one.
    async fn bounded(
        &self,
        call: impl std::future::Future<Output = Result<ChatResponse, LlmError>>,
    ) -> Result<ChatResponse, LlmError> {
        match self.timeouts.call {
            Some(bound) => tokio::time::timeout(bound, call)
                .await
                .map_err(|_| LlmError::Timeout(bound))?,
            None => call.await,
        }
    }
}

#[async_trait]
impl<P: LlmProvider> LlmProvider for Timeout<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> ProviderCapabilities {
        self.inner.capabilities()
    }

    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        self.bounded(self.inner.complete(request)).await
    }

    async fn complete_ref(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        self.bounded(self.inner.complete_ref(request)).await
    }

    async fn stream(&self, request: ChatRequest) -> Result<EventStream, LlmError> {
        let deadlines = Deadlines::new(self.timeouts);
        // Opening the stream (the HTTP status) is before the first token too.
        let events = match deadlines.next(true) {
            Some((at, bound)) => tokio::time::timeout_at(at, self.inner.stream(request))
                .await
                .map_err(|_| LlmError::Timeout(bound))??,
            None => return self.inner.stream(request).await,
        };
        let mut bounded = Bounded {
            inner: events,
            deadlines,
            before_first_token: true,
            sleep: None,
            finished: false,
        };
        bounded.arm();
        Ok(bounded.boxed())
    }
}
