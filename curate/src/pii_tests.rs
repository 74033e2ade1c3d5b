//! Tests of [`super`]: datatrove's own PII test inputs, and false-positive traps.

use super::*;

fn scrubber(settings: PiiSettings) -> Scrubber {
    Scrubber::new(settings).unwrap_or_else(|e| panic!("{e}"))
}

fn all() -> Scrubber {
    scrubber(PiiSettings::default())
}

/// datatrove's `tests/pipeline/filters/test_pii_removal.py` IP input.
const IP_INPUT: &str = "It correctly doesn't match this invalid ips:
999.999.999.999.
108.0.0.01
0.1.2.3
00.0000.00.00
192.168.l.1
912.456.123.123
.3.3.3.0
192.168.o.0

It doesn't match local IPs:

172.16.0.9
172.16.4.1
172.17.1.1
127.0.0.2
10.0.1.5
10.0.0.1
10.155.155.155
10.255.255.254
172.16.0.4
172.16.0.1
172.17.1.1
172.31.254.254
192.168.1.2
192.168.254.0

valid ips:
163.36.107.25
114.35.103.54
57.120.21.121
13.83.69.70
29.116.31.158
193.163.229.23
211.160.67.46
4.132.211.142
214.70.227.4
35.88.121.75";

#[test]
fn datatrove_ip_test_gives_datatroves_output() {
    let (out, counts) = all().scrub(IP_INPUT);
    // datatrove's expected output with its "IP" replacement: ".3.3.3.0" and each valid line.
    let (head, tail) = IP_INPUT.split_once("\nvalid ips:\n").unwrap_or_default();
    let tail: Vec<&str> = tail.lines().map(|_| IP_PLACEHOLDER).collect();
    let expected = format!(
        "{}\nvalid ips:\n{}",
        head.replace(".3.3.3.0", ".|||IP_ADDRESS|||"),
        tail.join("\n")
    );
    assert_eq!(out, expected);
    assert_eq!(
        counts,
        PiiCounts {
            email: 0,
            ip: 11,
            phone: 0
        }
    );
}

/// datatrove's e-mail input and expected output ("EMAIL" as the placeholder), one pair per line;
/// the one line where phiforge differs is marked.
const EMAILS: [(&str, &str); 40] = [
    ("email@example.com", "EMAIL"),
    ("firstname.lastname@example.com", "EMAIL"),
    ("email@subdomain.example.com", "EMAIL"),
    ("firstname+lastname@example.com", "EMAIL"),
    ("email@123.123.123.123", "EMAIL"),
    ("email@[123.123.123.123]", "EMAIL"),
    ("\"email\"@example.com", "\"email\"@example.com"),
    ("1234567890@example.com", "EMAIL"),
    ("email@example-one.com", "EMAIL"),
    ("_______@example.com", "EMAIL"),
    ("email@example.name", "EMAIL"),
    ("email@example.museum", "EMAIL"),
    ("email@example.co.jp", "EMAIL"),
    ("firstname-lastname@example.com", "EMAIL"),
    ("NAME@MYSITE.COM", "EMAIL"),
    ("much.”more\\ unusual”@example.com", "much.”more\\ unusual”@example.com"),
    ("very.unusual.”@”.unusual.com@example.com", "very.unusual.”@”.EMAIL"),
    (
        "very.”(),:;<>[]”.VERY.”very@\\ \"very”.unusual@strange.example.com",
        "very.”(),:;<>[]”.VERY.”very@\\ \"very”.EMAIL",
    ),
    ("plainaddress", "plainaddress"),
    ("#@%^%#$@#$@#.com", "#@%^%#$@#$@#.com"),
    ("@example.com", "@example.com"),
    ("Joe Smith <email@example.com>", "Joe Smith <EMAIL>"),
    ("email.example.com", "email.example.com"),
    ("email@example@example.com", "email@EMAIL"),
    (".email@example.com", ".EMAIL"),
    ("email.@example.com", "email.@example.com"),
    ("email..email@example.com", "email..EMAIL"),
    ("あいうえお@example.com", "あいうえお@example.com"),
    ("email@example.com (Joe Smith)", "EMAIL (Joe Smith)"),
    ("email@example", "email@example"),
    ("email@-example.com", "email@-example.com"),
    ("email@example.web", "EMAIL"),
    // datatrove: "EMAIL". phiforge: a domain whose last label has no letter and that is no IPv4
    // address is no domain (the guard that keeps `lodash@4.17.21`).
    ("email@111.222.333.44444", "email@111.222.333.44444"),
    ("email@example..com", "email@example..com"),
    ("Abc..123@example.com", "Abc..EMAIL"),
    ("”(),:;<>[\\]@example.com", "”(),:;<>[\\]@example.com"),
    ("just”not”right@example.com", "just”not”EMAIL"),
    ("this\\ is\"really\"not\\allowed@example.com", "this\\ is\"really\"not\\EMAIL"),
    ("Use: for testing against email regex", "Use: for testing against email regex"),
    (
        "ref: http://codefool.tumblr.com/post/15288874550/list-of-valid-and-invalid-email-addresses",
        "ref: http://codefool.tumblr.com/post/15288874550/list-of-valid-and-invalid-email-addresses",
    ),
];

#[test]
fn datatrove_email_test_gives_datatroves_output() {
    let s = all();
    for (input, expected) in EMAILS {
        let expected = expected.replace("EMAIL", EMAIL_PLACEHOLDER);
        let (out, counts) = s.scrub(input);
        assert_eq!(out, expected, "{input}");
        assert_eq!(counts.email, usize::from(expected != input), "{input}");
        assert_eq!(counts.ip + counts.phone, 0, "{input}");
    }
}

