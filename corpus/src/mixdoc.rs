//! Document shards of a training mix: Parquet (zstd) files of the mix's documents in the mix's
//! order, with the columns of an output shard (`id`, `class`, `text`, `messages`, `lineage`; see
//! [`crate::shard`]) and two more:
//!
//! | column | type | holds |
//! | --- | --- | --- |
//! | `tokens` | uint64 | the document's tokens in the mix's token shards (its end token included) |
//! | `epoch` | uint32 | which pass over its class this copy of the document belongs to (from 0) |
//!
//! A repeated document appears once per epoch. Written under a temporary name and moved into
//! place by [`MixDocWriter::finish`].

use crate::atomic::{AtomicFile, Written};
use crate::sample::Sample;
use crate::shard::{properties, schema, FileInfo, Pending, ShardKind};
use crate::{Error, Result};
use arrow_array::{ArrayRef, RecordBatch, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Buffered text after which rows go to the Parquet writer as one batch.
const BATCH_BYTES: usize = 1 << 20;

/// The Arrow schema of a mix's document shard.
pub fn mix_schema() -> Schema {
    let mut fields: Vec<Field> = schema(ShardKind::Output)
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("tokens", DataType::UInt64, false));
    fields.push(Field::new("epoch", DataType::UInt32, false));
    Schema::new(fields)
}

/// Writes a document shard of a mix; see the module documentation.
pub struct MixDocWriter {
    path: PathBuf,
    output: Arc<Schema>,
    schema: Arc<Schema>,
    writer: ArrowWriter<AtomicFile>,
    pending: Pending,
    tokens: Vec<u64>,
    epochs: Vec<u32>,
    rows: u64,
}

impl MixDocWriter {
    pub fn create(path: &Path) -> Result<MixDocWriter> {
        let schema = Arc::new(mix_schema());
        let file = AtomicFile::create(path)?;
        let props = properties().map_err(|e| Error::parquet(path, e))?;
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| Error::parquet(path, e))?;
        Ok(MixDocWriter {
            path: path.to_path_buf(),
            output: Arc::new(schema_output()),
            schema,
            writer,
            pending: Pending::new(),
            tokens: Vec::new(),
            epochs: Vec::new(),
            rows: 0,
        })
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends a document with its token count and epoch.
    pub fn push(&mut self, s: &Sample, tokens: u64, epoch: u32) -> Result<()> {
        self.pending
            .push_sample(s, None)
            .map_err(|reason| Error::BadRecord {
                path: self.path.clone(),
                line: self.rows + 1,
                reason,
            })?;
        self.tokens.push(tokens);
        self.epochs.push(epoch);
        self.rows += 1;
        if self.pending.bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.rows == 0 {
            return Ok(());
        }
        let err = |e: String| Error::parquet(&self.path, e);
        let base = self
            .pending
            .batch(&self.output, ShardKind::Output)
            .map_err(err)?;
        let mut columns: Vec<ArrayRef> = base.columns().to_vec();
        columns.push(Arc::new(UInt64Array::from(std::mem::take(
            &mut self.tokens,
        ))));
        columns.push(Arc::new(UInt32Array::from(std::mem::take(
            &mut self.epochs,
        ))));
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| Error::parquet(&self.path, e))?;
        self.writer
            .write(&batch)
            .map_err(|e| Error::parquet(&self.path, e))
    }

    /// Completes the shard and moves it into place.
    pub fn finish(mut self) -> Result<FileInfo> {
        self.flush()?;
        let path = self.path.clone();
        let file = self
            .writer
            .into_inner()
            .map_err(|e| Error::parquet(&path, e))?;
        let written: Written = file.commit()?;
        Ok(FileInfo {
            path,
            rows: self.rows,
            bytes: written.bytes,
            checksum: written.checksum(),
        })
    }
}

fn schema_output() -> Schema {
    schema(ShardKind::Output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{Content, Lineage, MixClass};
    use arrow_array::cast::AsArray;
    use arrow_array::types::{UInt32Type, UInt64Type};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    #[test]
    fn document_shards_carry_tokens_and_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docs.parquet");
        let mut w = MixDocWriter::create(&path).unwrap();
        let text = |t: &str| Content::Text { text: t.into() };
        let a = Sample::new(MixClass::Web, text("alpha"), Lineage::default());
        let b = Sample::new(MixClass::Code, text("beta"), Lineage::default());
        w.push(&a, 3, 0).unwrap();
        w.push(&b, 5, 0).unwrap();
        w.push(&a, 3, 1).unwrap();
        let info = w.finish().unwrap();
        assert_eq!(info.rows, 3);
        let f = std::fs::File::open(&path).unwrap();
        let batch = ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let col = |n: &str| batch.column(batch.schema().index_of(n).unwrap()).clone();
        let tokens: Vec<u64> = col("tokens").as_primitive::<UInt64Type>().values().to_vec();
        let epochs: Vec<u32> = col("epoch").as_primitive::<UInt32Type>().values().to_vec();
        assert_eq!(tokens, [3, 5, 3]);
        assert_eq!(epochs, [0, 0, 1]);
        let class = col("class");
        let classes: Vec<&str> = class.as_string::<i32>().iter().flatten().collect();
        assert_eq!(classes, ["web", "code", "web"]);
    }
}
