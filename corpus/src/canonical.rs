//! The canonical JSON of a sample's content, as `serde_json` writes it, written fast: content ids
//! hash it, and every sample that enters or is made in a build is hashed once.
//!
//! `serde_json` escapes strings a byte at a time; here eight bytes are tested at once for the three
//! kinds that need escaping (`"`, `\` and control characters below 0x20), and clean runs are copied
//! whole. The bytes written are `serde_json`'s, escape for escape (the tests compare them on every
//! ASCII byte and on real text), so ids stay as they were.

use crate::sample::Content;

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` that is below 0x20, `"` or `\`. Bits above the lowest one may
/// be false (a borrow runs up), but the lowest one, when there is one, is exact.
#[inline]
fn escapes(w: u64) -> u64 {
    let zero = |x: u64| x.wrapping_sub(LO) & !x & HI;
    let below = w.wrapping_sub(LO * 0x20) & !w & HI;
    below | zero(w ^ (LO * b'"' as u64)) | zero(w ^ (LO * b'\\' as u64))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The escape `serde_json` writes for byte `b` (0: none; `u`: `\u00XX`).
#[inline]
fn escape(b: u8) -> u8 {
    match b {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        0x09 => b't',
        0x0a => b'n',
        0x0c => b'f',
        0x0d => b'r',
        0x00..=0x1f => b'u',
        _ => 0,
    }
}

/// Appends `s` as a JSON string.
fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.push(b'"');
    let (mut start, mut i) = (0, 0);
    let emit = |out: &mut Vec<u8>, at: usize, start: &mut usize| {
        let b = bytes[at];
        let e = escape(b);
        if e == 0 {
            return;
        }
        out.extend_from_slice(&bytes[*start..at]);
        if e == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        } else {
            out.push(b'\\');
            out.push(e);
        }
        *start = at + 1;
    };
    // Eight bytes at a time, jumping to the first that needs escaping.
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let m = escapes(u64::from_le_bytes(w));
        if m == 0 {
            i += 8;
        } else {
            let at = i + (m.trailing_zeros() / 8) as usize;
            emit(out, at, &mut start);
            i = at + 1;
        }
    }
    for at in i..bytes.len() {
        emit(out, at, &mut start);
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends the canonical JSON of `content` (what `serde_json::to_writer` writes for it).
pub(crate) fn write(out: &mut Vec<u8>, content: &Content) {
    match content {
        Content::Text { text } => {
            out.extend_from_slice(b"{\"text\":");
            string(out, text);
            out.push(b'}');
        }
        Content::Messages { messages } => {
            out.extend_from_slice(b"{\"messages\":[");
            for (k, m) in messages.iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"role\":");
                string(out, &m.role);
                out.extend_from_slice(b",\"content\":");
                string(out, &m.content);
                out.push(b'}');
            }
            out.extend_from_slice(b"]}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Message;

    fn same(c: &Content) {
        let mut ours = Vec::new();
        write(&mut ours, c);
        assert_eq!(
            String::from_utf8_lossy(&ours),
            serde_json::to_string(c).unwrap()
        );
    }

    #[test]
    fn writes_what_serde_json_writes() {
        // Every ASCII byte, alone and at each place of an 8-byte word.
        for b in 0u8..0x80 {
            let c = char::from(b);
            for pad in 0..10 {
                let text = format!("{}{c}{}", "a".repeat(pad), "z".repeat(9 - pad));
                same(&Content::Text { text });
            }
        }
        // Unicode, DEL, long clean runs and runs of escapes.
        for text in [
            "",
            "é ≠ 日本語 \u{7f} \u{2028}",
            "line one\nline two\r\n\ttabbed \"quoted\" back\\slash \u{1} \u{1f}",
            &"clean text without anything to escape, long enough for several words ".repeat(20),
            &"\n\"\\".repeat(50),
        ] {
            same(&Content::Text { text: text.into() });
        }
        same(&Content::Messages {
            messages: vec![
                Message {
                    role: "user".into(),
                    content: "a \"question\"\n".into(),
                },
                Message {
                    role: "assistant".into(),
                    content: String::new(),
                },
            ],
        });
        same(&Content::Messages { messages: vec![] });
    }

    #[test]
    fn writes_what_serde_json_writes_on_real_documents() {
        let spec = crate::TextSpec::default();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/corpus");
        let mut n = 0;
        for file in ["python-docs.jsonl.gz", "python-stdlib.jsonl.gz"] {
            for batch in crate::BatchReader::open(&root.join(file), &spec, false).unwrap() {
                let batch = batch.unwrap();
                for i in 0..batch.len() {
                    let text = batch.doc(i, &spec).unwrap().text.into_owned();
                    same(&Content::Text { text });
                    n += 1;
                }
            }
        }
        assert!(n > 150, "{n}");
    }
}
