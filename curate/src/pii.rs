//! PII scrubbing: e-mail addresses, IP addresses and phone numbers replaced with placeholders
//! and counted per kind.
//!
//! Placeholders are dolma's (the tokens OLMo's tokenizer reserves): [`EMAIL_PLACEHOLDER`]
//! `|||EMAIL_ADDRESS|||`, [`IP_PLACEHOLDER`] `|||IP_ADDRESS|||`, [`PHONE_PLACEHOLDER`]
//! `|||PHONE_NUMBER|||`. datatrove's `PIIFormatter` instead writes made-up addresses in turn
//! (`email@example.com`, `22.214.171.124`, ...), which read as real data; dolma's placeholders say
//! what was removed. The passes run in order e-mail, IP, phone on the text the previous pass left;
//! placeholders hold no `@`, digit or `:`, so a later pass never matches inside one.
//!
//! What is replaced:
//!
//! - **E-mail**: datatrove 0.10's regex (an RFC 5322-like local part, `@`, a dotted domain or a
//!   bracketed IPv4 literal). Unlike datatrove, a domain whose last label has no letter is not an
//!   address unless the domain is a dotted-quad IPv4 (`lodash@4.17.21` stays, `a@10.0.0.1` is
//!   replaced). A domain needs a dot, so `a@b` and a Python decorator `@property` stay.
//! - **IPv4**: datatrove's regex and its validator: only *global* addresses as Python 3.13's
//!   `ipaddress.is_global` defines them (not private, loopback, link-local, documentation,
//!   shared, reserved or broadcast; multicast counts as global there and here), and no octet with a
//!   leading zero (`108.0.0.01` stays). Unlike datatrove, an address must stand alone: not inside
//!   a longer dotted number (`1.2.3.4.5` stays, datatrove makes it `IP.5`), not touching letters,
//!   digits or `_`, and not after a version mark (`==1.2.3.4`, `foo-1.2.3.4`, `version 1.2.3.4`,
//!   as in pip output). A global address elsewhere in prose (`ran 1.2.3.4 today`) is replaced:
//!   text cannot tell it from a four-part version.
//! - **IPv6** (datatrove has none): what `std::net::Ipv6Addr` parses, with at least three
//!   non-empty groups, standing alone, and global by Python 3.13's rules (so `::1`, `fe80::1`,
//!   `2001:db8::1`, `fd00::1` stay). Times (`10:30:00`) and MAC addresses do not parse.
//! - **Phone numbers**: North American `(212) 555-0134`, `212-555-0134`, `212.555.0134`,
//!   `+1 212 555 0134`, and international `+44 20 7946 0958` (a `+`, then 8 to 15 digits in
//!   groups). The groups must be separated or the area code bracketed, so a bare run of digits
//!   (an id, a timestamp) is no phone number; dates, versions (`3.11.2`) and IPs do not have
//!   these shapes. As dolma does, a number with "isbn" or "doi" in the 50 bytes before it stays.
//!   Seven-digit local numbers (`555-0134`) are not matched.
//!
//! ```
//! use curate::{PiiSettings, Scrubber};
//!
//! let scrubber = Scrubber::new(PiiSettings { phone: false, ..PiiSettings::default() })?;
//! let (text, counts) = scrubber.scrub("Mail bob@mail.example.com from 8.8.8.8, call 212-555-0134.");
//! assert_eq!(text, "Mail |||EMAIL_ADDRESS||| from |||IP_ADDRESS|||, call 212-555-0134.");
//! assert_eq!((counts.email, counts.ip, counts.phone), (1, 1, 0));
//! # Ok::<(), curate::Error>(())
//! ```

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

use regex::{Match, Regex};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Replaces an e-mail address (dolma's placeholder).
pub const EMAIL_PLACEHOLDER: &str = "|||EMAIL_ADDRESS|||";
/// Replaces an IP address (dolma's placeholder).
pub const IP_PLACEHOLDER: &str = "|||IP_ADDRESS|||";
/// Replaces a phone number (dolma's placeholder).
pub const PHONE_PLACEHOLDER: &str = "|||PHONE_NUMBER|||";

/// Which kinds of PII to replace; each defaults to on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PiiSettings {
    /// Replace e-mail addresses.
    pub email: bool,
    /// Replace global IPv4 and IPv6 addresses.
    pub ip: bool,
    /// Replace phone numbers.
    pub phone: bool,
}

impl Default for PiiSettings {
    fn default() -> Self {
        PiiSettings {
            email: true,
            ip: true,
            phone: true,
        }
    }
}

/// How many of each kind one [`Scrubber::scrub`] replaced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PiiCounts {
    pub email: usize,
    pub ip: usize,
    pub phone: usize,
}

impl PiiCounts {
    /// All replacements.
    pub fn total(&self) -> usize {
        self.email + self.ip + self.phone
    }
}

/// datatrove 0.10's `PIIFormatter` e-mail regex.
const EMAIL: &str = concat!(
    r"\b[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@",
    r"(?:(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?",
    r"|\[(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}",
    r"(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?|[A-Za-z0-9-]*[A-Za-z0-9]:)\])",
);
/// datatrove 0.10's (and dolma's) IPv4 regex.
const IPV4: &str =
    r"(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)";
