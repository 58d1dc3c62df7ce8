//! What the three stream decoders share: cutting a body into frames (SSE events, NDJSON
//! lines) in any chunking, handing each frame to the provider's wire logic, and the rules at
//! the end of the body (stop at the terminal frame; a body that ends before it is a
//! retryable "stream ended early"; half a frame at the very end is a cut connection, not a
//! bad server).
//!
//! A provider's public `StreamDecoder` is a [`FrameDecoder`] over its [`Wire`]: the wire
//! type holds only what its format needs to remember between frames.

use crate::LlmError;
use crate::stream::{StreamEvent, ended_early};

/// JSON from bytes: checked as UTF-8 once, then parsed as text.
///
/// `serde_json::from_slice` re-checks UTF-8 in every string it reads (each key and value);
/// checking the whole body first and parsing it with `from_str` does that work once, in
/// bulk: about a quarter of the instructions of parsing a Messages API answer (callgrind).
/// A body that is not UTF-8 goes to `from_slice`, so its error says where, as before.
pub(crate) fn json_from_bytes<'a, T: serde::Deserialize<'a>>(
    body: &'a [u8],
) -> serde_json::Result<T> {
    match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(body),
    }
}

/// Cuts a body into frames, whatever the chunking.
pub(crate) trait Framing: std::fmt::Debug + Send + 'static {
    /// One unit of the format.
    type Frame: std::fmt::Debug + Send + 'static;
    /// Feeds bytes; complete frames are appended to `out`.
    fn push(&mut self, chunk: &[u8], out: &mut Vec<Self::Frame>);
    /// The body ended: flushes a last frame that had no terminator.
    fn finish(&mut self, out: &mut Vec<Self::Frame>);
}

impl Framing for crate::sse::SseParser {
    type Frame = crate::sse::SseEvent;
    fn push(&mut self, chunk: &[u8], out: &mut Vec<Self::Frame>) {
        crate::sse::SseParser::push(self, chunk, out);
    }
    fn finish(&mut self, out: &mut Vec<Self::Frame>) {
        crate::sse::SseParser::finish(self, out);
    }
}

impl Framing for crate::ndjson::NdjsonSplitter {
    type Frame = Vec<u8>;
    fn push(&mut self, chunk: &[u8], out: &mut Vec<Self::Frame>) {
        crate::ndjson::NdjsonSplitter::push(self, chunk, out);
    }
    fn finish(&mut self, out: &mut Vec<Self::Frame>) {
        crate::ndjson::NdjsonSplitter::finish(self, out);
    }
}

/// One provider's wire logic: a frame in, events out.
pub(crate) trait Wire: std::fmt::Debug + Send + 'static {
    /// How its bodies are cut.
    type Framing: Framing;
    /// The terminal frame, as named in "stream ended early: no …".
    const TERMINAL: &'static str;
    /// Decodes one frame into `out`; `Ok(true)` when it was the terminal frame. `provider`
    /// names the provider in errors; `at_eof`: the body ended right after this frame.
    fn frame(
        &mut self,
        provider: &str,
        frame: &<Self::Framing as Framing>::Frame,
        out: &mut Vec<StreamEvent>,
        at_eof: bool,
    ) -> Result<bool, LlmError>;
}

/// A body decoded incrementally: feed it bytes as they arrive, in any chunking.
#[derive(Debug)]
pub(crate) struct FrameDecoder<W: Wire> {
    provider: String,
    framing: W::Framing,
    /// Frames cut but not decoded yet; kept to reuse its allocation.
    frames: Vec<<W::Framing as Framing>::Frame>,
    pub(crate) wire: W,
    done: bool,
}

impl<W: Wire> FrameDecoder<W> {
    /// A decoder for one answer; `provider` names it in errors.
    pub(crate) fn new(provider: &str, framing: W::Framing, wire: W) -> Self {
        FrameDecoder {
            provider: provider.to_owned(),
            framing,
            frames: Vec::new(),
            wire,
            done: false,
        }
    }

    /// Feeds the next bytes; decoded events are appended to `out` (also those before an
    /// error). Bytes after the terminal frame are ignored.
    pub(crate) fn push(
        &mut self,
        chunk: &[u8],
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), LlmError> {
        if self.done {
            return Ok(());
        }
        self.framing.push(chunk, &mut self.frames);
        self.drain(out, false)
    }

