//! Polars transforms (`LazyFrame -> LazyFrame`) as [`BatchTransform`]s.
//!
//! Batches cross between arrow-rs and Polars as Arrow IPC bytes: the two libraries keep their
//! own Arrow implementations, and IPC is the one format both read and write exactly. Polars'
//! large string/binary types come back as the plain Arrow types every layer uses.

use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use polars::prelude::{
    CompatLevel, IntoLazy, IpcReader, IpcWriter, LazyFrame, SerReader, SerWriter,
};
use sluice_core::BatchTransform;

/// A stateless Polars transform registered under a name that job files use.
#[derive(Clone)]
pub struct PolarsTransform {
    name: String,
    function: fn(LazyFrame) -> LazyFrame,
}

impl std::fmt::Debug for PolarsTransform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolarsTransform")
            .field("name", &self.name)
            .finish()
    }
}

impl PolarsTransform {
    pub fn named(
        name: impl Into<String>,
        function: fn(LazyFrame) -> LazyFrame,
    ) -> Arc<dyn BatchTransform> {
        Arc::new(PolarsTransform {
            name: name.into(),
            function,
        })
    }

    fn error(&self, message: impl std::fmt::Display) -> sluice_core::Error {
        sluice_core::Error::Transform {
            name: self.name.clone(),
            message: message.to_string(),
        }
    }
}

impl BatchTransform for PolarsTransform {
    fn name(&self) -> &str {
        &self.name
    }

    fn apply(&self, batch: &RecordBatch) -> sluice_core::Result<RecordBatch> {
        let mut bytes = Vec::new();
        {
            let mut writer =
                FileWriter::try_new(&mut bytes, batch.schema_ref()).map_err(|e| self.error(e))?;
            writer.write(batch).map_err(|e| self.error(e))?;
            writer.finish().map_err(|e| self.error(e))?;
        }
        let frame = IpcReader::new(Cursor::new(bytes))
            .finish()
            .map_err(|e| self.error(e))?;
        let mut output = (self.function)(frame.lazy())
            .collect()
            .map_err(|e| self.error(e))?;
        let mut bytes = Vec::new();
        IpcWriter::new(&mut bytes)
            .with_compat_level(CompatLevel::oldest())
            .finish(&mut output)
            .map_err(|e| self.error(e))?;
        let reader = FileReader::try_new(Cursor::new(bytes), None).map_err(|e| self.error(e))?;
        let schema = plain_schema(&reader.schema());
        let batches = reader
            .map(|b| {
                b.map_err(|e| self.error(e))
                    .and_then(|b| self.to_plain(&schema, &b))
            })
            .collect::<sluice_core::Result<Vec<_>>>()?;
        arrow::compute::concat_batches(&schema, &batches).map_err(|e| self.error(e))
    }
}

impl PolarsTransform {
    fn to_plain(
        &self,
        schema: &SchemaRef,
        batch: &RecordBatch,
    ) -> sluice_core::Result<RecordBatch> {
        let columns = batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c.clone())
                } else {
                    cast(c, f.data_type())
                }
            })
            .collect::<Result<Vec<ArrayRef>, _>>()
            .map_err(|e| self.error(e))?;
        RecordBatch::try_new(schema.clone(), columns).map_err(|e| self.error(e))
    }
}

/// Polars' string and binary types mapped to the ones the rest of Sluice uses.
fn plain_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let data_type = match f.data_type() {
                DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
                DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
                other => other.clone(),
            };
            Field::new(f.name(), data_type, f.is_nullable())
        })
        .collect();
    Arc::new(Schema::new(fields))
}
