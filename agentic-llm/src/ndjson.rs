//! A newline-delimited JSON splitter: bytes in (chunked any way), complete lines out.
//!
//! Pure and incremental like [`crate::sse`]: a line may be split across chunks at any byte
//! and a chunk may hold many lines; `\n` and `\r\n` both end a line; blank lines are
//! skipped. Decoding the JSON is left to the caller, which knows the line's type.
//!
//! ```
//! use agentic_llm::ndjson::NdjsonSplitter;
//!
//! let mut lines = Vec::new();
//! let mut splitter = NdjsonSplitter::new();
//! splitter.push(b"{\"a\":1}\n{\"a\"", &mut lines);
//! splitter.push(b":2}\r\n\n", &mut lines);
//! assert_eq!(lines, vec![b"{\"a\":1}".to_vec(), b"{\"a\":2}".to_vec()]);
//! ```

/// The incremental splitter. See the [module docs](self).
#[derive(Debug, Default)]
pub struct NdjsonSplitter {
    partial: Vec<u8>,
}

impl NdjsonSplitter {
    /// A splitter at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes; complete non-blank lines (without their line ending) are
    /// appended to `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<Vec<u8>>) {
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&chunk[..end]);
            Self::emit(line, out);
            chunk = &chunk[end + 1..];
        }
        self.partial.extend_from_slice(chunk);
    }

    /// The stream ended: a last line without a newline is complete too.
    pub fn finish(&mut self, out: &mut Vec<Vec<u8>>) {
        let line = std::mem::take(&mut self.partial);
        Self::emit(line, out);
    }

    fn emit(mut line: Vec<u8>, out: &mut Vec<Vec<u8>>) {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            out.push(line);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn every_split_gives_the_same_lines() {
        let text = b"{\"a\":1}\r\n\n  \n{\"b\":\"x\\ny\"}\n{\"c\":3}";
        let mut whole = Vec::new();
        let mut s = NdjsonSplitter::new();
        s.push(text, &mut whole);
        s.finish(&mut whole);
        assert_eq!(whole.len(), 3);
        for cut in 0..=text.len() {
            let mut lines = Vec::new();
            let mut s = NdjsonSplitter::new();
            s.push(&text[..cut], &mut lines);
            s.push(&text[cut..], &mut lines);
            s.finish(&mut lines);
            assert_eq!(lines, whole, "cut at {cut}");
        }
    }
}