/// IPv6 candidates, checked by `Ipv6Addr`'s parser.
const IPV6: &str = r"(?i)(?:[0-9a-f]{0,4}:){2,7}(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9a-f]{1,4})?";
/// North American numbers, then international ones that start with `+`.
const PHONE: &str = concat!(
    r"(?:\+?1[ .-]?)?(?:\([0-9]{3}\)[ .-]?|[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}",
    r"|\+[0-9]{1,3}[ .-]?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{1,4}(?:[ .-][0-9]{1,4}){1,4}",
);

/// Replaces PII; compile once, use from many threads.
#[derive(Debug, Clone)]
pub struct Scrubber {
    settings: PiiSettings,
    email: Regex,
    ipv4: Regex,
    ipv6: Regex,
    phone: Regex,
}

impl Scrubber {
    /// Compiles the patterns.
    pub fn new(settings: PiiSettings) -> Result<Scrubber, Error> {
        let compile =
            |kind, pattern| Regex::new(pattern).map_err(|source| Error::Pattern { kind, source });
        Ok(Scrubber {
            settings,
            email: compile("email", EMAIL)?,
            ipv4: compile("ipv4", IPV4)?,
            ipv6: compile("ipv6", IPV6)?,
            phone: compile("phone", PHONE)?,
        })
    }

    /// The settings it was made with.
    pub fn settings(&self) -> PiiSettings {
        self.settings
    }

    /// `text` with its PII replaced (borrowed when nothing was), and the counts per kind.
    pub fn scrub<'a>(&self, text: &'a str) -> (Cow<'a, str>, PiiCounts) {
        let mut counts = PiiCounts::default();
        let mut out = Cow::Borrowed(text);
        if self.settings.email && out.contains('@') {
            let found = replace(
                &out,
                &self.email,
                EMAIL_PLACEHOLDER,
                is_email,
                &mut counts.email,
            );
            out = found.map_or(out, Cow::Owned);
        }
        if self.settings.ip && out.contains('.') {
            let found = replace(&out, &self.ipv4, IP_PLACEHOLDER, is_ipv4, &mut counts.ip);
            out = found.map_or(out, Cow::Owned);
        }
        if self.settings.ip && out.contains(':') {
            let found = replace(&out, &self.ipv6, IP_PLACEHOLDER, is_ipv6, &mut counts.ip);
            out = found.map_or(out, Cow::Owned);
        }
        if self.settings.phone && out.bytes().any(|b| b.is_ascii_digit()) {
            let found = replace(
                &out,
                &self.phone,
                PHONE_PLACEHOLDER,
                is_phone,
                &mut counts.phone,
            );
            out = found.map_or(out, Cow::Owned);
        }
        (out, counts)
    }
}

