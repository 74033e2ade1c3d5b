//! C4's line rules (datatrove 0.10's `C4QualityFilter` with its defaults) followed line by line to
//! reach a document-level verdict, plus raw per-line counts.
//!
//! datatrove looks at each line (`splitlines`, stripped) in order: it skips lines with a word over
//! 1000 characters, removes Wikipedia citations (`[1]`, `[edit]`, `[citation needed]`), skips lines
//! that do not end in `.`, `?`, `!`, `"` or `'` (or end in `...`), skips lines of fewer than 3
//! words, drops the *document* if the line contains "lorem ipsum", skips lines containing
//! "javascript", drops the *document* if the line contains `{`, skips lines with a cookie or
//! terms-of-use phrase, and counts the sentences of the lines it keeps (drop if under 5). It then
//! rewrites the document to the kept lines; phiforge only takes the keep/drop decision.

use std::borrow::Cow;

use crate::text::{ascii_lower_into, char_len};

/// datatrove's `POLICY_SUBSTRINGS`.
const POLICY: [&str; 6] = [
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
];

/// Why C4's line loop would drop the whole document, if it would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Outcome {
    #[default]
    Continue,
    LoremIpsum,
    CurlyBracket,
}

/// The state of C4's line loop over one document.
#[derive(Debug, Default)]
pub(crate) struct C4 {
    pub outcome: Outcome,
    /// Sentences in the lines C4 keeps (until an outcome stops the loop).
    pub sentences: usize,
    /// Lines of fewer than 3 whitespace-separated words (all lines).
    pub too_short: usize,
    /// Lines that, stripped and without citations, do not end in C4's terminal punctuation.
    pub not_terminal: usize,
    /// Lines containing "javascript" (ASCII case-insensitive).
    pub javascript: usize,
    /// Lines containing "lorem ipsum" (ASCII case-insensitive).
    pub lorem_ipsum: usize,
    lower: String,
}

impl C4 {
    pub(crate) fn clear(&mut self) {
        let lower = std::mem::take(&mut self.lower);
        *self = C4 {
            lower,
            ..C4::default()
        };
    }

    /// Feeds one line (as `str.splitlines` gives it: no line break).
    pub(crate) fn line(&mut self, line: &str) {
        let line = line.trim();
        let (mut n_words, mut long_word) = (0usize, false);
        for word in line.split_whitespace() {
            n_words += 1;
            long_word |= word.len() > 1000 && char_len(word) > 1000;
        }
        if n_words < 3 {
            self.too_short += 1;
        }
        let line = remove_citations(line);
        let terminal = line.ends_with(['.', '?', '!', '"', '\'']) && !line.ends_with("...");
        if !terminal {
            self.not_terminal += 1;
        }
        let mut lower = std::mem::take(&mut self.lower);
        ascii_lower_into(&line, &mut lower);
        let javascript = lower.contains("javascript");
        let lorem = lower.contains("lorem ipsum");
        self.javascript += usize::from(javascript);
        self.lorem_ipsum += usize::from(lorem);
        let policy = POLICY.iter().any(|p| lower.contains(p));
        self.lower = lower;

        if self.outcome != Outcome::Continue || long_word || !terminal || n_words < 3 {
            return;
        }
        if lorem {
            self.outcome = Outcome::LoremIpsum;
        } else if javascript {
            // The line is skipped.
        } else if line.contains('{') {
            self.outcome = Outcome::CurlyBracket;
        } else if !policy {
            self.sentences += sentences(&line);
        }
    }
}

