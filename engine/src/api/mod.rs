//! The DataStream API: an environment that records a job ([`env`]), typed streams and keyed
//! streams with their operators ([`stream`]), and the built-in sources and sinks ([`sources`],
//! [`sinks`]).

pub mod env;
pub mod sinks;
pub mod sources;
pub mod stream;
