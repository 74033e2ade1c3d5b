use super::*;
use crate::signals::compute;
use serde_json::json;
use std::collections::HashMap;

fn strs(v: &[&str]) -> Values {
    Values::Str(v.iter().map(|s| Some(s.to_string())).collect())
}

fn batch() -> RowBatch {
    let prose = "The history of the city goes back to the Roman period, when a small fort was \
                 built on the river. Over the following centuries it grew into a market town \
                 with a church, a bridge and a busy harbour. Merchants came from the north and \
                 the south to trade wool, grain and salt.";
    let repeated = "Buy now!\n".repeat(40);
    let texts = [prose, "ok", repeated.as_str()];
    let rows = RowBatch::new(texts.iter().map(|t| compute(t)).collect());
    // `bytes` is any number here: the filter reads it, nothing checks it.
    rows.with_field("id", strs(&["a", "b", "c"]))
        .and_then(|r| r.with_field("bytes", Values::Int(vec![Some(300), Some(2), Some(36)])))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn where_clauses_keep_and_drop() {
    let rows = batch();
    let keep = |sql: &str| {
        Filter::new(sql)
            .and_then(|f| f.keep(&rows))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    };
    assert_eq!(keep("words >= 20 AND words < 70"), [true, false, false]);
    assert_eq!(
        keep("words < 70 AND (words >= 20 OR id = 'b')"),
        [true, true, false]
    );
    assert_eq!(keep("NOT (id IN ('a', 'c'))"), [false, true, false]);
    assert_eq!(
        keep("language = 'eng' AND bytes > 100"),
        [true, false, false]
    );
    assert_eq!(
        keep("dup_line_frac > 0.5 AND mean_word_length BETWEEN 2 AND 6"),
        [false, false, true]
    );
    // A field the batch leaves NULL: the condition does not hold.
    assert_eq!(keep("tokens > 0 OR class = 'web'"), [false, false, false]);
    assert_eq!(keep("tokens IS NULL"), [true, true, true]);
}

#[test]
fn a_where_clause_is_checked_when_made() {
    match Filter::new("words >= 50 AND symbol_ratio < 0.1") {
        Err(Error::UnknownColumn { column, condition }) => {
            assert_eq!(column, "symbol_ratio");
            assert_eq!(condition, "words >= 50 AND symbol_ratio < 0.1");
        }
        other => panic!("{other:?}"),
    }
    let message = |sql: &str| match Filter::new(sql) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{sql} was accepted"),
    };
    assert!(message("lang = 'en'").contains("unknown column `lang`"));
    assert!(message("words + 1").contains("not a boolean condition"));
    assert!(message("words >= ").starts_with("SQL `words >= `"));
    assert!(
        message("words = 'many'").starts_with("SQL"),
        "{}",
        message("words = 'many'")
    );
    assert!(matches!(
        Filter::preset("dolma"),
        Err(Error::UnknownPreset { .. })
    ));
}

