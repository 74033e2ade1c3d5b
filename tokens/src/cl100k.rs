//! cl100k_base without special tokens, written for speed, with tiktoken's ids.
//!
//! tiktoken splits text with one regular expression (run by `fancy-regex`, a backtracking engine,
//! because of its `\s+(?!\S)` look-ahead) and then looks each piece up whole or merges its bytes
//! pair by pair. Nearly all the time goes to the regular expression. Here the expression
//!
//! ```text
//! (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//! ```
//!
//! is a hand-written scanner over a table of character classes (letter, number, whitespace,
//! line break, other), with the alternatives tried in the regex's order and its backtracking
//! worked out by hand (see [`Cl100k::piece_end`]). The classes are read from `regex-syntax`'s own
//! Unicode tables (`\p{L}`, `\p{N}`, `\s`, and `(?i)` case folding for the contractions), the
//! tables the regex engines under tiktoken-rs use, so the pieces are the same by construction and
//! not by a copy of the tables. The byte-pair merge is tiktoken's own algorithm (lowest rank
//! first), so the ids are the same; a piece that is one token (most are) is one hash look-up.
//!
//! ```
//! let enc = tokens::cl100k::Cl100k::get();
//! assert_eq!(enc.encode("hello world"), [15339, 1917]);
//! ```

use std::sync::LazyLock;

use rustc_hash::FxHashMap;

type Rank = u32;

// Character classes of the pre-tokenizer.
const OTHER: u8 = 0;
const LETTER: u8 = 1;
const NUMBER: u8 = 2;
/// Whitespace other than `\r` and `\n`.
const SPACE: u8 = 3;
/// `\r` or `\n`.
const BREAK: u8 = 4;

/// cl100k_base's encoder; one per process ([`Cl100k::get`]), shared by every thread.
pub struct Cl100k {
    /// Token bytes to rank (the rank is the id).
    ranks: FxHashMap<&'static [u8], Rank>,
    /// Bytes of each ordinary token, by id.
    tokens: Vec<&'static [u8]>,
    /// The class of every Unicode scalar value (0..=0x10FFFF).
    class: Box<[u8]>,
    /// Characters that `(?i)` matches for the letters of the contractions, by `[s t m d r e v l]`.
    fold: [Vec<char>; 8],
}

static CL100K: LazyLock<Cl100k> = LazyLock::new(Cl100k::build);

/// The class ranges of one regex character class, from `regex-syntax`.
fn class_ranges(pattern: &str) -> Vec<(char, char)> {
    use regex_syntax::hir::{Class, HirKind};
    let hir = regex_syntax::Parser::new()
        .parse(pattern)
        .expect("a valid class pattern");
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => {
            c.ranges().iter().map(|r| (r.start(), r.end())).collect()
        }
        HirKind::Literal(lit) => {
            let c = std::str::from_utf8(&lit.0)
                .ok()
                .and_then(|s| s.chars().next())
                .expect("a one-character literal");
            vec![(c, c)]
        }
        other => panic!("{pattern}: not a class: {other:?}"),
    }
}

