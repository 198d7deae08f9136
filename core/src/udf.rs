//! Scalar UDFs written in Rust that every job's SQL can call.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, StringArray};
use arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

/// Registers Sluice's UDFs on a DataFusion session.
pub fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::from(MaskEmail::new()));
}

/// `mask_email(text)`: keeps the first character of the local part and the domain
/// (`jane@example.com` → `j***@example.com`); text without `@` is fully masked; NULL stays NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
struct MaskEmail {
    signature: Signature,
}

impl MaskEmail {
    fn new() -> MaskEmail {
        MaskEmail {
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
        }
    }
}

pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "*".repeat(email.chars().count()),
    }
}

impl ScalarUDFImpl for MaskEmail {
    fn name(&self) -> &str {
        "mask_email"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let input: ArrayRef = args.args[0].clone().into_array(args.number_rows)?;
        let masked: StringArray = input
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(mask_email))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(masked)))
    }
}

#[cfg(test)]
mod tests {
    use super::mask_email;

    #[test]
    fn masks_local_part_only() {
        assert_eq!(mask_email("jane@example.com"), "j***@example.com");
        assert_eq!(mask_email("@x.org"), "***@x.org");
        assert_eq!(mask_email("no-at-sign"), "**********");
        assert_eq!(mask_email("élan@x.fr"), "é***@x.fr");
    }
}
