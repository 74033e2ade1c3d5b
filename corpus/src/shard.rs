//! Sample shards: the Parquet (zstd) files samples move in between a build's stages, and the
//! final outputs.
//!
//! One schema serves every shard, so one reader reads them all:
//!
//! | column | type | holds |
//! | --- | --- | --- |
//! | `id` | string | the sample's content id; in a decision row, the input's |
//! | `class` | string | the mix class |
//! | `text` | string | the text (null for chats) |
//! | `messages` | list of {`role`, `content`} | the chat (null for texts) |
//! | `lineage` | string | the lineage, as JSON |
//! | `signals` | string | the quality signals, as a JSON object (null until a `signals` stage) |
//! | `input` | string | work shards: the input sample a row was made from |
//! | `dropped` | string | work shards: why the input was dropped |
//!
//! A work shard (a unit's output inside a build) holds three kinds of rows: *samples*; *tombstones*
//! (`input` and `dropped` only: an input a stage dropped); and *decisions* (`id` and, when
//! dropped, `dropped`: what a filter decided for each row of its input, in order). Final outputs
//! ([`ShardKind::Output`]) hold samples only, without the last two columns.
//!
//! Writes go through [`crate::atomic::AtomicFile`]: a shard is whole under its name or absent.
//! Reads are streamed in row groups, a projection of the columns needed, optionally with a mask of
//! the rows to keep (what the filters after the shard dropped).

use crate::atomic::{AtomicFile, Written};
use crate::sample::{Content, Lineage, Message, MixClass, Sample};
use crate::{Error, Result};
use arrow_array::builder::StringBuilder;
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, ListArray, RecordBatch, StringArray, StructArray};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Fields, Schema};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Buffered text after which rows go to the Parquet writer as one batch.
const BATCH_BYTES: usize = 1 << 20;
/// Encoded bytes after which a row group is closed (bounds a reader's memory too).
const ROW_GROUP_BYTES: usize = 8 << 20;
/// Rows a reader decodes at once.
const READ_ROWS: usize = 1024;
/// zstd level of every shard (fast, and still some 4x on prose and code).
const ZSTD_LEVEL: i32 = 1;

/// Which columns a shard has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardKind {
    /// A unit's output inside a build: samples, tombstones or decisions.
    Work,
    /// A final output: samples only.
    Output,
}

fn message_fields() -> Fields {
    Fields::from(vec![
        Field::new("role", DataType::Utf8, false),
        Field::new("content", DataType::Utf8, false),
    ])
}

fn messages_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(message_fields()),
        false,
    )))
}

/// The Arrow schema of a shard of `kind`.
/// Every column is nullable in both kinds, so the sample columns of a work shard can be copied
/// into an output shard as they are (see [`crate::output::OutputWriter`]).
pub fn schema(kind: ShardKind) -> Schema {
    let mut fields = vec![
        Field::new("id", DataType::Utf8, true),
        Field::new("class", DataType::Utf8, true),
        Field::new("text", DataType::Utf8, true),
        Field::new("messages", messages_type(), true),
        Field::new("lineage", DataType::Utf8, true),
        Field::new("signals", DataType::Utf8, true),
    ];
    if kind == ShardKind::Work {
        fields.push(Field::new("input", DataType::Utf8, true));
        fields.push(Field::new("dropped", DataType::Utf8, true));
    }
    Schema::new(fields)
}

/// A shard as written: where, how many rows, and its size and checksum.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileInfo {
    pub path: PathBuf,
    pub rows: u64,
    pub bytes: u64,
    /// `xxh3:` and the 16 hex digits of the file's xxh3-64.
    pub checksum: String,
}

/// Columns of rows not yet handed to the Parquet writer.
pub(crate) struct Pending {
    id: StringBuilder,
    class: StringBuilder,
    text: StringBuilder,
    msg_offsets: Vec<i32>,
    msg_valid: Vec<bool>,
    roles: StringBuilder,
    contents: StringBuilder,
    lineage: StringBuilder,
    signals: StringBuilder,
    input: StringBuilder,
    dropped: StringBuilder,
    pub(crate) rows: usize,
    pub(crate) bytes: usize,
}

