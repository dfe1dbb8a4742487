//! The DataStream API: an environment that records a job ([`mod@env`]), typed streams and keyed
//! streams with their operators ([`stream`]), event time and side outputs ([`time`]), and the
//! built-in sources and sinks ([`sources`], [`sinks`]), two-phase-commit sinks ([`two_phase`]) and
//! the exactly-once file sink ([`file_sink`]), bounded line reading ([`lines`]) and skipped
//! records reported by user functions ([`skips`]).

pub mod env;
pub mod file_sink;
pub mod join;
pub mod lines;
pub mod process;
pub mod sinks;
pub mod skips;
pub(crate) mod source_rate;
pub mod sources;
pub mod stream;
mod stream_lines;
pub mod time;
pub mod two_phase;
pub mod window;
