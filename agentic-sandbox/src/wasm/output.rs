//! Guest stdout/stderr captured up to a byte limit, honestly.
//!
//! wasmtime-wasi's `MemoryOutputPipe` traps with a generic message when a write does not fit,
//! and drops the whole write. We want two things it cannot give: keep every byte that fits
//! (the start of a flood is usually the interesting part), and stop the guest with an error we
//! can recognise, so the outcome says `OutputLimit` rather than an anonymous trap.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// The error a guest traps with when its output passes the limit. Classification looks for
/// it (and for the pipe's own flag, in case a layer in between re-wraps the error).
#[derive(Debug, thiserror::Error)]
#[error("guest output passed the limit of {limit} bytes")]
pub(crate) struct OutputLimitExceeded {
    /// The limit that was passed.
    pub(crate) limit: usize,
}

#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    overflowed: bool,
}

/// One capture buffer shared by every handle the guest opens on the stream (WASI lets a guest
/// obtain several handles to stdout; they must all count against the same limit).
#[derive(Debug, Clone)]
pub(crate) struct CappedPipe {
    limit: usize,
    captured: Arc<Mutex<Captured>>,
}

impl CappedPipe {
    pub(crate) fn new(limit: usize) -> Self {
        CappedPipe {
            limit,
            captured: Arc::new(Mutex::new(Captured::default())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Captured> {
        // A std mutex because it is only held for a memcpy, never across an await. Poisoning
        // cannot leave `Captured` inconsistent (a push either extended the buffer or not), so
        // a poisoned lock is simply taken over.
        self.captured
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends what fits; returns false (and remembers it) when some of `bytes` did not fit.
    fn push(&self, bytes: &[u8]) -> bool {
        let mut captured = self.lock();
        let room = self.limit.saturating_sub(captured.bytes.len());
        let take = room.min(bytes.len());
        captured.bytes.extend_from_slice(&bytes[..take]);
        if take < bytes.len() {
            captured.overflowed = true;
            false
        } else {
            true
        }
    }

    fn exceeded(&self) -> StreamError {
        StreamError::Trap(wasmtime::Error::new(OutputLimitExceeded {
            limit: self.limit,
        }))
    }

    /// What was captured, and whether the guest tried to write more.
    pub(crate) fn take(&self) -> (Vec<u8>, bool) {
        let mut captured = self.lock();
        (std::mem::take(&mut captured.bytes), captured.overflowed)
    }

    /// True once the guest tried to write past the limit.
    pub(crate) fn overflowed(&self) -> bool {
        self.lock().overflowed
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if self.push(&bytes) {
            Ok(())
        } else {
            Err(self.exceeded())
        }
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always grant a non-zero permit, even when full: a zero permit makes WASI's blocking
        // write wait for readiness, which a memory pipe signals at once, so the guest would
        // spin forever. Granting the write lets `write` see the overflow and stop the guest.
        if self.overflowed() {
            return Err(self.exceeded());
        }
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.push(buf) {
            Poll::Ready(Ok(buf.len()))
        } else {
            Poll::Ready(Err(std::io::Error::other(OutputLimitExceeded {
                limit: self.limit,
            })))
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn keeps_what_fits_and_reports_the_rest() {
        let mut pipe = CappedPipe::new(5);
        assert!(pipe.write(Bytes::from_static(b"abc")).is_ok());
        let err = pipe.write(Bytes::from_static(b"defg")).unwrap_err();
        assert!(matches!(err, StreamError::Trap(ref e) if e.is::<OutputLimitExceeded>()));
        assert!(pipe.check_write().is_err(), "a full pipe refuses more");
        assert_eq!(pipe.take(), (b"abcde".to_vec(), true));
    }

    #[test]
    fn exactly_the_limit_is_not_an_overflow() {
        let mut pipe = CappedPipe::new(3);
        assert!(pipe.write(Bytes::from_static(b"abc")).is_ok());
        assert!(pipe.write(Bytes::new()).is_ok());
        assert_eq!(pipe.take(), (b"abc".to_vec(), false));
    }

    #[test]
    fn clones_share_one_budget() {
        let mut a = CappedPipe::new(4);
        let mut b = a.clone();
        assert!(a.write(Bytes::from_static(b"ab")).is_ok());
        assert!(b.write(Bytes::from_static(b"cde")).is_err());
        assert_eq!(a.take(), (b"abcd".to_vec(), true));
    }
}