#[test]
fn false_positive_traps_stay() {
    let s = all();
    let kept = [
        "Python 3.11.2 was released; pip==23.3.1 and numpy>=1.26.4 too.",
        "Successfully installed foo-1.2.3.4 bar_2.3.4.5 requests==2.31.0.1",
        "pip install 'pkg~=1.2.3.4' or version 1.2.3.4 or v1.2.3.4",
        "Dates: 2024-03-15, 15.03.2024, 03/15/2024 at 10:30:00.",
        "class A:\n    @property\n    def x(self):\n        return a@b\n",
        "npm install lodash@4.17.21 and @types/node@20.11.5",
        "Chain 1.2.3.4.5 and 10.1.2.3.4; build 4.132.211.142.7",
        "Private: 10.0.0.1, 192.168.1.20, 127.0.0.1, 172.20.3.4; doc: 192.0.2.7, 2001:db8::1",
        "IPv6 locals ::1, fe80::1ff:fe23:4567:890a, fd12:3456:789a::1 and std::vector<int>",
        "ISBN 0-306-40615-2, isbn 555-123-4567, doi 10.1000/182; id 2125550134; ts 1700000000123",
        "MAC 00:1a:2b:3c:4d:5e, time 12:30:45, hash deadbeef",
        "Call ext. 555-0134 (seven digits).",
    ];
    for text in kept {
        let (out, counts) = s.scrub(text);
        assert_eq!(out, text);
        assert_eq!(counts.total(), 0, "{text}");
    }
}

#[test]
fn real_looking_pii_is_replaced_and_counted() {
    let text = "Write to jane.doe+news@mail.example.co.uk or j_smith@[192.0.2.1].\n\
                Servers: 8.8.8.8, 1.1.1.1:53 and [2606:4700:4700::1111]:443, also 2a00:1450:4001:82a::200e.\n\
                Phone (212) 555-0134, 212.555.0199, +1 800-555-0100 or +44 20 7946 0958.";
    let (out, counts) = all().scrub(text);
    assert_eq!(
        out,
        "Write to |||EMAIL_ADDRESS||| or |||EMAIL_ADDRESS|||.\n\
         Servers: |||IP_ADDRESS|||, |||IP_ADDRESS|||:53 and [|||IP_ADDRESS|||]:443, also |||IP_ADDRESS|||.\n\
         Phone |||PHONE_NUMBER|||, |||PHONE_NUMBER|||, |||PHONE_NUMBER||| or |||PHONE_NUMBER|||."
    );
    assert_eq!(
        counts,
        PiiCounts {
            email: 2,
            ip: 4,
            phone: 4
        }
    );
    assert_eq!(counts.total(), 10);
}

#[test]
fn settings_turn_each_kind_off_and_nothing_borrows() {
    let text = "a@example.com 8.8.8.8 212-555-0134";
    let only = |email, ip, phone| {
        let (out, counts) = scrubber(PiiSettings { email, ip, phone }).scrub(text);
        (out.into_owned(), counts.total())
    };
    assert_eq!(only(false, false, false), (text.to_string(), 0));
    assert_eq!(
        only(true, false, false).0,
        "|||EMAIL_ADDRESS||| 8.8.8.8 212-555-0134"
    );
    assert_eq!(
        only(false, true, false).0,
        "a@example.com |||IP_ADDRESS||| 212-555-0134"
    );
    assert_eq!(
        only(false, false, true).0,
        "a@example.com 8.8.8.8 |||PHONE_NUMBER|||"
    );
    let (out, _) = all().scrub("nothing to see here");
    assert!(matches!(out, Cow::Borrowed(_)));
}

#[test]
fn settings_serde_defaults_and_rejects_unknown_fields() {
    let parsed: PiiSettings =
        serde_json::from_str(r#"{"phone": false}"#).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        parsed,
        PiiSettings {
            email: true,
            ip: true,
            phone: false
        }
    );
    assert!(serde_json::from_str::<PiiSettings>(r#"{"emails": false}"#).is_err());
    let round: PiiSettings =
        serde_json::from_str(&serde_json::to_string(&parsed).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(round, parsed);
}

#[test]
fn global_address_rules_match_python() {
    // Values from Python's `ipaddress` (`is_global`).
    let v4 = [
        ("8.8.8.8", true),
        ("1.2.3.4", true),
        ("224.0.0.1", true),
        ("192.0.0.9", true),
        ("100.64.0.1", false),
        ("192.0.0.1", false),
        ("0.1.2.3", false),
        ("255.255.255.255", false),
        ("198.51.100.7", false),
        ("203.0.113.9", false),
        ("169.254.1.1", false),
        ("240.0.0.1", false),
    ];
    for (ip, global) in v4 {
        assert_eq!(ip.parse().map(is_global_v4), Ok(global), "{ip}");
    }
    let v6 = [
        ("2001:db8::1", false),
        ("fe80::1", false),
        ("::1", false),
        ("fd00::1", false),
        ("2606:4700:4700::1111", true),
        ("2001:4860:4860::8888", true),
        ("::ffff:8.8.8.8", true),
        ("::ffff:10.0.0.1", false),
    ];
    for (ip, global) in v6 {
        assert_eq!(ip.parse().map(is_global_v6), Ok(global), "{ip}");
    }
    assert!(
        "108.0.0.01".parse::<Ipv4Addr>().is_err(),
        "leading zeros are rejected"
    );
}