/// Replaces the matches `accept` takes; `None` when it took none.
fn replace(
    text: &str,
    re: &Regex,
    placeholder: &str,
    accept: fn(&str, &Match<'_>) -> bool,
    count: &mut usize,
) -> Option<String> {
    let mut out: Option<String> = None;
    let mut copied = 0;
    for m in re.find_iter(text) {
        if !accept(text, &m) {
            continue;
        }
        let buf = out.get_or_insert_with(|| String::with_capacity(text.len()));
        buf.push_str(&text[copied..m.start()]);
        buf.push_str(placeholder);
        copied = m.end();
        *count += 1;
    }
    let mut buf = out?;
    buf.push_str(&text[copied..]);
    Some(buf)
}

fn is_email(_text: &str, m: &Match<'_>) -> bool {
    let Some((_, domain)) = m.as_str().rsplit_once('@') else {
        return false;
    };
    if domain.starts_with('[') || domain.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    let tld = domain.rsplit('.').next().unwrap_or(domain);
    tld.bytes().any(|b| b.is_ascii_alphabetic())
}

fn char_before(text: &str, at: usize) -> Option<char> {
    text[..at].chars().next_back()
}

fn char_after(text: &str, at: usize) -> Option<char> {
    text[at..].chars().next()
}

/// Letters, digits and `_` glue a match to its neighbour; so does a `.` or `-` with a digit
/// behind it (a longer dotted or dashed number).
fn stands_alone(text: &str, m: &Match<'_>, extra: &[char]) -> bool {
    let glued = |c: char| c.is_alphanumeric() || c == '_' || extra.contains(&c);
    if char_before(text, m.start()).is_some_and(glued)
        || char_after(text, m.end()).is_some_and(glued)
    {
        return false;
    }
    let before = &text[..m.start()];
    let mut back = before.chars().rev();
    if matches!(back.next(), Some('.' | '-')) && back.next().is_some_and(|c| c.is_ascii_digit()) {
        return false;
    }
    let mut ahead = text[m.end()..].chars();
    !(matches!(ahead.next(), Some('.' | '-')) && ahead.next().is_some_and(|c| c.is_ascii_digit()))
}

/// A version mark right before `at`: `==`, `>=`, `<=`, `~=`, `!=`, a `-` or `_` after a letter
/// or digit (`foo-1.2.3.4`), or the word `version`, `ver` or `v` before it.
fn after_version_mark(text: &str, at: usize) -> bool {
    let before = &text[..at];
    if ["==", ">=", "<=", "~=", "!="]
        .iter()
        .any(|mark| before.ends_with(mark))
    {
        return true;
    }
    let mut back = before.chars().rev();
    if matches!(back.next(), Some('-' | '_')) && back.next().is_some_and(char::is_alphanumeric) {
        return true;
    }
    let word = before
        .trim_end()
        .rsplit(|c: char| c.is_whitespace())
        .next()
        .unwrap_or("")
        .trim_end_matches([':', '=']);
    ["version", "ver", "v"]
        .iter()
        .any(|w| word.eq_ignore_ascii_case(w))
}

fn is_ipv4(text: &str, m: &Match<'_>) -> bool {
    stands_alone(text, m, &[])
        && !after_version_mark(text, m.start())
        && m.as_str().parse::<Ipv4Addr>().is_ok_and(is_global_v4)
}

fn is_ipv6(text: &str, m: &Match<'_>) -> bool {
    let s = m.as_str();
    let groups = s.split(':').filter(|g| !g.is_empty()).count();
    groups >= 3 && stands_alone(text, m, &[':']) && s.parse::<Ipv6Addr>().is_ok_and(is_global_v6)
}

fn is_phone(text: &str, m: &Match<'_>) -> bool {
    let digits = m.as_str().bytes().filter(u8::is_ascii_digit).count();
    if !(8..=15).contains(&digits) || !stands_alone(text, m, &['+']) {
        return false;
    }
    let mut from = m.start().saturating_sub(50);
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    let context = text[from..m.start()].to_ascii_lowercase();
    !(context.contains("isbn") || context.contains("doi"))
}

fn in_v4(ip: u32, net: [u8; 4], prefix: u32) -> bool {
    let net = u32::from_be_bytes(net);
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    ip & mask == net & mask
}

/// Python 3.13's `IPv4Address.is_global`.
pub(crate) fn is_global_v4(ip: Ipv4Addr) -> bool {
    const PRIVATE: [([u8; 4], u32); 14] = [
        ([0, 0, 0, 0], 8),
        ([10, 0, 0, 0], 8),
        ([127, 0, 0, 0], 8),
        ([169, 254, 0, 0], 16),
        ([172, 16, 0, 0], 12),
        ([192, 0, 0, 0], 24),
        ([192, 0, 0, 170], 31),
        ([192, 0, 2, 0], 24),
        ([192, 168, 0, 0], 16),
        ([198, 18, 0, 0], 15),
        ([198, 51, 100, 0], 24),
        ([203, 0, 113, 0], 24),
        ([240, 0, 0, 0], 4),
        ([255, 255, 255, 255], 32),
    ];
    let v = u32::from(ip);
    let exception = in_v4(v, [192, 0, 0, 9], 32) || in_v4(v, [192, 0, 0, 10], 32);
    let private = PRIVATE.iter().any(|&(net, p)| in_v4(v, net, p)) && !exception;
    !private && !in_v4(v, [100, 64, 0, 0], 10)
}

fn in_v6(ip: u128, net: [u16; 8], prefix: u32) -> bool {
    let net = u128::from(Ipv6Addr::from(net));
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    ip & mask == net & mask
}

/// Python 3.13's `IPv6Address.is_global`: an IPv4-mapped address as its IPv4 address, else not
/// in its private networks.
pub(crate) fn is_global_v6(ip: Ipv6Addr) -> bool {
    const PRIVATE: [([u16; 8], u32); 11] = [
        ([0, 0, 0, 0, 0, 0, 0, 1], 128),
        ([0, 0, 0, 0, 0, 0, 0, 0], 128),
        ([0, 0, 0, 0, 0, 0xffff, 0, 0], 96),
        ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        ([0x100, 0, 0, 0, 0, 0, 0, 0], 64),
        ([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
        ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        ([0x2002, 0, 0, 0, 0, 0, 0, 0], 16),
        ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),
        ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
    ];
    const EXCEPTIONS: [([u16; 8], u32); 6] = [
        ([0x2001, 1, 0, 0, 0, 0, 0, 1], 128),
        ([0x2001, 1, 0, 0, 0, 0, 0, 2], 128),
        ([0x2001, 3, 0, 0, 0, 0, 0, 0], 32),
        ([0x2001, 4, 0x112, 0, 0, 0, 0, 0], 48),
        ([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28),
        ([0x2001, 0x30, 0, 0, 0, 0, 0, 0], 28),
    ];
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_global_v4(v4);
    }
    let v = u128::from(ip);
    let private = PRIVATE.iter().any(|&(n, p)| in_v6(v, n, p))
        && !EXCEPTIONS.iter().any(|&(n, p)| in_v6(v, n, p));
    !private
}

#[cfg(test)]
#[path = "pii_tests.rs"]
mod tests;