impl Pending {
    pub(crate) fn new() -> Pending {
        Pending {
            id: StringBuilder::new(),
            class: StringBuilder::new(),
            text: StringBuilder::new(),
            msg_offsets: vec![0],
            msg_valid: Vec::new(),
            roles: StringBuilder::new(),
            contents: StringBuilder::new(),
            lineage: StringBuilder::new(),
            signals: StringBuilder::new(),
            input: StringBuilder::new(),
            dropped: StringBuilder::new(),
            rows: 0,
            bytes: 0,
        }
    }

    /// Buffers a sample's row.
    pub(crate) fn push_sample(&mut self, s: &Sample, input: Option<&str>) -> Result<(), String> {
        let lineage = serde_json::to_string(&s.lineage).map_err(|e| format!("lineage: {e}"))?;
        self.id.append_value(&s.id);
        self.class.append_value(s.class.as_str());
        match &s.content {
            Content::Text { text } => {
                self.text.append_value(text);
                self.no_messages();
                self.bytes += text.len();
            }
            Content::Messages { messages } => {
                self.text.append_null();
                for m in messages {
                    self.roles.append_value(&m.role);
                    self.contents.append_value(&m.content);
                    self.bytes += m.content.len();
                }
                let last = *self.msg_offsets.last().unwrap_or(&0);
                self.msg_offsets.push(last + messages.len() as i32);
                self.msg_valid.push(true);
            }
        }
        self.lineage.append_value(&lineage);
        self.signals
            .append_option(s.signals.as_ref().map(|v| v.to_string()));
        self.input.append_option(input);
        self.dropped.append_null();
        self.rows += 1;
        Ok(())
    }

    fn no_messages(&mut self) {
        let last = *self.msg_offsets.last().unwrap_or(&0);
        self.msg_offsets.push(last);
        self.msg_valid.push(false);
    }

    pub(crate) fn batch(
        &mut self,
        schema: &Arc<Schema>,
        kind: ShardKind,
    ) -> Result<RecordBatch, String> {
        let roles: ArrayRef = Arc::new(self.roles.finish());
        let contents: ArrayRef = Arc::new(self.contents.finish());
        let structs = StructArray::try_new(message_fields(), vec![roles, contents], None)
            .map_err(|e| e.to_string())?;
        let offsets = std::mem::replace(&mut self.msg_offsets, vec![0]);
        let valid = std::mem::take(&mut self.msg_valid);
        let DataType::List(item) = messages_type() else {
            unreachable!("messages_type is a list")
        };
        let messages = ListArray::try_new(
            item,
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            Arc::new(structs),
            Some(valid.into()),
        )
        .map_err(|e| e.to_string())?;
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.class.finish()),
            Arc::new(self.text.finish()),
            Arc::new(messages),
            Arc::new(self.lineage.finish()),
            Arc::new(self.signals.finish()),
        ];
        let input = self.input.finish();
        let dropped = self.dropped.finish();
        if kind == ShardKind::Work {
            columns.push(Arc::new(input));
            columns.push(Arc::new(dropped));
        }
        self.rows = 0;
        self.bytes = 0;
        RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
    }
}

/// Writes a work shard; see the module documentation for its rows.
pub struct ShardWriter {
    path: PathBuf,
    schema: Arc<Schema>,
    writer: ArrowWriter<AtomicFile>,
    pending: Pending,
    rows: u64,
}

pub(crate) fn properties() -> Result<WriterProperties, String> {
    let level = ZstdLevel::try_new(ZSTD_LEVEL).map_err(|e| e.to_string())?;
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        // Texts and ids are unique: dictionaries and statistics would cost time and buy nothing.
        .set_dictionary_enabled(false)
        .set_column_dictionary_enabled(ColumnPath::from("class"), true)
        .set_column_dictionary_enabled(ColumnPath::from("dropped"), true)
        .set_statistics_enabled(EnabledStatistics::None)
        // Pages of about 128 KB (checked every 32 rows): zstd then compresses each in one block
        // sequence, without its streaming mode's window copies.
        .set_data_page_size_limit(128 << 10)
        .set_write_batch_size(32)
        .build())
}

