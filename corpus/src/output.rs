//! Final output shards: Parquet (zstd) files of samples, written from rows or copied from work
//! shards.
//!
//! An output file holds the sample columns of the shard schema ([`crate::shard::schema`] with
//! [`ShardKind::Output`]). Where a whole work shard goes into an output unchanged (a transforming
//! stage's shard, with no filter after it), [`OutputWriter::copy_shard`] moves its encoded,
//! compressed column chunks across row group by row group (Parquet's `append_column`), without
//! decoding or compressing anything again; other rows are encoded as usual. Either way the file is
//! written under a temporary name and moved into place by [`OutputWriter::finish`].

use crate::atomic::{AtomicFile, Written};
use crate::sample::Sample;
use crate::shard::{properties, schema, FileInfo, Pending, Projection, ShardKind, ShardReader};
use crate::{Error, Result};
use arrow_schema::Schema;
use parquet::arrow::arrow_to_parquet_schema;
use parquet::arrow::arrow_writer::{compute_leaves, get_column_writers, ArrowColumnWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::file::properties::WriterPropertiesPtr;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::SchemaDescriptor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Encoded bytes after which a row group of encoded rows is closed.
const ROW_GROUP_BYTES: usize = 8 << 20;
/// Buffered text after which rows are encoded.
const BATCH_BYTES: usize = 1 << 20;

/// Writes an output shard; see the module documentation.
pub struct OutputWriter {
    path: PathBuf,
    arrow: Arc<Schema>,
    parquet: SchemaDescriptor,
    props: WriterPropertiesPtr,
    writer: SerializedFileWriter<AtomicFile>,
    pending: Pending,
    /// Column writers of the row group being encoded.
    open: Option<Vec<ArrowColumnWriter>>,
    rows: u64,
}

impl OutputWriter {
    /// Starts an output shard at `path`.
    pub fn create(path: &Path) -> Result<OutputWriter> {
        let pq = |e: parquet::errors::ParquetError| Error::parquet(path, e);
        let arrow = Arc::new(schema(ShardKind::Output));
        let parquet = arrow_to_parquet_schema(&arrow).map_err(pq)?;
        let props = Arc::new(properties().map_err(|e| Error::parquet(path, e))?);
        let file = AtomicFile::create(path)?;
        let writer = SerializedFileWriter::new(file, parquet.root_schema_ptr(), props.clone())
            .map_err(pq)?;
        Ok(OutputWriter {
            path: path.to_path_buf(),
            arrow,
            parquet,
            props,
            writer,
            pending: Pending::new(),
            open: None,
            rows: 0,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::parquet(&self.path, e)
    }

    /// Appends a sample.
    pub fn push_sample(&mut self, s: &Sample) -> Result<()> {
        self.pending
            .push_sample(s, None)
            .map_err(|reason| Error::BadRecord {
                path: self.path.clone(),
                line: self.rows + 1,
                reason,
            })?;
        self.rows += 1;
        if self.pending.bytes >= BATCH_BYTES {
            self.encode_pending()?;
        }
        Ok(())
    }

    /// Encodes the buffered rows into the open row group (closing it when it is full).
    fn encode_pending(&mut self) -> Result<()> {
        if self.pending.rows == 0 {
            return Ok(());
        }
        let batch = self
            .pending
            .batch(&self.arrow, ShardKind::Output)
            .map_err(|e| self.err(e))?;
        if self.open.is_none() {
            let writers = get_column_writers(&self.parquet, &self.props, &self.arrow)
                .map_err(|e| self.err(e))?;
            self.open = Some(writers);
        }
        let mut size = 0;
        if let Some(writers) = self.open.as_mut() {
            let mut next = writers.iter_mut();
            for (field, column) in self.arrow.fields().iter().zip(batch.columns()) {
                let leaves =
                    compute_leaves(field, column).map_err(|e| Error::parquet(&self.path, e))?;
                for leaf in leaves {
                    let w = next
                        .next()
                        .ok_or_else(|| Error::parquet(&self.path, "more leaves than writers"))?;
                    w.write(&leaf).map_err(|e| Error::parquet(&self.path, e))?;
                }
            }
            size = writers.iter().map(|w| w.get_estimated_total_bytes()).sum();
        }
        if size >= ROW_GROUP_BYTES {
            self.close_row_group()?;
        }
        Ok(())
    }

    /// Closes the row group being encoded, if any.
    fn close_row_group(&mut self) -> Result<()> {
        let Some(writers) = self.open.take() else {
            return Ok(());
        };
        let path = &self.path;
        let mut rg = self
            .writer
            .next_row_group()
            .map_err(|e| Error::parquet(path, e))?;
        for w in writers {
            let chunk = w.close().map_err(|e| Error::parquet(path, e))?;
            chunk
                .append_to_row_group(&mut rg)
                .map_err(|e| Error::parquet(path, e))?;
        }
        rg.close().map_err(|e| Error::parquet(path, e))?;
        Ok(())
    }

    /// Appends every row of work shard `src` (samples only: no tombstones, no decisions) by
    /// copying its sample columns' encoded chunks. Returns the rows copied.
    pub fn copy_shard(&mut self, src: &Path) -> Result<u64> {
        self.encode_pending()?;
        self.close_row_group()?;
        let file = std::fs::File::open(src).map_err(|e| Error::io(src, e))?;
        let meta = file.try_clone().map_err(|e| Error::io(src, e))?;
        let reader = SerializedFileReader::new(meta).map_err(|e| Error::parquet(src, e))?;
        let leaves = self.parquet.num_columns();
        if !self.same_leading_columns(reader.metadata().file_metadata().schema_descr()) {
            // A shard of an older layout (no `signals` column): decode and encode its rows.
            return self.encode_shard(src);
        }
        let mut rows = 0u64;
        for rg in reader.metadata().row_groups() {
            let path = &self.path;
            let mut out = self
                .writer
                .next_row_group()
                .map_err(|e| Error::parquet(path, e))?;
            for chunk in rg.columns().iter().take(leaves) {
                let close = ColumnCloseResult {
                    bytes_written: chunk.compressed_size() as u64,
                    rows_written: rg.num_rows() as u64,
                    metadata: chunk.clone(),
                    bloom_filter: None,
                    column_index: None,
                    offset_index: None,
                };
                out.append_column(&file, close)
                    .map_err(|e| Error::parquet(src, e))?;
            }
            out.close().map_err(|e| Error::parquet(path, e))?;
            rows += rg.num_rows() as u64;
        }
        self.rows += rows;
        Ok(rows)
    }

    /// Whether `src`'s first columns are this output's columns, leaf by leaf.
    fn same_leading_columns(&self, src: &SchemaDescriptor) -> bool {
        let ours = self.parquet.columns();
        src.num_columns() >= ours.len()
            && ours
                .iter()
                .zip(src.columns())
                .all(|(a, b)| a.path() == b.path() && a.physical_type() == b.physical_type())
    }

    /// Appends every sample row of `src` by reading and encoding it.
    fn encode_shard(&mut self, src: &Path) -> Result<u64> {
        let mut reader = ShardReader::open(src, Projection::Full)?;
        let mut rows = 0u64;
        while let Some(entries) = reader.next_entries()? {
            for sample in entries.into_iter().filter_map(|e| e.sample) {
                self.push_sample(&sample)?;
                rows += 1;
            }
        }
        Ok(rows)
    }

    /// Completes the shard and moves it into place.
    pub fn finish(mut self) -> Result<FileInfo> {
        self.encode_pending()?;
        self.close_row_group()?;
        let path = self.path.clone();
        let file = self
            .writer
            .into_inner()
            .map_err(|e| Error::parquet(&path, e))?;
        let w: Written = file.commit()?;
        Ok(FileInfo {
            path,
            rows: self.rows,
            bytes: w.bytes,
            checksum: w.checksum(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{Content, Lineage, Message, MixClass};
    use crate::shard::ShardWriter;

    fn sample(k: usize) -> Sample {
        let content = if k.is_multiple_of(3) {
            Content::Messages {
                messages: vec![Message {
                    role: "user".into(),
                    content: format!("question {k}"),
                }],
            }
        } else {
            Content::Text {
                text: format!("text number {k}"),
            }
        };
        Sample::new(MixClass::Web, content, Lineage::default())
    }

    fn read(path: &Path) -> Vec<Sample> {
        let mut r = ShardReader::open(path, Projection::Full).unwrap();
        let mut out = Vec::new();
        while let Some(e) = r.next_entries().unwrap() {
            out.extend(e.into_iter().map(|e| e.sample.unwrap()));
        }
        out
    }

    /// A work shard of text samples with no `messages` and no `signals` column.
    fn write_old_layout(path: &Path, texts: &[&str]) {
        use arrow_array::{ArrayRef, RecordBatch, StringArray};
        use arrow_schema::{DataType, Field};
        let column = |v: Vec<Option<&str>>| Arc::new(StringArray::from(v)) as ArrayRef;
        let n = texts.len();
        let names = ["id", "class", "text", "lineage", "input", "dropped"];
        let fields: Vec<Field> = names
            .iter()
            .map(|c| Field::new(*c, DataType::Utf8, true))
            .collect();
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            vec![
                column(texts.iter().map(|_| Some("x")).collect()),
                column(vec![Some("web"); n]),
                column(texts.iter().map(|t| Some(*t)).collect()),
                column(vec![
                    Some("{\"stage\":\"s\",\"stage_fingerprint\":\"f\"}");
                    n
                ]),
                column(vec![None; n]),
                column(vec![None; n]),
            ],
        )
        .unwrap();
        let f = std::fs::File::create(path).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    #[test]
    fn copied_and_encoded_rows_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("w.parquet");
        let mut w = ShardWriter::create(&work).unwrap();
        for k in 0..2500 {
            w.push_sample(&sample(k), Some("x")).unwrap();
        }
        w.finish().unwrap();
        let out = dir.path().join("o.parquet");
        let mut o = OutputWriter::create(&out).unwrap();
        o.push_sample(&sample(9000)).unwrap();
        assert_eq!(o.copy_shard(&work).unwrap(), 2500);
        o.push_sample(&sample(9001)).unwrap();
        let info = o.finish().unwrap();
        assert_eq!(info.rows, 2502);
        let got = read(&out);
        let want: Vec<Sample> = std::iter::once(9000)
            .chain(0..2500)
            .chain([9001])
            .map(sample)
            .collect();
        assert_eq!(got, want);
        // An output has the sample columns only.
        let meta = SerializedFileReader::new(std::fs::File::open(&out).unwrap()).unwrap();
        let names: Vec<String> = meta
            .metadata()
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .map(|c| c.path().string())
            .collect();
        assert!(!names
            .iter()
            .any(|n| n.starts_with("input") || n.starts_with("dropped")));
        // A work shard of the layout before the `signals` column is decoded, not copied.
        let old = dir.path().join("old.parquet");
        write_old_layout(&old, &["first", "second"]);
        let mut o = OutputWriter::create(&out).unwrap();
        assert_eq!(o.copy_shard(&old).unwrap(), 2);
        o.finish().unwrap();
        let texts: Vec<String> = read(&out).iter().map(|s| s.content.text().into()).collect();
        assert_eq!(texts, ["first", "second"]);
        // An empty output is a valid, empty file.
        let empty = dir.path().join("e.parquet");
        OutputWriter::create(&empty).unwrap().finish().unwrap();
        assert!(read(&empty).is_empty());
    }
}