impl Cl100k {
    /// The process's encoder (built on first use, about 50 ms).
    pub fn get() -> &'static Cl100k {
        &CL100K
    }

    fn build() -> Cl100k {
        // The ranks: bpe-openai ships cl100k_base's token bytes in id order.
        let bpe = &bpe_openai::cl100k_base().bpe;
        let tokens: Vec<&'static [u8]> = (0..bpe.num_tokens() as u32)
            .map(|id| bpe.token_bytes(id))
            .collect();
        let mut ranks = FxHashMap::default();
        ranks.reserve(tokens.len());
        for (id, bytes) in tokens.iter().enumerate() {
            ranks.insert(*bytes, id as Rank);
        }

        let mut class = vec![OTHER; 0x11_0000].into_boxed_slice();
        for (pattern, k) in [(r"\p{L}", LETTER), (r"\p{N}", NUMBER), (r"\s", SPACE)] {
            for (a, b) in class_ranges(pattern) {
                class[a as usize..=b as usize].fill(k);
            }
        }
        class[b'\r' as usize] = BREAK;
        class[b'\n' as usize] = BREAK;

        let fold = ["s", "t", "m", "d", "r", "e", "v", "l"].map(|c| {
            class_ranges(&format!("(?i){c}"))
                .into_iter()
                .flat_map(|(a, b)| (a..=b).collect::<Vec<_>>())
                .collect()
        });
        Cl100k {
            ranks,
            tokens,
            class,
            fold,
        }
    }

    /// Number of ordinary tokens (100,256; ids 0..100,256).
    pub fn ordinary_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// The bytes of an ordinary token.
    pub fn token_bytes(&self, id: u32) -> Option<&'static [u8]> {
        self.tokens.get(id as usize).copied()
    }

    /// The ids of `text`, special tokens taken as text (tiktoken's `encode_ordinary`).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_into(text, &mut out);
        out
    }

    /// Appends the ids of `text` to `out`.
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        let s = text.as_bytes();
        let mut i = 0;
        while i < s.len() {
            let end = self.piece_end(s, i);
            self.encode_piece(&s[i..end], out);
            i = end;
        }
    }

    /// The pieces the pre-tokenizer cuts `text` into (the regex's matches).
    pub fn pieces<'a>(&'a self, text: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let s = text.as_bytes();
        let mut i = 0;
        std::iter::from_fn(move || {
            (i < s.len()).then(|| {
                let end = self.piece_end(s, i);
                let piece = &text[i..end];
                i = end;
                piece
            })
        })
    }

    #[inline]
    fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        match self.ranks.get(piece) {
            Some(&id) => out.push(id),
            None => self.merge(piece, out),
        }
    }

    /// The character at `i` (a char boundary of valid UTF-8): its class and its length in bytes.
    #[inline(always)]
    fn at(&self, s: &[u8], i: usize) -> (u8, usize) {
        let b0 = s[i];
        if b0 < 0x80 {
            return (ASCII[b0 as usize], 1);
        }
        let (c, n) = decode(s, i);
        (self.class[c as usize], n)
    }

    #[inline(always)]
    fn class_at(&self, s: &[u8], i: usize) -> u8 {
        if i < s.len() {
            self.at(s, i).0
        } else {
            u8::MAX
        }
    }

    /// The end of the run of `k`-class characters starting at `i`.
    #[inline(always)]
    fn run_end(&self, s: &[u8], mut i: usize, k: u8) -> usize {
        while i < s.len() {
            let (c, n) = self.at(s, i);
            if c != k {
                break;
            }
            i += n;
        }
        i
    }

    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)` after the apostrophe at `i - 1`: the match's end.
    fn contraction(&self, s: &[u8], i: usize) -> Option<usize> {
        let ch = |at: usize| (at < s.len()).then(|| decode(s, at));
        let (c1, n1) = ch(i)?;
        let is = |c: char, k: usize| self.fold[k].contains(&c);
        if is(c1, 0) || is(c1, 1) || is(c1, 2) || is(c1, 3) {
            return Some(i + n1);
        }
        let (c2, n2) = ch(i + n1)?;
        let pair = (is(c1, 4) && is(c2, 5)) || (is(c1, 6) && is(c2, 5)) || (is(c1, 7) && is(c2, 7));
        pair.then_some(i + n1 + n2)
    }

    /// Where the regex's match starting at `i` ends (the alternatives in order, leftmost-first,
    /// with the backtracking a regex engine would do).
    #[inline]
    fn piece_end(&self, s: &[u8], i: usize) -> usize {
        // 1. Contractions.
        if s[i] == b'\'' {
            if let Some(end) = self.contraction(s, i + 1) {
                return end;
            }
        }
        let (k0, n0) = self.at(s, i);
        match k0 {
            // 2. `\p{L}+` with no leading character.
            LETTER => return self.run_end(s, i + n0, LETTER),
            // 3. `\p{N}{1,3}` (2 cannot match: its optional character is not a number, and a
            //    number is not a letter).
            NUMBER => {
                let mut j = i + n0;
                for _ in 0..2 {
                    if j < s.len() {
                        let (k, n) = self.at(s, j);
                        if k == NUMBER {
                            j += n;
                            continue;
                        }
                    }
                    break;
                }
                return j;
            }
            _ => {}
        }
        // 2. `[^\r\n\p{L}\p{N}]\p{L}+`: one other or whitespace character, then letters.
        if k0 != BREAK && self.class_at(s, i + n0) == LETTER {
            return self.run_end(s, i + n0, LETTER);
        }
        // 4. ` ?[^\s\p{L}\p{N}]+[\r\n]*`.
        let j = if s[i] == b' ' { i + 1 } else { i };
        if self.class_at(s, j) == OTHER {
            let mut j = self.run_end(s, j, OTHER);
            while j < s.len() && (s[j] == b'\r' || s[j] == b'\n') {
                j += 1;
            }
            return j;
        }
        // What is left starts with whitespace (an other character always matched 4).
        debug_assert!(k0 == SPACE || k0 == BREAK);
        let mut end = i;
        let mut last_break = None;
        let mut last_start = i;
        while end < s.len() {
            let (k, n) = self.at(s, end);
            if k != SPACE && k != BREAK {
                break;
            }
            if k == BREAK {
                last_break = Some(end);
            }
            last_start = end;
            end += n;
        }
        // 5. `\s*[\r\n]+`: `\s*` gives back characters until a line break follows; the greedy
        //    `[\r\n]+` then stops after it, since no line break comes later in the run.
        if let Some(b) = last_break {
            return b + 1;
        }
        // 6. `\s+(?!\S)`: the whole run at the end of the text, else all of it but its last
        //    character, when that leaves one.
        if end == s.len() {
            return end;
        }
        if last_start > i {
            return last_start;
        }
        // 7. `\s+`.
        end
    }

    /// tiktoken's byte-pair merge of a piece that is not one token: the adjacent pair of lowest
    /// rank merges first (its `_byte_pair_merge`, kept as it is so that the ids are the same).
    fn merge(&self, piece: &[u8], out: &mut Vec<u32>) {
        if piece.len() == 1 {
            out.push(self.ranks[piece]);
            return;
        }
        let rank = |a: usize, b: usize| *self.ranks.get(&piece[a..b]).unwrap_or(&Rank::MAX);
        // (start, rank of the pair that starts here)
        let mut parts: Vec<(usize, Rank)> = Vec::with_capacity(piece.len() + 1);
        let mut min = (Rank::MAX, usize::MAX);
        for i in 0..piece.len() - 1 {
            let r = rank(i, i + 2);
            if r < min.0 {
                min = (r, i);
            }
            parts.push((i, r));
        }
        parts.push((piece.len() - 1, Rank::MAX));
        parts.push((piece.len(), Rank::MAX));
        let get = |parts: &Vec<(usize, Rank)>, i: usize| {
            if i + 3 < parts.len() {
                rank(parts[i].0, parts[i + 3].0)
            } else {
                Rank::MAX
            }
        };
        while min.0 != Rank::MAX {
            let i = min.1;
            if i > 0 {
                parts[i - 1].1 = get(&parts, i - 1);
            }
            parts[i].1 = get(&parts, i);
            parts.remove(i + 1);
            min = (Rank::MAX, usize::MAX);
            for (i, &(_, r)) in parts[..parts.len() - 1].iter().enumerate() {
                if r < min.0 {
                    min = (r, i);
                }
            }
        }
        for w in parts.windows(2) {
            out.push(self.ranks[&piece[w[0].0..w[1].0]]);
        }
    }
}

/// The classes of ASCII (the same as the full table's; a test checks).
static ASCII: [u8; 128] = {
    let mut t = [OTHER; 128];
    let mut c = 0;
    while c < 128 {
        let b = c as u8;
        t[c] = if b.is_ascii_alphabetic() {
            LETTER
        } else if b.is_ascii_digit() {
            NUMBER
        } else if b == b'\r' || b == b'\n' {
            BREAK
        } else if matches!(b, b' ' | b'\t' | 0x0B | 0x0C) {
            SPACE
        } else {
            OTHER
        };
        c += 1;
    }
    t
};

/// Decodes the character at `i` of valid UTF-8.
#[inline(always)]
fn decode(s: &[u8], i: usize) -> (char, usize) {
    let b0 = s[i] as u32;
    let (c, n) = if b0 < 0x80 {
        (b0, 1)
    } else if b0 < 0xE0 {
        (((b0 & 0x1F) << 6) | (s[i + 1] as u32 & 0x3F), 2)
    } else if b0 < 0xF0 {
        (
            ((b0 & 0x0F) << 12) | ((s[i + 1] as u32 & 0x3F) << 6) | (s[i + 2] as u32 & 0x3F),
            3,
        )
    } else {
        (
            ((b0 & 0x07) << 18)
                | ((s[i + 1] as u32 & 0x3F) << 12)
                | ((s[i + 2] as u32 & 0x3F) << 6)
                | (s[i + 3] as u32 & 0x3F),
            4,
        )
    };
    // Valid UTF-8 (the input is a `str`) decodes to a scalar value.
    (char::from_u32(c).unwrap_or('\u{FFFD}'), n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_table_agrees_with_the_unicode_one() {
        let enc = Cl100k::get();
        for (c, k) in ASCII.iter().enumerate() {
            assert_eq!(*k, enc.class[c], "{c:#x}");
        }
    }

    /// A small deterministic generator (xorshift), so the test needs no crate.
    fn rng(mut x: u64) -> impl FnMut() -> u64 {
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// Characters where the regex's alternatives meet: each class, the contractions' letters in
    /// both cases and the long s that `(?i)s` matches, whitespace of every kind (CR, LF, tab,
    /// vertical tab, form feed, NEL, no-break and ideographic spaces), non-ASCII letters and
    /// numbers, combining marks, emoji.
    #[rustfmt::skip]
    const TRICKY: &[&str] = &[
        " ", " ", "  ", "\t", "\n", "\r", "\r\n", "\u{b}", "\u{c}", "\u{85}", "\u{a0}", "\u{3000}",
        "\u{2028}", "\u{200b}", "a", "Z", "é", "ſ", "s", "S", "t", "T", "re", "RE", "vE", "ll", "Ll",
        "m", "d", "D", "'", "'", "’", "1", "12345", "²", "٣", "Ⅻ", ".", "!", "...", "_", "-", "\"",
        "\u{301}", "日本", "🚀", "}\n", "x", "\u{feff}", "\u{1d400}",
    ];

    #[test]
    fn same_ids_as_tiktoken_on_random_tricky_text() {
        let tiktoken = tiktoken_rs::cl100k_base().unwrap();
        let enc = Cl100k::get();
        let mut next = rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let n = (next() % 24) as usize;
            let text: String = (0..n)
                .map(|_| TRICKY[(next() % TRICKY.len() as u64) as usize])
                .collect();
            assert_eq!(
                enc.encode(&text),
                tiktoken.encode_ordinary(&text),
                "{text:?}"
            );
        }
    }

    #[test]
    fn same_ids_as_tiktoken_on_unusual_text() {
        let tiktoken = tiktoken_rs::cl100k_base().unwrap();
        let enc = Cl100k::get();
        let long_spaces = format!("a{}b{}", " ".repeat(1000), "\t \n".repeat(300));
        let digits = "0123456789".repeat(50);
        let long_word = "x".repeat(5000);
        let long_punct = "=-".repeat(2000) + "\n\n\r\n";
        for text in [
            "",
            " ",
            "\n",
            "  \n\n\t x",
            "日本語のテキスト 🚀🚀",
            "a\u{301}e\u{301} \u{301}\u{301}x",
            "'s 've 're 'RE 'Ll 'ſ 'sam 'x '' '",
            "I'm you'LL they'Ve it's",
            "line\r\nnext\r\n\r\n  indented\n\tTab\r",
            "trailing spaces   ",
            "x \u{a0}y\u{3000}z\u{85}w",
            "<|endoftext|> is text here",
            "1,234,567.89 and ١٢٣٤ and ½²³",
            "    def f(x):\n        return x  # comment\n\n\n",
            &long_spaces,
            &digits,
            &long_word,
            &long_punct,
        ] {
            assert_eq!(enc.encode(text), tiktoken.encode_ordinary(text), "{text:?}");
        }
    }

    #[test]
    fn case_folds_include_the_long_s() {
        let enc = Cl100k::get();
        assert!(enc.fold[0].contains(&'ſ'));
        assert!(enc.fold[0].contains(&'S'));
    }
}
