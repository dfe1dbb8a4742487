//! Event time. This part holds the per-channel watermark valve every task with inputs uses;
//! watermark strategies, idleness and timers build on it.

pub mod watermark;

pub use watermark::{ValveOutput, WatermarkValve};
