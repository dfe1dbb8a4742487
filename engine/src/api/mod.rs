//! The DataStream API: an environment that records a job ([`mod@env`]), typed streams and keyed
//! streams with their operators ([`stream`]), event time and side outputs ([`time`]), and the
//! built-in sources and sinks ([`sources`], [`sinks`]).

pub mod env;
pub mod join;
pub mod process;
pub mod sinks;
pub mod sources;
pub mod stream;
pub mod time;
pub mod window;
