//! Windows (Flink's windowing): time windows and their assigners (tumbling, sliding and
//! session, in event or processing time, with offsets), triggers, the merging window set that
//! session windows need, and the window operator that keeps window contents in keyed state and
//! fires them with timers. A window's `end` is exclusive; it fires when the clock reaches
//! `end - 1` (its max timestamp).

pub mod assigner;
pub mod merging;
pub mod operator;
pub mod trigger;

pub use assigner::{TimeWindow, WindowAssigner};
pub use trigger::{Trigger, TriggerResult};