/// Removes datatrove's `CITATION_REGEX` (`\[\d*]|\[edit]|\[citation needed]`) matches.
fn remove_citations(line: &str) -> Cow<'_, str> {
    if !line.contains('[') {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let digits = after.find(|c: char| !c.is_numeric()).unwrap_or(after.len());
        let skip = if after[digits..].starts_with(']') {
            Some(digits + 1)
        } else if after.starts_with("edit]") {
            Some(5)
        } else if after.starts_with("citation needed]") {
            Some(16)
        } else {
            None
        };
        match skip {
            Some(len) => rest = &after[len..],
            None => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Abbreviations that end in a period without ending a sentence (a subset of spaCy's English
/// tokenizer exceptions), lowercase and without the final period.
const ABBREVIATIONS: [&str; 16] = [
    "mr", "mrs", "ms", "dr", "st", "vs", "jr", "sr", "prof", "inc", "ltd", "co", "no", "fig",
    "etc", "approx",
];

/// The sentences of a line C4 keeps (it ends in terminal punctuation), approximating spaCy's
/// sentencizer that datatrove uses: a sentence ends at a whitespace-separated token whose last
/// mark (before closing quotes and brackets) is `.`, `!` or `?`, unless the token ends in `..`
/// (an ellipsis), is a single letter and a period (`A.`), has another period inside (`e.g.`,
/// `U.S.`) or is a common abbreviation (`Mr.`, `etc.`); the line's last token always ends one.
fn sentences(line: &str) -> usize {
    let mut count = 0;
    let mut tokens = line.split_whitespace().peekable();
    while let Some(token) = tokens.next() {
        if tokens.peek().is_none() {
            count += 1;
            break;
        }
        let core = token.trim_end_matches(['"', '\'', ')', ']', '”', '’', '»']);
        let Some(last) = core.chars().last() else {
            continue;
        };
        if !matches!(last, '.' | '!' | '?') {
            continue;
        }
        if last == '.' {
            let stem = &core[..core.len() - 1];
            let is_abbreviation = stem.ends_with('.')
                || stem.contains('.')
                || (stem.chars().count() == 1 && stem.chars().all(char::is_alphabetic))
                || ABBREVIATIONS.iter().any(|a| stem.eq_ignore_ascii_case(a));
            if is_abbreviation {
                continue;
            }
        }
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> C4 {
        let mut c4 = C4::default();
        for line in text.lines() {
            c4.line(line);
        }
        c4
    }

    #[test]
    fn citations_are_removed_like_datatrove() {
        assert_eq!(remove_citations("Paris is big.[1][23]"), "Paris is big.");
        assert_eq!(remove_citations("a [edit] b [citation needed]."), "a  b .");
        assert_eq!(remove_citations("x[] [a] [12"), "x [a] [12");
    }

    #[test]
    fn sentences_follow_the_approximation() {
        assert_eq!(sentences("One. Two! Three?"), 3);
        assert_eq!(
            sentences("Mr. Smith met Dr. Who, e.g. at 3.5 p.m. today."),
            1
        );
        assert_eq!(sentences("He said \"stop.\" Then left."), 2);
        assert_eq!(sentences("Wait... then go."), 1);
    }

    #[test]
    fn line_loop_counts_and_verdicts() {
        let c4 = run(
            "Short line.\nThis line has enough words.\nNo terminal here\n\
                      Enable JavaScript to see this page.\nOne. Two. Three words here.",
        );
        assert_eq!(c4.outcome, Outcome::Continue);
        assert_eq!(c4.too_short, 1); // "Short line."
        assert_eq!(c4.not_terminal, 1);
        assert_eq!(c4.javascript, 1);
        // kept: "This line has enough words." (1) and "One. Two. Three words here." (3)
        assert_eq!(c4.sentences, 4);

        // "lorem ipsum" on a line that the earlier line rules skip does not drop the document.
        let c4 = run("lorem ipsum dolor\nLorem ipsum dolor sit amet.\nfn main() { x }.");
        assert_eq!(c4.outcome, Outcome::LoremIpsum);
        assert_eq!(c4.lorem_ipsum, 2);
        let c4 = run("let x = {a: 1}\nThe map {a: 1} is a dict.\nLorem ipsum dolor sit.");
        assert_eq!(c4.outcome, Outcome::CurlyBracket);
        // A line with javascript is skipped before the bracket rule sees it.
        let c4 = run("The javascript object {a: 1} is here.");
        assert_eq!(c4.outcome, Outcome::Continue);
        assert_eq!(c4.sentences, 0);
        // Policy lines are not counted.
        let c4 = run("This site uses cookies to work well.");
        assert_eq!(c4.sentences, 0);
    }
}
