//! Text normalisation shared by benchmark items and samples.
//!
//! Version [`NORMALIZATION_VERSION`] (`phiforge-norm-1`) turns text into word tokens:
//!
//! 1. Unicode NFKC (`ﬁ` → `fi`, full-width `Ａ` → `A`, `½` → `1⁄2`);
//! 2. lowercase, one character at a time (`char::to_lowercase`, no locale, no context rules);
//! 3. every character that is not a letter, digit or combining mark (punctuation, symbols,
//!    underscores, controls, whitespace) separates tokens: `x_1=2.5` → `x 1 2 5`;
//! 4. characters of scripts written without spaces (Han, Hiragana, Katakana, Thai, Lao, Khmer,
//!    Myanmar) are one token each: `我喜欢` → `我 喜 欢`;
//! 5. runs of letters, digits and combining marks are tokens. Digits are kept as they are.
//!
//! The result is the same as normalising the whole text at once and then splitting, but it is
//! computed in one pass: ASCII bytes take a table lookup, and NFKC runs only on each non-ASCII run
//! (with the ASCII character before it where a combining mark may compose with it). Every token keeps the
//! byte span of the original text it came from, so a match can be shown in the sample.
//!
//! ```
//! assert_eq!(dedup::normalize::normalize("Janet’s ducks lay 16 eggs!"), "janet s ducks lay 16 eggs");
//! ```

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;
use xxhash_rust::xxh3::xxh3_64;

/// Name and version of the normalisation; written into every report.
pub const NORMALIZATION_VERSION: &str = "phiforge-norm-1";

/// Receives tokens as they are found: the normalised bytes and the original byte span.
pub trait TokenSink {
    fn token(&mut self, bytes: &[u8], start: usize, end: usize);
}

/// Token hashes (xxh3-64 of the normalised token) and original byte spans.
#[derive(Debug, Default, Clone)]
pub struct Tokens {
    pub hashes: Vec<u64>,
    pub spans: Vec<(usize, usize)>,
}

impl Tokens {
    pub fn len(&self) -> usize {
        self.hashes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
    pub fn clear(&mut self) {
        self.hashes.clear();
        self.spans.clear();
    }
}

impl TokenSink for Tokens {
    #[inline]
    fn token(&mut self, bytes: &[u8], start: usize, end: usize) {
        self.hashes.push(xxh3_64(bytes));
        self.spans.push((start, end));
    }
}

/// Collects the normalised tokens as strings.
#[derive(Debug, Default)]
pub struct TokenStrings(pub Vec<String>);

impl TokenSink for TokenStrings {
    fn token(&mut self, bytes: &[u8], _: usize, _: usize) {
        self.0.push(String::from_utf8_lossy(bytes).into_owned());
    }
}

/// The normalised text: tokens joined by single spaces.
pub fn normalize(text: &str) -> String {
    let mut t = TokenStrings::default();
    Tokenizer::default().run(text, &mut t);
    t.0.join(" ")
}

/// Normalises `text` into token hashes and spans (cleared first).
pub fn tokenize(text: &str, out: &mut Tokens) {
    out.clear();
    Tokenizer::default().run(text, out);
}

// ASCII classes: 0 separates, otherwise the lowercase byte of a word character.
const ASCII: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        t[b] = if c.is_ascii_digit() || c.is_ascii_lowercase() {
            c
        } else if c.is_ascii_uppercase() {
            c + 32
        } else {
            0
        };
        b += 1;
    }
    t
};

/// The tokenizer's scratch state (one token being built); reusable across texts.
#[derive(Default)]
pub struct Tokenizer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Tokenizer {
    #[inline]
    fn flush<S: TokenSink>(&mut self, sink: &mut S) {
        if !self.buf.is_empty() {
            sink.token(&self.buf, self.start, self.end);
            self.buf.clear();
        }
    }

    /// Feeds every token of `text` to `sink`.
    pub fn run<S: TokenSink>(&mut self, text: &str, sink: &mut S) {
        self.buf.clear();
        let bytes = text.as_bytes();
        let n = bytes.len();
        let mut i = 0;
        while i < n {
            let b = bytes[i];
            if b < 0x80 {
                if ASCII[b as usize] == 0 {
                    self.flush(sink);
                    i += 1;
                    continue;
                }
                // A run of ASCII word characters [i, j).
                let mut j = i + 1;
                let mut upper = b.is_ascii_uppercase();
                while j < n && bytes[j] < 0x80 && ASCII[bytes[j] as usize] != 0 {
                    upper |= bytes[j].is_ascii_uppercase();
                    j += 1;
                }
                if self.buf.is_empty() && !upper && (j == n || bytes[j] < 0x80) {
                    // A whole token, already normalised: straight from the text.
                    sink.token(&bytes[i..j], i, j);
                } else {
                    if self.buf.is_empty() {
                        self.start = i;
                    }
                    self.buf
                        .extend(bytes[i..j].iter().map(|&c| ASCII[c as usize]));
                    self.end = j;
                }
                i = j;
                continue;
            }
            // A non-ASCII run [i, j), normalised together with the ASCII letter before it.
            let mut j = i + 1;
            while j < n && bytes[j] >= 0x80 {
                j += 1;
            }
            // Only ASCII letters and `<`, `=`, `>` start canonical compositions (with a combining
            // mark: `e\u{301}` is `é`, `=\u{338}` is `≠`), so the run is normalised together with
            // such a character before it, and with nothing else.
            let mut unit_start = i;
            if i > 0 {
                let prev = bytes[i - 1];
                if prev.is_ascii_alphabetic() {
                    // The letter is the last byte of the current token: take it back.
                    self.buf.pop();
                    unit_start = i - 1;
                } else if matches!(prev, b'<' | b'=' | b'>') {
                    unit_start = i - 1;
                }
            }
            self.unit(&text[unit_start..j], unit_start, j, sink);
            i = j;
        }
        self.flush(sink);
    }

