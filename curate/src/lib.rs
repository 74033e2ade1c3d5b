//! Document curation for phiforge: per-document quality [`signals`], the published filter
//! [`presets`] (Gopher, C4, FineWeb) as rules over those signals, and [`pii`] scrubbing.
//!
//! - [`signals::compute`] (or a reusable [`SignalComputer`]) turns a text into [`Signals`], a flat
//!   row of named columns ([`Signals::columns`], [`Signals::get`]) that a table can store and a
//!   SQL condition can read.
//! - [`presets::preset`] gives a published filter as [`Rule`]s: a SQL boolean condition over the
//!   signal columns that is true when the document is kept, and datatrove's drop reason.
//! - [`sql`] evaluates SQL with polars, the one crate of the workspace that links it: a
//!   [`Filter`] (a `where` clause, or a preset's rules, one boolean column each) over a
//!   [`RowBatch`] of many documents' signals and fields, and [`sql::query`] over [`sql::Table`]s;
//!   [`scan::query_records`] runs a query over records read on demand, holding only the columns
//!   it reads.
//! - [`fields`] declares a record's own fields (`lang:str`) for conditions to read beside the
//!   signals, and converts their JSON values.
//! - [`Scrubber`] replaces e-mail addresses, IP addresses and phone numbers with placeholders and
//!   counts them per kind.
//!
//! ```
//! use curate::{signals, Filter, PiiSettings, RowBatch, Scrubber};
//!
//! let text = "Contact alice@example.org for the schedule of the meeting.";
//! let scrubber = Scrubber::new(PiiSettings::default())?;
//! let (clean, counts) = scrubber.scrub(text);
//! assert_eq!(clean, "Contact |||EMAIL_ADDRESS||| for the schedule of the meeting.");
//! assert_eq!(counts.email, 1);
//!
//! let rows = RowBatch::new(vec![signals::compute(&clean)]);
//! let gopher = Filter::preset("gopher_quality")?;
//! assert_eq!(gopher.decide(&rows)?, [Some("gopher_short_doc")]); // 9 words, Gopher wants 50
//! # Ok::<(), curate::Error>(())
//! ```

pub mod fields;
pub mod pii;
pub mod presets;
pub mod scan;
pub mod signals;
pub mod sql;
pub mod text;

mod c4;
mod punct_table;
mod repetition;

pub use pii::{PiiCounts, PiiSettings, Scrubber};
pub use presets::Rule;
pub use signals::{compute, ColumnType, SignalComputer, Signals, Value};
pub use sql::{Filter, RowBatch, Table, Values};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQL that polars cannot parse or evaluate (`what`: the condition, query or step).
    #[error("SQL `{what}`: {message}")]
    Sql { what: String, message: String },
    /// A condition names a column that is neither a [`Signals`] column nor a field it may read.
    #[error("condition `{condition}`: unknown column `{column}` (not a signal, nor id, class, bytes, tokens or a declared field)")]
    UnknownColumn { condition: String, column: String },
    /// A condition whose value is not true or false (`words + 1`).
    #[error("condition `{condition}` is not a boolean condition (it gives {found})")]
    NotBoolean { condition: String, found: String },
    /// No preset of that name.
    #[error("unknown preset `{name}` (known: {})", presets::PRESETS.join(", "))]
    UnknownPreset { name: String },
    /// A field with another number of values than its batch or table has rows.
    #[error("field `{field}` has {values} values for {rows} rows")]
    FieldLength {
        field: String,
        values: usize,
        rows: usize,
    },
    /// A field named like a signal column, or declared twice with different types.
    #[error("field `{field}` clashes with a signal column or another field of that name")]
    FieldClash { field: String },
    /// Reading the records of a query's table (the reader's message names file and line).
    #[error("{message}")]
    Read { message: String },
    /// Writing an output.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A PII pattern that does not compile.
    #[error("PII pattern for {kind}: {source}")]
    Pattern {
        kind: &'static str,
        #[source]
        source: regex::Error,
    },
}
