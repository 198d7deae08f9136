//! The Polars transforms this `sluice` binary registers, by the name job files use.

use sluice_core::TransformRegistry;

/// Every transform a job file may name in `transform.polars`.
pub fn registry() -> TransformRegistry {
    #[allow(unused_mut)]
    let mut registry = TransformRegistry::default();
    #[cfg(feature = "polars")]
    registry.register(sluice_batch::polars::PolarsTransform::named(
        "completed_orders",
        completed_orders,
    ));
    registry
}

/// Keeps completed orders: the Polars twin of `WHERE status = 'completed'`.
#[cfg(feature = "polars")]
pub fn completed_orders(frame: polars::prelude::LazyFrame) -> polars::prelude::LazyFrame {
    use polars::prelude::{col, lit};
    frame.filter(col("status").eq(lit("completed")))
}