    /// The body ended: fails unless the terminal frame was seen.
    pub(crate) fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), LlmError> {
        if self.done {
            return Ok(());
        }
        self.framing.finish(&mut self.frames);
        self.drain(out, true)?;
        if self.done {
            Ok(())
        } else {
            Err(ended_early(&self.provider, &format!("no {}", W::TERMINAL)))
        }
    }

    /// True once the terminal frame was decoded (or an error ended the stream).
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    fn drain(&mut self, out: &mut Vec<StreamEvent>, at_eof: bool) -> Result<(), LlmError> {
        let mut result = Ok(());
        for frame in &self.frames {
            if self.done {
                break;
            }
            match self.wire.frame(&self.provider, frame, out, at_eof) {
                Ok(terminal) => self.done = terminal,
                // The first error ends the stream: what follows it cannot be trusted.
                Err(error) => {
                    self.done = true;
                    result = Err(error);
                }
            }
        }
        self.frames.clear();
        result
    }
}

/// The public methods of a provider's `StreamDecoder`, a newtype over a [`FrameDecoder`]:
/// `push`, `finish` and `is_done`, documented with the name of the terminal frame.
macro_rules! decoder_methods {
    ($terminal:literal) => {
        /// Feeds the next bytes; decoded events are appended to `out` (also those before an
        #[doc = concat!("error). Bytes after ", $terminal, " are ignored.")]
        pub fn push(&mut self, chunk: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), LlmError> {
            self.0.push(chunk, out)
        }

        #[doc = concat!("The body ended: fails unless ", $terminal, " was seen.")]
        pub fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), LlmError> {
            self.0.finish(out)
        }

        #[doc = concat!("True once ", $terminal, " was decoded (or an error ended the stream).")]
        pub fn is_done(&self) -> bool {
            self.0.is_done()
        }
    };
}
pub(crate) use decoder_methods;

/// A frame's parsed JSON, or what its failure means: at the very end of the body it is half a
/// frame cut off with the connection (retryable "stream ended early: the last `unit` is
/// incomplete"); anywhere else a malformed answer (`Decode`, "malformed JSON `what`").
///
/// The caller parses (`from_str` for SSE data, which skips the UTF-8 check that `from_slice`
/// would repeat on every string; `from_slice` for NDJSON lines).
pub(crate) fn frame_json<T>(
    parsed: serde_json::Result<T>,
    provider: &str,
    at_eof: bool,
    unit: &str,
    what: impl FnOnce() -> String,
) -> Result<T, LlmError> {
    parsed.map_err(|e| {
        if at_eof {
            ended_early(provider, &format!("the last {unit} is incomplete"))
        } else {
            LlmError::Decode(format!("{provider}: malformed JSON {}: {e}", what()))
        }
    })
}

/// Block indices for formats that do not number their blocks (OpenAI, Ollama): handed out
/// in order of appearance, with the blocks still open remembered so that the end of the
/// answer can close them in order.
#[cfg(any(feature = "openai", feature = "ollama"))]
#[derive(Debug, Default)]
pub(crate) struct Blocks {
    next: usize,
    open: Vec<usize>,
}

#[cfg(any(feature = "openai", feature = "ollama"))]
impl Blocks {
    /// Opens a new block.
    pub(crate) fn open(
        &mut self,
        block: crate::stream::BlockStart,
        out: &mut Vec<StreamEvent>,
    ) -> usize {
        let index = self.next;
        self.next += 1;
        self.open.push(index);
        out.push(StreamEvent::BlockStart { index, block });
        index
    }

    /// The block in `slot`, opened the first time it is asked for (the text, the thinking).
    pub(crate) fn open_once(
        &mut self,
        slot: &mut Option<usize>,
        block: crate::stream::BlockStart,
        out: &mut Vec<StreamEvent>,
    ) -> usize {
        match *slot {
            Some(index) => index,
            None => {
                let index = self.open(block, out);
                *slot = Some(index);
                index
            }
        }
    }

    /// Closes one block.
    #[cfg(feature = "ollama")]
    pub(crate) fn close(&mut self, index: usize, out: &mut Vec<StreamEvent>) {
        self.open.retain(|&i| i != index);
        out.push(StreamEvent::BlockStop { index });
    }

    /// Closes every open block, in the order they were opened.
    pub(crate) fn close_all(&mut self, out: &mut Vec<StreamEvent>) {
        for index in self.open.drain(..) {
            out.push(StreamEvent::BlockStop { index });
        }
    }
}
