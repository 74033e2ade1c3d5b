//! Documents in and out.
//!
//! `corpus` is the one place phiforge reads and writes document collections, so every stage sees
//! the same formats and the same errors:
//!
//! - [`Format`] tells a file's kind from its name: JSON lines (plain, `.gz`, `.zst`), Parquet, a
//!   plain-text file, or a folder of text files.
//! - [`expand_inputs`] turns the user's `FILE|DIR|GLOB` arguments into a sorted list of files.
//! - [`BatchReader`] streams a file in bounded batches; [`Batch::doc`] parses one record, so the
//!   expensive part (JSON parsing) runs on the caller's worker threads.
//! - [`StagedDir`] and [`open_writer`] write outputs under temporary names and move them into place
//!   only when complete; [`TableWriter`] writes small analysis tables as Parquet.
//! - [`atomic`] is the workspace's one atomic file write (temporary name, fsync, rename, checksum).
//! - [`sample`] is the sample a build moves between stages (content id, class, text or messages,
//!   lineage), [`shard`] the Parquet files it moves in between stages, and [`output`] the final
//!   output files (copied from shards without decoding where they can be); [`mixdoc`] a training
//!   mix's document shards (the samples in the mix's order, with their token counts).
//!
//! It owns the heavy Arrow/Parquet dependency; no other crate links it directly. JSON-lines
//! records are picked apart by `extract` (only the text and id fields are materialised).
//!
//! ```no_run
//! use corpus::{BatchReader, TextSpec};
//! # fn main() -> Result<(), corpus::Error> {
//! let spec = TextSpec::default();
//! let mut reader = BatchReader::open("docs.jsonl.gz".as_ref(), &spec, false)?;
//! while let Some(batch) = reader.next_batch()? {
//!     for i in 0..batch.len() {
//!         let doc = batch.doc(i, &spec)?;
//!         println!("{} {}", doc.id, doc.text.len());
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod atomic;
mod canonical;
mod error;
mod extract;
mod format;
pub mod mixdoc;
pub mod output;
mod read;
pub mod sample;
pub mod shard;
mod table;
mod write;

pub use error::Error;
pub use extract::TextSpec;
pub use format::{expand_inputs, Compression, Format};
pub use read::{
    read_all, read_json_records, text_files, Batch, BatchReader, Doc, Fields, Raw, BATCH_BYTES,
};
pub use table::{Column, ColumnKind, TableWriter};
pub use write::{open_writer, FormatWriter, LineSink, StagedDir};

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Record fields as JSON values, for small tables (benchmark sets) read with [`read_records`].
pub type Record = serde_json::Map<String, serde_json::Value>;

/// Reads every record of a JSON-lines or Parquet file as a JSON object, with its 1-based line
/// (JSON lines) or row number (Parquet). Meant for small files such as benchmark sets; corpora go
/// through [`BatchReader`].
pub fn read_records(path: &std::path::Path) -> Result<Vec<(u64, Record)>> {
    read::read_records(path)
}
