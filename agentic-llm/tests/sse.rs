//! The SSE parser and the NDJSON splitter: any chunking of the same bytes yields the same
//! events, and generated streams written with any line ending parse back exactly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use agentic_llm::ndjson::NdjsonSplitter;
use agentic_llm::sse::{SseEvent, SseParser};
use proptest::prelude::*;

fn parse(chunks: &[&[u8]]) -> Vec<SseEvent> {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    for chunk in chunks {
        parser.push(chunk, &mut events);
    }
    parser.finish(&mut events);
    events
}

fn split<'a>(bytes: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut rest = bytes;
    for &size in sizes {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    pieces.push(rest);
    pieces
}

/// An event as a test writes it: type, data lines, id.
#[derive(Debug, Clone)]
struct Spec {
    event: String,
    data: Vec<String>,
    id: Option<String>,
    comment: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        "[a-z_]{0,12}",
        proptest::collection::vec("[ -~é中😀]{0,30}", 1..4),
        proptest::option::of("[a-z0-9]{1,8}"),
        any::<bool>(),
    )
        .prop_map(|(event, data, id, comment)| Spec {
            event,
            data,
            id,
            comment,
        })
}

fn write(specs: &[Spec], ending: &str) -> Vec<u8> {
    let mut out = String::new();
    for spec in specs {
        if spec.comment {
            out.push_str(&format!(": keep-alive{ending}"));
        }
        if !spec.event.is_empty() {
            out.push_str(&format!("event: {}{ending}", spec.event));
        }
        if let Some(id) = &spec.id {
            out.push_str(&format!("id: {id}{ending}"));
        }
        for line in &spec.data {
            out.push_str(&format!("data: {line}{ending}"));
        }
        out.push_str(ending);
    }
    out.into_bytes()
}

fn expected(specs: &[Spec]) -> Vec<SseEvent> {
    let mut id = None;
    specs
        .iter()
        .map(|spec| {
            if spec.id.is_some() {
                id.clone_from(&spec.id);
            }
            SseEvent {
                event: spec.event.clone(),
                data: spec.data.join("\n"),
                id: id.clone(),
                retry: None,
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn generated_streams_parse_back_with_any_line_ending_and_chunking(
        specs in proptest::collection::vec(spec(), 0..8),
        ending in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
        sizes in proptest::collection::vec(1usize..16, 0..64),
    ) {
        // A line of data that is only "" would write `data: ` + ending, fine for all endings.
        let bytes = write(&specs, ending);
        let chunks = split(&bytes, &sizes);
        prop_assert_eq!(parse(&chunks), expected(&specs));
    }

    /// On any bytes at all (garbage included), chunking never changes the result.
    #[test]
    fn chunking_never_changes_the_events(
        bytes in proptest::collection::vec(
            prop_oneof![Just(b'\n'), Just(b'\r'), Just(b':'), Just(b' '), Just(b'd'), Just(b'a'), Just(b't'), any::<u8>()],
            0..300,
        ),
        sizes in proptest::collection::vec(1usize..20, 0..40),
    ) {
        let whole = parse(&[&bytes]);
        prop_assert_eq!(parse(&split(&bytes, &sizes)), whole.clone());
        // Byte by byte too.
        let single: Vec<&[u8]> = bytes.chunks(1).collect();
        prop_assert_eq!(parse(&single), whole);
    }

    #[test]
    fn ndjson_chunking_never_changes_the_lines(
        bytes in proptest::collection::vec(
            prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'{'), Just(b'}'), any::<u8>()],
            0..300,
        ),
        sizes in proptest::collection::vec(1usize..20, 0..40),
    ) {
        let lines = |chunks: &[&[u8]]| {
            let mut splitter = NdjsonSplitter::new();
            let mut out = Vec::new();
            for chunk in chunks {
                splitter.push(chunk, &mut out);
            }
            splitter.finish(&mut out);
            out
        };
        prop_assert_eq!(lines(&split(&bytes, &sizes)), lines(&[&bytes]));
    }
}

#[test]
fn many_events_in_one_chunk() {
    let mut body = Vec::new();
    for i in 0..1000 {
        body.extend_from_slice(format!("event: e{i}\ndata: {{\"n\":{i}}}\n\n").as_bytes());
    }
    let events = parse(&[&body]);
    assert_eq!(events.len(), 1000);
    assert_eq!(events[999], SseEvent::new("e999", "{\"n\":999}"));
}