    fn unit<S: TokenSink>(&mut self, s: &str, start: usize, end: usize, sink: &mut S) {
        let mut utf8 = [0u8; 4];
        for c in s.nfkc() {
            for lc in c.to_lowercase() {
                match class(lc) {
                    Class::Word => {
                        if self.buf.is_empty() {
                            self.start = start;
                        }
                        self.buf
                            .extend_from_slice(lc.encode_utf8(&mut utf8).as_bytes());
                        self.end = end;
                    }
                    Class::Single => {
                        self.flush(sink);
                        sink.token(lc.encode_utf8(&mut utf8).as_bytes(), start, end);
                    }
                    Class::Separator => self.flush(sink),
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Class {
    Word,
    Single,
    Separator,
}

/// The class of a normalised, lowercased character.
fn class(c: char) -> Class {
    if is_unspaced_script(c) {
        Class::Single
    } else if c.is_alphanumeric() || is_combining_mark(c) {
        Class::Word
    } else {
        Class::Separator
    }
}

/// Scripts written without spaces between words: each character is a token.
fn is_unspaced_script(c: char) -> bool {
    matches!(c as u32,
        0x0E00..=0x0EFF      // Thai, Lao
        | 0x1000..=0x109F    // Myanmar
        | 0x1780..=0x17FF    // Khmer
        | 0x3040..=0x30FF    // Hiragana, Katakana
        | 0x31F0..=0x31FF    // Katakana phonetic extensions
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0x20000..=0x3134F) // CJK extensions B-G
        && (c.is_alphanumeric() || is_combining_mark(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, written the slow way: NFKC of the whole text, then per-character rules.
    fn reference(text: &str) -> String {
        let mut tokens: Vec<String> = Vec::new();
        let mut cur = String::new();
        for c in text.nfkc() {
            for lc in c.to_lowercase() {
                match class(lc) {
                    Class::Word => cur.push(lc),
                    Class::Single => {
                        if !cur.is_empty() {
                            tokens.push(std::mem::take(&mut cur));
                        }
                        tokens.push(lc.to_string());
                    }
                    Class::Separator => {
                        if !cur.is_empty() {
                            tokens.push(std::mem::take(&mut cur));
                        }
                    }
                }
            }
        }
        if !cur.is_empty() {
            tokens.push(cur);
        }
        tokens.join(" ")
    }

    #[test]
    fn golden() {
        let cases = [
            ("Hello, World!", "hello world"),
            ("  many   spaces\t\nand\r\nlines ", "many spaces and lines"),
            ("x_1=2.5; f(x)", "x 1 2 5 f x"),
            ("Janet’s ducks", "janet s ducks"),
            ("ﬁnance Ｆｕｌｌ", "finance full"),
            ("Café naïve", "café naïve"),
            ("Cafe\u{301}", "café"),
            ("ÉCOLE", "école"),
            ("我喜欢Rust语言", "我 喜 欢 rust 语 言"),
            ("カタカナ", "カ タ カ ナ"),
            ("한국어 텍스트", "한국어 텍스트"),
            ("ΣΊΣΥΦΟΣ", "σίσυφοσ"),
            ("½ + ²", "1 2 2"),
            ("<<16-3-4=9>>9", "16 3 4 9 9"),
            ("", ""),
            ("...", ""),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), want, "input {input:?}");
            assert_eq!(reference(input), want, "reference on {input:?}");
        }
    }

    #[test]
    fn one_pass_equals_whole_text_nfkc() {
        // Deterministic pseudo-random strings over characters that stress composition.
        let alphabet: Vec<char> =
            "aAeEzZ09 _.,'\u{301}\u{308}\u{327}\u{338}=<>\u{1100}\u{1161}\u{11a8}\
            ﬁ½Ｆ中文カ한ΣσİıßẞÅ\u{212b}\u{fb01}\u{2126}\u{3000}\t\n"
                .chars()
                .collect();
        let mut state: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..5000 {
            let len = (state % 12) as usize + 1;
            let mut s = String::new();
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                s.push(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            assert_eq!(normalize(&s), reference(&s), "input {s:?}");
        }
    }

    #[test]
    fn spans_point_at_the_original_text() {
        let text = "The Café's ½ cup";
        let mut t = Tokens::default();
        tokenize(text, &mut t);
        let words: Vec<&str> = t.spans.iter().map(|&(s, e)| &text[s..e]).collect();
        assert_eq!(words, ["The", "Café", "s", "½", "½", "cup"]);
        assert_eq!(t.hashes[0], xxh3_64(b"the"));
    }
}
