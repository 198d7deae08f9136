//! Result rows as JSON lines and in a canonical order: how results leave Sluice (the
//! `<job>.results` topic, `sluice view`) and how tests compare them.

use arrow::array::RecordBatch;
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use arrow::datatypes::SchemaRef;
use arrow_json::WriterBuilder;
use arrow_json::writer::LineDelimited;

use crate::error::{Result, arrow_err};

/// One JSON object per row, nulls written as `null`, timestamps as RFC 3339.
pub fn to_json_lines(batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut writer = WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, LineDelimited>(&mut out);
        for batch in batches {
            writer
                .write(batch)
                .map_err(arrow_err("writing JSON rows"))?;
        }
        writer.finish().map_err(arrow_err("writing JSON rows"))?;
    }
    Ok(out)
}

/// All rows in one batch, sorted by every column left to right (nulls last): a canonical
/// order for output and comparisons.
pub fn sorted(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch> {
    let all = concat_batches(schema, batches).map_err(arrow_err("concatenating rows"))?;
    if all.num_rows() < 2 || all.num_columns() == 0 {
        return Ok(all);
    }
    let columns: Vec<SortColumn> = all
        .columns()
        .iter()
        .filter(|c| sortable(c.data_type()))
        .map(|c| SortColumn {
            values: c.clone(),
            options: Some(arrow::compute::SortOptions {
                descending: false,
                nulls_first: false,
            }),
        })
        .collect();
    let indices = lexsort_to_indices(&columns, None).map_err(arrow_err("sorting rows"))?;
    take_record_batch(&all, &indices).map_err(arrow_err("sorting rows"))
}

fn sortable(data_type: &arrow::datatypes::DataType) -> bool {
    use arrow::datatypes::DataType::*;
    data_type.is_primitive()
        || matches!(
            data_type,
            Boolean | Utf8 | LargeUtf8 | Utf8View | Binary | LargeBinary | BinaryView
        )
}