#[test]
fn declared_fields_can_be_read() {
    let rows = batch()
        .with_field("source", strs(&["docs", "docs", "web"]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        Filter::new("source = 'docs'"),
        Err(Error::UnknownColumn { .. })
    ));
    let f = Filter::with_fields(&[("source", ColumnType::Str)])
        .and_then(|f| f.and_where("source = 'docs' AND words > 1"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(f.keep(&rows).ok(), Some(vec![true, false, false]));
    assert!(matches!(
        batch().with_field("words", Values::Int(vec![Some(1); 3])),
        Err(Error::FieldClash { .. })
    ));
    assert!(matches!(
        batch().with_field("source", strs(&["x"])),
        Err(Error::FieldLength {
            values: 1,
            rows: 3,
            ..
        })
    ));
}

#[test]
fn a_preset_names_the_first_failing_rule() {
    let rows = batch();
    let gopher = Filter::preset("gopher").unwrap_or_else(|e| panic!("{e}"));
    let decided = gopher.decide(&rows).unwrap_or_else(|e| panic!("{e}"));
    // "ok" fails gopher_short_doc and more: the first in datatrove's order is named. The repeated
    // line fails the repetition rules, which run before quality.
    assert_eq!(
        decided,
        [None, Some("gopher_short_doc"), Some("dup_line_frac")]
    );
    // A where clause after a preset runs last.
    let both = Filter::preset("fineweb")
        .and_then(|f| f.and_where("id <> 'a'"))
        .unwrap_or_else(|e| panic!("{e}"));
    let decided = both.decide(&rows).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(decided[0], Some(WHERE_REASON));
    assert_eq!(both.rules().last(), Some((WHERE_REASON, "id <> 'a'")));
    // No rules, or no rows.
    let none = Filter::with_fields(&[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(none.keep(&rows).ok(), Some(vec![true; 3]));
    assert_eq!(gopher.keep(&RowBatch::default()).ok(), Some(vec![]));
}

fn records() -> Vec<serde_json::Map<String, serde_json::Value>> {
    [
        json!({"id": "a", "class": "web", "tokens": 10, "score": 0.5, "ok": true, "messages": [{"role": "user"}]}),
        json!({"id": "b", "class": "code", "tokens": 7, "score": 1}),
        json!({"id": "c, \"quoted\"", "class": "web", "tokens": 5, "score": null, "ok": false}),
    ]
    .into_iter()
    .filter_map(|v| v.as_object().cloned())
    .collect()
}

#[test]
fn queries_group_and_aggregate() {
    let table = Table::from_records(&records()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(table.height(), 3);
    let mut names = table.names();
    names.sort();
    assert_eq!(names, ["class", "id", "messages", "ok", "score", "tokens"]);
    let out = query(
        &[("samples", &table)],
        "SELECT class, count(*) AS n, sum(tokens) AS tokens FROM samples GROUP BY class ORDER BY class",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let columns = out.columns().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(columns[0], ("class".into(), strs(&["code", "web"])));
    assert_eq!(
        columns[1],
        ("n".into(), Values::Int(vec![Some(1), Some(2)]))
    );
    assert_eq!(
        columns[2],
        ("tokens".into(), Values::Int(vec![Some(7), Some(15)]))
    );
    let shown = out.to_string();
    assert!(shown.contains("class") && shown.contains("web"), "{shown}");

    let cols: HashMap<String, Values> = table
        .columns()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .collect();
    assert_eq!(
        cols["score"],
        Values::Float(vec![Some(0.5), Some(1.0), None])
    );
    assert_eq!(
        cols["ok"],
        Values::Bool(vec![Some(true), None, Some(false)])
    );
    assert_eq!(
        cols["messages"].text(0).as_deref(),
        Some(r#"[{"role":"user"}]"#)
    );
    assert_eq!(cols["messages"].text(1), None);

    let mut csv = Vec::new();
    let picked = query(&[("samples", &table)], "SELECT id, score FROM samples")
        .unwrap_or_else(|e| panic!("{e}"));
    picked.write_csv(&mut csv).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        String::from_utf8_lossy(&csv),
        "id,score\na,0.5\nb,1\n\"c, \"\"quoted\"\"\",\n"
    );

    let err = query(&[("samples", &table)], "SELECT nope FROM samples");
    assert!(matches!(err, Err(Error::Sql { .. })), "{err:?}");
}

#[test]
fn tables_append() {
    let mut all = Table::default();
    for _ in 0..2 {
        let t = Table::from_columns(vec![("n".into(), Values::Int(vec![Some(1), None]))])
            .unwrap_or_else(|e| panic!("{e}"));
        all.append(t).unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(all.height(), 4);
    let bad = Table::from_columns(vec![
        ("a".into(), Values::Int(vec![Some(1)])),
        ("b".into(), Values::Int(vec![])),
    ]);
    assert!(matches!(bad, Err(Error::FieldLength { .. })));
}
