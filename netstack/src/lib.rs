//! The data plane shared by every exchange in corestream: the bounded pool of 32 KB buffers,
//! the record codec that writes rkyv archives into those buffers and reads them in place, the
//! in-band events, the credit-based channels that move buffers from a producing subtask to a
//! consuming one, the wire protocol ([`wire`]) that carries buffers, credit, events and job
//! control between TaskManager processes, the handshake that proves both ends belong to one
//! cluster ([`handshake`]), the sans-IO session ([`remote`]) that multiplexes the channels of
//! every job on one connection, the transport ([`transport`]) that drives a session over a
//! TCP connection, and the [`plane`] that keeps one connection per pair of TaskManagers.
//! The in-process exchange uses these types today; the transport uses the same buffers,
//! credits and events, so a job behaves the same whether its tasks share a process or not.
//!
//! Architecture Invariant: this crate never depends on `corestream` (the engine).

pub mod buffer;
pub mod connection;
pub mod credit;
pub mod doorbell;
pub mod error;
pub mod event;
#[doc(hidden)]
pub mod fuzz;
pub mod handshake;
pub mod plane;
pub mod pool;
pub mod record;
pub mod remote;
pub mod transport;
pub mod wire;

pub use buffer::{Buffer, BufferBuilder, BUFFER_SIZE};
pub use connection::{Connection, JobLink};
pub use credit::{ChannelItem, CreditConfig, InFlightCopy, InputGate, LocalChannel, OutputChannel, SendOutcome};
pub use doorbell::Doorbell;
pub use error::{BufferError, NetError, RecordError};
pub use event::{BarrierKind, Event, WatermarkStatus};
pub use handshake::{ClusterAuth, HandshakeError, Role, TmId};
pub use plane::{DataPlane, DataPlaneConfig, PeerAddress, PeerCounters, PlaneCounters, PlaneStats};
pub use pool::{BufferPool, PoolReservation, PoolStats};
pub use record::{
    from_bytes, record_count, to_bytes, validate_buffer, BufferValidator, Data, RecordIter, RecordValidator,
    RecordWriter,
};
pub use remote::{
    Admission, ConnectionStats, JobEnd, JobEnded, JobSpec, LocalIdentity, OutFrame, PeerSession, PeerSignal,
    RegisterError, SessionConfig, SessionError, SessionStats,
};
pub use rkyv;
pub use transport::{accept, dial, run_session, serve, Interrupt, NetConfig, SessionEnd, SessionOutcome};
pub use wire::{
    decode_body, decode_frame, decode_header, EncodedFrame, ErrorCode, FrameError, FrameHeader, FrameKind, Hello,
    Message,
};
