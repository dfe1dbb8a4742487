//! The data plane shared by every exchange in corestream: the bounded pool of 32 KB buffers,
//! the record codec that writes rkyv archives into those buffers and reads them in place, the
//! in-band events, the credit-based channels that move buffers from a producing subtask to a
//! consuming one, the wire protocol ([`wire`]) that carries buffers, credit and events between
//! TaskManager processes, the sans-IO session ([`remote`]) that maps frames to channels, and
//! the transport ([`transport`]) that drives a session over a TCP connection.
//! The in-process exchange uses these types today; the transport uses the same buffers,
//! credits and events, so a job behaves the same whether its tasks share a process or not.
//!
//! Architecture Invariant: this crate never depends on `corestream` (the engine).

pub mod buffer;
pub mod credit;
pub mod doorbell;
pub mod error;
pub mod event;
pub mod pool;
pub mod record;
pub mod remote;
pub mod transport;
pub mod wire;

pub use buffer::{Buffer, BufferBuilder, BUFFER_SIZE};
pub use credit::{ChannelItem, CreditConfig, InputGate, LocalChannel, OutputChannel, SendOutcome};
pub use doorbell::Doorbell;
pub use error::{BufferError, NetError, RecordError};
pub use event::{BarrierKind, Event, WatermarkStatus};
pub use pool::{BufferPool, PoolReservation, PoolStats};
pub use record::{
    from_bytes, record_count, to_bytes, validate_buffer, BufferValidator, Data, RecordIter, RecordValidator,
    RecordWriter,
};
pub use remote::{Admission, OutFrame, PeerIdentity, PeerSession, PeerSignal, SessionError, SessionStats};
pub use rkyv;
pub use transport::{accept, dial, run_session, Interrupt, NetConfig, SessionEnd, SessionOutcome};
pub use wire::{
    decode_body, decode_frame, decode_header, EncodedFrame, ErrorCode, FrameError, FrameHeader, FrameKind, Hello,
    Message,
};
