//! Tests of [`super`], with values worked out by hand in the comments.

use super::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

macro_rules! assert_close {
    ($got:expr, $want:expr) => {
        assert!(
            close($got, $want),
            "{} = {}, want {}",
            stringify!($got),
            $got,
            $want
        )
    };
}

#[test]
fn paragraph_by_hand() {
    // Lines: L1 (44 chars), L2 (40), L3 (15), L4 (0), L5 (12); 5 newlines; 116 chars.
    let text = "The quick brown fox jumps over the lazy dog.\n\
                The dog sleeps... and the fox runs away!\n\
                - a bullet line\n\
                \n\
                # Heading #2\n";
    let s = compute(text);
    assert_eq!((s.chars, s.lines, s.nonblank_lines), (116, 5, 4));
    // Words: 9 + 8 ("sleeps...", "away!" stripped) + 3 ("-" is no word) + 2 ("#" no word, "#2"
    // is "2") = 22, of 35 + 29 + 11 + 8 = 83 characters.
    assert_eq!(s.words, 22);
    assert_close!(s.mean_word_length, 83.0 / 22.0);
    assert_close!(s.alpha_words_ratio, 21.0 / 22.0); // all but "2"
    assert_eq!(s.stop_words, 2); // "the", "and" ("The" is not "the")
    assert_close!(s.hash_to_word_ratio, 2.0 / 22.0);
    assert_close!(s.ellipsis_to_word_ratio, 1.0 / 22.0);
    assert_close!(s.symbol_to_word_ratio, 3.0 / 22.0);
    assert_close!(s.bullet_lines_ratio, 1.0 / 5.0);
    assert_close!(s.ellipsis_lines_ratio, 0.0);
    // FineWeb: 4 non-blank lines, L1 and L2 end in terminal marks, L3 and L5 are short.
    assert_close!(s.lines_ending_punct_ratio, 0.5);
    assert_close!(s.short_lines_ratio, 0.5);
    assert_close!(s.char_dup_ratio, 0.0);
    assert_close!(s.list_ratio, 5.0 / 22.0);
    // Repetition: nothing repeats; the 2-grams are all unique, so the top one is the first,
    // "The quick" (9 chars); 3-gram "The quick brown" (15), 4-gram +" fox" (19).
    assert_close!(s.dup_line_frac, 0.0);
    assert_close!(s.dup_para_frac, 0.0);
    assert_close!(s.top_2gram_char_frac, 9.0 / 116.0);
    assert_close!(s.top_3gram_char_frac, 15.0 / 116.0);
    assert_close!(s.top_4gram_char_frac, 19.0 / 116.0);
    assert_close!(s.dup_5gram_char_frac, 0.0);
    // C4: L1 and L2 are kept, one sentence each ("sleeps..." ends none); L3, L4, L5 do not end
    // in terminal punctuation; L4 has under 3 words.
    assert_eq!(
        (
            s.c4_sentences,
            s.lines_not_ending_terminal,
            s.c4_lines_too_short
        ),
        (2, 3, 1)
    );
    assert_eq!(
        (s.c4_lorem_ipsum, s.c4_curly_bracket, s.has_curly_bracket),
        (0, 0, 0)
    );
    assert_eq!((s.has_lorem_ipsum, s.lines_with_javascript), (0, 0));
    // Code signals: 111 characters in 5 lines, 83 alphanumeric of 116.
    assert_eq!(s.max_line_length, 44);
    assert_close!(s.mean_line_length, 111.0 / 5.0);
    assert_close!(s.alnum_frac, 83.0 / 116.0);
    assert_eq!(s.generated_marker, 0);
    assert_eq!(s.language, "eng");
    assert!(s.lang_score > 0.0 && s.lang_score <= 1.0);
}

#[test]
fn repetition_by_hand() {
    // 7 segments, 6 newlines, 48 chars.
    let text = "one two\nthree four\n\none two\nthree four\n\nfive six";
    let s = compute(text);
    assert_eq!(s.chars, 48);
    // re.split("\n+"): one two, three four, one two, three four, five six: 2 repeats, 17 chars.
    assert_close!(s.dup_line_frac, 2.0 / 5.0);
    assert_close!(s.dup_line_char_frac, 17.0 / 48.0);
    // Paragraphs: "one two\nthree four" twice, "five six": 1 repeat of 18 chars.
    assert_close!(s.dup_para_frac, 1.0 / 3.0);
    assert_close!(s.dup_para_char_frac, 18.0 / 48.0);
    // FineWeb: 17 repeated chars over 42 chars without newlines.
    assert_close!(s.char_dup_ratio, 17.0 / 42.0);
    // "one two", "two three", "three four" appear twice each; the first wins: 7 chars x 2.
    assert_close!(s.top_2gram_char_frac, 14.0 / 48.0);
    assert_close!(s.top_3gram_char_frac, 26.0 / 48.0);
    assert_close!(s.top_4gram_char_frac, 36.0 / 48.0);

    // 12 words "a b c d e f" twice, 23 chars. 5-grams: positions 0-5 are new, position 6
    // repeats position 0 (5 chars, no separators) and jumps to 11: 5. 6-grams: position 6
    // repeats: 6. 7-grams never repeat.
    let s = compute("a b c d e f\na b c d e f");
    assert_close!(s.dup_5gram_char_frac, 5.0 / 23.0);
    assert_close!(s.dup_6gram_char_frac, 6.0 / 23.0);
    assert_close!(s.dup_7gram_char_frac, 0.0);
    assert_close!(s.dup_line_frac, 0.5);
}

