//! Event time: watermark strategies and generators (`strategy`), and the per-channel watermark
//! valve with idleness every task with inputs uses (`watermark`).

pub mod strategy;
pub mod watermark;

pub use strategy::{
    BatchTimestampFn, BoundedOutOfOrderness, NoWatermarks, TimestampFn, Timestamps, WatermarkGenerator,
    WatermarkOutput, WatermarkStrategy,
};
pub use watermark::{ValveOutput, WatermarkValve};
