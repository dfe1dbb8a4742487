//! Checkpoint barriers inside tasks. This part decides barrier alignment at an input gate;
//! snapshots, the coordinator and storage build on it.

pub mod alignment;

pub use alignment::{AlignmentAction, BarrierAligner};