impl ShardWriter {
    /// Starts a work shard at `path` (under a temporary name until [`ShardWriter::finish`]).
    pub fn create(path: &Path) -> Result<ShardWriter> {
        let schema = Arc::new(schema(ShardKind::Work));
        let file = AtomicFile::create(path)?;
        let props = properties().map_err(|e| Error::parquet(path, e))?;
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| Error::parquet(path, e))?;
        Ok(ShardWriter {
            path: path.to_path_buf(),
            schema,
            writer,
            pending: Pending::new(),
            rows: 0,
        })
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends a sample; `input` names the input it was made from.
    pub fn push_sample(&mut self, s: &Sample, input: Option<&str>) -> Result<()> {
        self.pending
            .push_sample(s, input)
            .map_err(|reason| Error::BadRecord {
                path: self.path.clone(),
                line: self.rows + 1,
                reason,
            })?;
        self.row_added()
    }

    /// Appends a tombstone: input `input` was dropped for `reason`.
    pub fn push_tombstone(&mut self, input: &str, reason: &str) -> Result<()> {
        self.push_bare(None, Some(input), Some(reason))
    }

    /// Appends a filter's decision on input `id`: kept (`None`) or dropped for a reason.
    pub fn push_decision(&mut self, id: &str, dropped: Option<&str>) -> Result<()> {
        self.push_bare(Some(id), None, dropped)
    }

    fn push_bare(
        &mut self,
        id: Option<&str>,
        input: Option<&str>,
        dropped: Option<&str>,
    ) -> Result<()> {
        let p = &mut self.pending;
        p.id.append_option(id);
        p.class.append_null();
        p.text.append_null();
        p.no_messages();
        p.lineage.append_null();
        p.signals.append_null();
        p.input.append_option(input);
        p.dropped.append_option(dropped);
        p.bytes += 64;
        p.rows += 1;
        self.row_added()
    }

    fn row_added(&mut self) -> Result<()> {
        self.rows += 1;
        if self.pending.bytes >= BATCH_BYTES {
            self.flush_pending()?;
        }
        Ok(())
    }

    fn flush_pending(&mut self) -> Result<()> {
        if self.pending.rows == 0 {
            return Ok(());
        }
        let batch = self
            .pending
            .batch(&self.schema, ShardKind::Work)
            .map_err(|e| Error::parquet(&self.path, e))?;
        self.writer
            .write(&batch)
            .map_err(|e| Error::parquet(&self.path, e))?;
        if self.writer.in_progress_size() >= ROW_GROUP_BYTES {
            self.writer
                .flush()
                .map_err(|e| Error::parquet(&self.path, e))?;
        }
        Ok(())
    }

    /// Completes the shard and moves it into place.
    pub fn finish(mut self) -> Result<FileInfo> {
        self.flush_pending()?;
        let path = self.path.clone();
        let file = self
            .writer
            .into_inner()
            .map_err(|e| Error::parquet(&path, e))?;
        let Written { bytes, xxh3 } = file.commit()?;
        Ok(FileInfo {
            path,
            rows: self.rows,
            bytes,
            checksum: Written { bytes, xxh3 }.checksum(),
        })
    }
}

/// The columns a [`ShardReader`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projection {
    /// `id` only.
    Ids,
    /// `id` and `dropped`: a filter's decisions.
    Decisions,
    /// Everything but `lineage` (samples come with an empty lineage).
    Content,
    /// What a reader of texts needs: `Content` without `signals` (samples come without stored
    /// signals: not for a stage that writes its samples on).
    Text,
    /// Every column.
    Full,
}

impl Projection {
    fn columns(self) -> &'static [&'static str] {
        match self {
            Projection::Ids => &["id"],
            Projection::Decisions => &["id", "dropped"],
            Projection::Content => &[
                "id", "class", "text", "messages", "signals", "input", "dropped",
            ],
            Projection::Text => &["id", "class", "text", "messages", "input", "dropped"],
            Projection::Full => &[
                "id", "class", "text", "messages", "lineage", "signals", "input", "dropped",
            ],
        }
    }
}

/// One row of a shard, as far as the projection read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The row's place in the file (0-based).
    pub row: u64,
    pub id: Option<String>,
    /// The sample, for sample rows read with [`Projection::Content`], [`Projection::Text`] or
    /// [`Projection::Full`].
    pub sample: Option<Sample>,
    pub input: Option<String>,
    pub dropped: Option<String>,
}

