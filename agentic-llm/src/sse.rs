//! A small Server-Sent Events parser: bytes in (chunked any way the network likes), events
//! out.
//!
//! It follows the WHATWG "event stream interpretation" rules: lines end with `\n`, `\r\n`
//! or `\r`; a line starting with `:` is a comment; `field: value` lines (one optional space
//! after the colon) set `event`, `data` (several `data:` lines join with `\n`), `id` and
//! `retry`; a blank line dispatches the event; an event without data is not dispatched; a
//! leading byte-order mark is skipped.
//!
//! It is pure (no I/O, no clock) and incremental: [`SseParser::push`] takes whatever bytes
//! arrived, so an event may be split across chunks at any byte (even between the `\r` and
//! `\n` of one line ending, or inside a UTF-8 character) and a chunk may hold many events.
//! Every chunking of the same bytes yields the same events.
//!
//! ```
//! use agentic_llm::sse::{SseEvent, SseParser};
//!
//! let mut parser = SseParser::new();
//! let mut events = Vec::new();
//! parser.push(b"event: ping\ndata: {\"type\"", &mut events);
//! assert!(events.is_empty());
//! parser.push(b": \"ping\"}\r\n\r\n: a comment\n", &mut events);
//! assert_eq!(events, vec![SseEvent::new("ping", "{\"type\": \"ping\"}")]);
//! ```

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field; empty when the event had none (the spec's `"message"`).
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last `id:` seen so far in the stream (ids persist across events, per the spec).
    pub id: Option<String>,
    /// A `retry:` reconnection time in milliseconds sent with this event.
    pub retry: Option<u64>,
}

impl SseEvent {
    /// An event with a type and data and no id.
    pub fn new(event: impl Into<String>, data: impl Into<String>) -> Self {
        SseEvent {
            event: event.into(),
            data: data.into(),
            id: None,
            retry: None,
        }
    }

    /// The event type, with the spec's default `"message"` for events without `event:`.
    pub fn event_type(&self) -> &str {
        if self.event.is_empty() {
            "message"
        } else {
            &self.event
        }
    }
}

/// The incremental parser. See the [module docs](self).
#[derive(Debug, Default)]
pub struct SseParser {
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` at the start of the next one belongs to the
    /// same line ending and must not count as an empty line (which would dispatch).
    after_cr: bool,
    /// Nothing was read yet (a byte-order mark may come first).
    at_start: bool,
    event: String,
    /// Raw data bytes: kept as bytes until dispatch so that a UTF-8 character split across
    /// `data:` continuation lines or chunks is never mangled.
    data: Vec<u8>,
    has_data: bool,
    id: Option<String>,
    retry: Option<u64>,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        SseParser {
            at_start: true,
            ..SseParser::default()
        }
    }

    /// Feeds the next bytes; complete events are appended to `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<SseEvent>) {
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while !chunk.is_empty() {
            // Line endings are rare compared to payload bytes; a plain scan compiles to a
            // tight loop, which is what the throughput target needs.
            let Some(end) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.partial.extend_from_slice(chunk);
                return;
            };
            let is_cr = chunk[end] == b'\r';
            if self.partial.is_empty() {
                self.line(&chunk[..end], out);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&chunk[..end]);
                self.line(&line, out);
                // Give the buffer back so its capacity is reused for the next split line.
                line.clear();
                self.partial = line;
            }
            chunk = &chunk[end + 1..];
            if is_cr {
                match chunk.first() {
                    Some(b'\n') => chunk = &chunk[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
    }

    /// The stream ended: a last line without its line ending is taken as complete and a
    /// pending event is dispatched.
    ///
    /// The spec drops such an unterminated event; we dispatch it because real servers (and
    /// the Anthropic SDK's own test fixture) end with `data: {"type":"message_stop"}` and no
    /// blank line. A truncated connection is still caught: its half-written JSON fails to
    /// decode, and a missing terminal event is an error to the provider decoders.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line, out);
        }
        self.dispatch(out);
        self.after_cr = false;
    }

    fn line(&mut self, mut line: &[u8], out: &mut Vec<SseEvent>) {
        if self.at_start {
            self.at_start = false;
            if let Some(rest) = line.strip_prefix(b"\xEF\xBB\xBF") {
                line = rest;
            }
        }
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => self.event = String::from_utf8_lossy(value).into_owned(),
            // An id containing NUL is ignored, per the spec.
            b"id" if !value.contains(&0) => {
                self.id = Some(String::from_utf8_lossy(value).into_owned());
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = std::mem::take(&mut self.event);
        let retry = self.retry.take();
        if !self.has_data {
            return;
        }
        self.has_data = false;
        let data = match String::from_utf8(std::mem::take(&mut self.data)) {
            Ok(data) => data,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        out.push(SseEvent {
            event,
            data,
            id: self.id.clone(),
            retry,
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.push(chunk, &mut out);
        }
        parser.finish(&mut out);
        out
    }

    #[test]
    fn every_line_ending_is_accepted() {
        for ending in ["\n", "\r\n", "\r"] {
            let text = format!("event: a{ending}data: 1{ending}{ending}data: 2{ending}{ending}");
            let events = parse_all(&[text.as_bytes()]);
            assert_eq!(
                events,
                vec![SseEvent::new("a", "1"), SseEvent::new("", "2")],
                "{ending:?}"
            );
        }
    }

    #[test]
    fn crlf_split_between_chunks_is_one_line_ending() {
        let events = parse_all(&[b"data: 1\r", b"\n", b"\r", b"\ndata: 2\r\n\r\n"]);
        assert_eq!(events, vec![SseEvent::new("", "1"), SseEvent::new("", "2")]);
    }

    #[test]
    fn multi_line_data_comments_and_fields() {
        let events = parse_all(&[
            b":hello\nid: 7\nretry: 1500\nevent: x\ndata\ndata:a\ndata:  b\nfoo: bar\n\n",
        ]);
        assert_eq!(
            events,
            vec![SseEvent {
                event: "x".into(),
                data: "\na\n b".into(),
                id: Some("7".into()),
                retry: Some(1500),
            }]
        );
    }

    #[test]
    fn events_without_data_are_not_dispatched_and_reset_the_type() {
        let events = parse_all(&[b"event: a\n\ndata: x\n\n"]);
        assert_eq!(events, vec![SseEvent::new("", "x")]);
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let events = parse_all(&[b"\xEF\xBB", b"\xBFdata: x\n\n"]);
        assert_eq!(events, vec![SseEvent::new("", "x")]);
    }

    #[test]
    fn an_unterminated_last_event_is_dispatched_at_the_end() {
        let events = parse_all(&[b"data: 1\n\nevent: message_stop\ndata: {}"]);
        assert_eq!(
            events,
            vec![SseEvent::new("", "1"), SseEvent::new("message_stop", "{}")]
        );
    }

    #[test]
    fn utf8_split_inside_a_character_survives() {
        let text = "data: héllo 😀\n\n".as_bytes();
        for cut in 0..text.len() {
            let events = parse_all(&[&text[..cut], &text[cut..]]);
            assert_eq!(events, vec![SseEvent::new("", "héllo 😀")], "cut at {cut}");
        }
    }

    #[test]
    fn event_type_defaults_to_message() {
        assert_eq!(SseEvent::new("", "x").event_type(), "message");
        assert_eq!(SseEvent::new("ping", "x").event_type(), "ping");
    }
}