#[test]
fn empty_and_blank_texts_give_zeros() {
    for text in ["", "\n\n", "   "] {
        let s = compute(text);
        assert_eq!(
            (s.words, s.nonblank_lines, s.c4_sentences),
            (0, 0, 0),
            "{text:?}"
        );
        assert_close!(s.mean_word_length, 0.0);
        assert_close!(s.alpha_words_ratio, 0.0);
        assert_close!(s.list_ratio, 0.0);
        assert_eq!(s.language, "und");
        assert_close!(s.lang_score, 0.0);
    }
    let s = compute("");
    assert_eq!((s.chars, s.lines), (0, 0));
    // re.split("\n+", "\n\n") is ["", ""]: one repeat of 0 chars.
    assert_close!(compute("\n\n").dup_line_frac, 0.5);
    assert_eq!(compute("\n\n").lines, 2);
}

#[test]
fn crlf_lines_and_fineweb_raw_lines() {
    let s = compute("Hello world.\r\nSecond line here.\r\n");
    assert_eq!(s.lines, 2);
    assert_eq!(s.max_line_length, 17);
    // FineWeb splits at "\n" only: each line ends in "\r", which is no terminal mark.
    assert_close!(s.lines_ending_punct_ratio, 0.0);
    // C4 strips lines: both end in '.'.
    assert_eq!(s.lines_not_ending_terminal, 0);
}

#[test]
fn c4_and_code_markers() {
    let s = compute("Lorem ipsum dolor sit amet.\nSecond line with text.");
    assert_eq!((s.has_lorem_ipsum, s.c4_lorem_ipsum), (1, 1));
    let s = compute("fn main() {}\nlorem ipsum");
    // '{' and "lorem ipsum" on lines C4's line rules skip: no C4 drop, but the raw flags are set.
    assert_eq!((s.has_curly_bracket, s.has_lorem_ipsum), (1, 1));
    assert_eq!((s.c4_curly_bracket, s.c4_lorem_ipsum), (0, 0));
    let s = compute("// Code generated by protoc-gen-go. DO NOT EDIT.\npackage foo\n");
    assert_eq!(s.generated_marker, 1);
    let late = format!("{}# auto-generated\n", "x = 1\n".repeat(10));
    assert_eq!(compute(&late).generated_marker, 0);
    let s = compute("x = [a1, b2]  # note\n");
    // "x", "a1", "b2", "note": 4 words; "=", "#" are no words.
    assert_eq!(s.words, 4);
    assert_close!(s.hash_to_word_ratio, 0.25);
    assert_close!(s.alnum_frac, 9.0 / 21.0); // x, a1, b2, note of 21 chars
}

#[test]
fn columns_get_and_serde_agree() {
    let s = compute("The cat sat on the mat. It was happy with that.");
    let columns = Signals::columns();
    assert_eq!(columns.len(), 43);
    for (i, (name, kind)) in columns.iter().enumerate() {
        let v = s.get(name);
        assert_eq!(v, s.value_at(i), "{name}");
        let matches = matches!(
            (kind, v),
            (ColumnType::Int, Some(Value::Int(_)))
                | (ColumnType::Float, Some(Value::Float(_)))
                | (ColumnType::Str, Some(Value::Str(_)))
        );
        assert!(matches, "{name}");
    }
    assert_eq!(s.get("nope"), None);
    assert_eq!(s.value_at(columns.len()), None);
    let json = serde_json::to_value(&s).unwrap_or_default();
    let object = json.as_object().map(|o| o.len());
    assert_eq!(object, Some(columns.len()));
    let back: Signals = serde_json::from_value(json).unwrap_or_default();
    assert_eq!(back, s);
}

#[test]
fn computer_reuse_gives_the_same_signals() {
    let texts = ["a b c d e a b c d e", "Short.", "one two\n\none two\n"];
    let mut computer = SignalComputer::new();
    for _ in 0..2 {
        for text in texts {
            assert_eq!(computer.compute(text), compute(text));
        }
    }
}