/// Streams a shard's rows.
pub struct ShardReader {
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    projection: Projection,
    rows: u64,
    next_row: u64,
    keep: Option<Vec<bool>>,
}

impl ShardReader {
    /// Opens `path`, to read the columns of `projection`.
    pub fn open(path: &Path, projection: Projection) -> Result<ShardReader> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::parquet(path, e))?;
        let rows = builder.metadata().file_metadata().num_rows() as u64;
        let arrow = builder.schema().clone();
        let wanted: Vec<usize> = projection
            .columns()
            .iter()
            .filter_map(|c| arrow.index_of(c).ok())
            .collect();
        if arrow.index_of("id").is_err() {
            return Err(Error::ParquetColumn {
                path: path.to_path_buf(),
                column: "id".into(),
                message: "no such column: not a phiforge shard".into(),
            });
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), wanted);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(READ_ROWS)
            .build()
            .map_err(|e| Error::parquet(path, e))?;
        Ok(ShardReader {
            path: path.to_path_buf(),
            reader,
            projection,
            rows,
            next_row: 0,
            keep: None,
        })
    }

    /// Rows in the file.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Reads only the rows whose `keep` entry is true (one entry per row of the file).
    pub fn with_mask(mut self, keep: Vec<bool>) -> Result<ShardReader> {
        if keep.len() as u64 != self.rows {
            return Err(Error::parquet(
                &self.path,
                format!(
                    "a mask of {} rows for a shard of {} rows",
                    keep.len(),
                    self.rows
                ),
            ));
        }
        self.keep = Some(keep);
        Ok(self)
    }

    /// The next rows (at most some thousand), or `None` at the end.
    pub fn next_entries(&mut self) -> Result<Option<Vec<Entry>>> {
        loop {
            let Some(batch) = self.reader.next() else {
                return Ok(None);
            };
            let batch = batch.map_err(|e| Error::parquet(&self.path, e))?;
            let first = self.next_row;
            self.next_row += batch.num_rows() as u64;
            let out = self.entries(&batch, first)?;
            if !out.is_empty() {
                return Ok(Some(out));
            }
        }
    }

    fn entries(&self, batch: &RecordBatch, first: u64) -> Result<Vec<Entry>> {
        let strings = |name: &str| -> Result<Option<&StringArray>> {
            match batch.column_by_name(name) {
                None => Ok(None),
                Some(c) => c
                    .as_string_opt::<i32>()
                    .map(Some)
                    .ok_or_else(|| Error::ParquetColumn {
                        path: self.path.clone(),
                        column: name.into(),
                        message: format!("type {} (need a string column)", c.data_type()),
                    }),
            }
        };
        let get = |a: Option<&StringArray>, i: usize| -> Option<String> {
            a.filter(|a| a.is_valid(i)).map(|a| a.value(i).to_string())
        };
        let ids = strings("id")?;
        let class = strings("class")?;
        let text = strings("text")?;
        let lineage = strings("lineage")?;
        let signals = strings("signals")?;
        let input = strings("input")?;
        let dropped = strings("dropped")?;
        let messages = batch.column_by_name("messages").map(|c| c.as_list::<i32>());
        let with_samples = matches!(
            self.projection,
            Projection::Content | Projection::Text | Projection::Full
        );
        let mut out = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let row = first + i as u64;
            if let Some(keep) = &self.keep {
                if !keep[row as usize] {
                    continue;
                }
            }
            let id = get(ids, i);
            let bad = |reason: String| Error::BadRecord {
                path: self.path.clone(),
                line: row + 1,
                reason,
            };
            let sample = match (with_samples, get(class, i)) {
                (true, Some(c)) => {
                    let class =
                        MixClass::parse(&c).ok_or_else(|| bad(format!("unknown class `{c}`")))?;
                    let content = match (get(text, i), messages) {
                        (Some(text), _) => Content::Text { text },
                        (None, Some(m)) if m.is_valid(i) => {
                            let list = m.value(i);
                            let list = list.as_struct();
                            let roles = list.column(0).as_string::<i32>();
                            let contents = list.column(1).as_string::<i32>();
                            Content::Messages {
                                messages: (0..list.len())
                                    .map(|k| Message {
                                        role: roles.value(k).to_string(),
                                        content: contents.value(k).to_string(),
                                    })
                                    .collect(),
                            }
                        }
                        _ => return Err(bad("a sample row without text or messages".into())),
                    };
                    let lineage = match get(lineage, i) {
                        Some(l) => serde_json::from_str::<Lineage>(&l)
                            .map_err(|e| bad(format!("lineage: {e}")))?,
                        None => Lineage::default(),
                    };
                    let signals = match get(signals, i) {
                        Some(s) => match serde_json::from_str(&s) {
                            Ok(v @ serde_json::Value::Object(_)) => Some(v),
                            Ok(_) => return Err(bad("signals: not a JSON object".into())),
                            Err(e) => return Err(bad(format!("signals: {e}"))),
                        },
                        None => None,
                    };
                    Some(Sample {
                        id: id.clone().unwrap_or_default(),
                        class,
                        content,
                        lineage,
                        signals,
                    })
                }
                _ => None,
            };
            out.push(Entry {
                row,
                id,
                sample,
                input: get(input, i),
                dropped: get(dropped, i),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str) -> Sample {
        Sample::new(
            MixClass::Code,
            Content::Text { text: text.into() },
            Lineage {
                stage: "s".into(),
                parents: vec!["p".into()],
                ..Default::default()
            },
        )
    }

    #[test]
    fn rows_of_every_kind_round_trip_with_masks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("u/a.parquet");
        let mut w = ShardWriter::create(&p).unwrap();
        let mut a = sample("alpha");
        a.signals = Some(serde_json::json!({"words": 1, "lang": "eng"}));
        let chat = Sample::new(
            MixClass::Synthetic,
            Content::Messages {
                messages: vec![
                    Message {
                        role: "user".into(),
                        content: "q".into(),
                    },
                    Message {
                        role: "assistant".into(),
                        content: "a".into(),
                    },
                ],
            },
            Lineage::default(),
        );
        w.push_sample(&a, Some("in1")).unwrap();
        w.push_tombstone("in2", "too short").unwrap();
        w.push_sample(&chat, None).unwrap();
        w.push_decision("in3", Some("duplicate")).unwrap();
        let info = w.finish().unwrap();
        assert_eq!(info.rows, 4);
        assert_eq!(
            info.checksum,
            crate::atomic::hash_file(&p).unwrap().checksum()
        );
        let mut r = ShardReader::open(&p, Projection::Full).unwrap();
        assert_eq!(r.rows(), 4);
        let e = r.next_entries().unwrap().unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(e[0].sample.as_ref(), Some(&a));
        assert_eq!(e[0].input.as_deref(), Some("in1"));
        assert_eq!(e[1].sample, None);
        assert_eq!(e[1].dropped.as_deref(), Some("too short"));
        assert_eq!(e[2].sample.as_ref(), Some(&chat));
        assert_eq!(e[3].id.as_deref(), Some("in3"));
        assert!(r.next_entries().unwrap().is_none());
        // A mask skips rows; a projection reads less.
        let mut r = ShardReader::open(&p, Projection::Content)
            .unwrap()
            .with_mask(vec![false, false, true, true])
            .unwrap();
        let e = r.next_entries().unwrap().unwrap();
        assert_eq!(e.iter().map(|e| e.row).collect::<Vec<_>>(), [2, 3]);
        assert!(e[0].sample.as_ref().unwrap().lineage.stage.is_empty());
        let mut r = ShardReader::open(&p, Projection::Content).unwrap();
        let e = r.next_entries().unwrap().unwrap();
        assert_eq!(e[0].sample.as_ref().unwrap().signals, a.signals);
        let mut r = ShardReader::open(&p, Projection::Text).unwrap();
        let e = r.next_entries().unwrap().unwrap();
        let s = e[0].sample.as_ref().unwrap();
        assert_eq!((&s.content, s.signals.as_ref()), (&a.content, None));
        assert!(a.signals.is_some());
        assert!(ShardReader::open(&p, Projection::Ids)
            .unwrap()
            .with_mask(vec![true])
            .is_err());
    }
}
