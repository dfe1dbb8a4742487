//! What the loopback tests share: executors on threads with a watchdog, producers and
//! consumers of sequence-numbered records, TaskManager identities of one cluster, and a raw
//! peer that speaks the wire protocol by hand over a std socket.
#![allow(dead_code)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use corestream_netstack::handshake::{auth_mac, ClusterAuth, Role, TmId};
use corestream_netstack::record::deserialize;
use corestream_netstack::remote::{LocalIdentity, SessionConfig};
use corestream_netstack::transport::NetConfig;
use corestream_netstack::wire::{decode_frame, Hello, Message, HEADER_BYTES};
use corestream_netstack::{
    BufferPool, ChannelItem, CreditConfig, Doorbell, Event, InputGate, OutputChannel, RecordIter, RecordWriter,
};
use glommio::timer::Timer;
use glommio::{LocalExecutorBuilder, Placement};

pub type Rec = (u32, u64);

/// 1000 records of 32 bytes fill most of a 32 KB buffer.
pub const RECORDS_PER_BUFFER: u64 = 1000;
pub const CREDIT: CreditConfig =
    CreditConfig { exclusive_per_channel: 2, floating_per_gate: 4, max_backlog_per_channel: 2 };
pub const WATCHDOG: Duration = Duration::from_secs(30);
pub const TOKEN: [u8; 32] = [0x5c; 32];
pub const FINGERPRINT: u64 = 0x5eed_cafe;

pub fn net_config() -> NetConfig {
    NetConfig {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_secs(2),
        connect_attempts: 10,
        connect_backoff_initial: Duration::from_millis(5),
        connect_backoff_max: Duration::from_millis(100),
        accept_timeout: Duration::from_secs(5),
        open_timeout: Duration::from_secs(5),
    }
}

/// TaskManager `n` of the test cluster: its id is `n` repeated, so a lower `n` dials.
pub fn tm(n: u8) -> TmId {
    TmId([n; 16])
}

pub fn identity(n: u8, secret: Option<&[u8]>) -> LocalIdentity {
    LocalIdentity { tm: tm(n), pid: std::process::id(), auth: ClusterAuth::new(TOKEN, secret) }
}

pub fn session_config(n: u8, role: Role, expected: Option<u8>, peer_name: &str) -> SessionConfig {
    SessionConfig {
        identity: identity(n, None),
        role,
        expected_peer: expected.map(tm),
        heartbeat_ms: net_config().heartbeat_ms(),
        open_timeout: net_config().open_timeout,
        nonce: [n; 32],
        peer_name: peer_name.to_string(),
    }
}

/// Runs `make()` on a new unpinned glommio executor thread; its result arrives on the channel.
pub fn on_executor<T, F>(name: &str, make: impl FnOnce() -> F + Send + 'static) -> mpsc::Receiver<T>
where
    T: Send + 'static,
    F: Future<Output = T> + 'static,
{
    let (tx, rx) = mpsc::channel();
    LocalExecutorBuilder::new(Placement::Unbound)
        .name(name)
        .io_memory(512 << 10)
        .spawn(move || async move {
            let _ = tx.send(make().await);
        })
        .expect("executor thread starts");
    rx
}

pub fn wait<T>(rx: &mpsc::Receiver<T>, what: &str) -> T {
    rx.recv_timeout(WATCHDOG).unwrap_or_else(|e| panic!("{what}: no result within {WATCHDOG:?} ({e})"))
}

pub async fn wait_bell(bell: &Doorbell) {
    futures_lite::future::or(bell.wait(), async {
        Timer::new(Duration::from_millis(10)).await;
    })
    .await;
}

/// Writes `buffers` buffers of records `(tag + channel, seq)` into every channel, honouring
/// credit and the backlog limit, then EndOfPartition.
pub async fn produce(mut outputs: Vec<OutputChannel>, pool: BufferPool, bell: Arc<Doorbell>, buffers: u64, tag: u32) {
    let n = outputs.len();
    let mut written = vec![0u64; n];
    let mut ended = vec![false; n];
    let mut writer = RecordWriter::new();
    loop {
        let mut progressed = false;
        for (c, output) in outputs.iter_mut().enumerate() {
            output.try_send();
            if ended[c] || !output.is_available() {
                continue;
            }
            progressed = true;
            if written[c] == buffers {
                output.send_event(Event::EndOfPartition);
                ended[c] = true;
                continue;
            }
            let mut buffer = pool.take().expect("the producer pool is sized for backlog plus credit");
            for i in 0..RECORDS_PER_BUFFER {
                writer.write(&mut buffer, &(tag + c as u32, written[c] * RECORDS_PER_BUFFER + i)).unwrap();
            }
            output.send_buffer(buffer.freeze());
            written[c] += 1;
        }
        if ended.iter().all(|e| *e) && outputs.iter().all(|o| !o.has_pending()) {
            return;
        }
        if !progressed {
            wait_bell(&bell).await;
        }
        glommio::yield_if_needed().await;
    }
}

/// Reads every channel through an InputGate and checks each record is the next of its channel
/// (tagged `tag + channel`); returns the records per channel.
pub async fn consume(mut gate: InputGate, bell: Arc<Doorbell>, tag: u32) -> Vec<u64> {
    let n = gate.num_channels();
    let mut next = vec![0u64; n];
    let mut ended = vec![false; n];
    while !ended.iter().all(|e| *e) {
        match gate.poll_next() {
            Some((c, ChannelItem::Buffer(buffer))) => {
                // SAFETY: the session ran validate_buffer::<Rec> on this buffer before pushing it,
                // and pool buffers are 16-byte aligned.
                for archived in unsafe { RecordIter::<Rec>::new(buffer.as_slice()) } {
                    assert_eq!(
                        deserialize::<Rec>(archived),
                        (tag + c as u32, next[c]),
                        "channel {c}: out of order, duplicate or another job's"
                    );
                    next[c] += 1;
                }
                drop(buffer);
                gate.release(c);
            }
            Some((c, ChannelItem::Event(Event::EndOfPartition))) => ended[c] = true,
            Some((c, ChannelItem::Event(other))) => panic!("channel {c}: unexpected event {other:?}"),
            None => wait_bell(&bell).await,
        }
    }
    next
}

pub fn frame_bytes(message: Message<'_>) -> Vec<u8> {
    let mut bytes = Vec::new();
    message.encode_into(&mut bytes).unwrap();
    bytes
}

/// A TaskManager played by hand over a std socket.
pub struct RawPeer {
    pub stream: std::net::TcpStream,
    pending: Vec<u8>,
}

impl RawPeer {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WATCHDOG)).unwrap();
        Self { stream, pending: Vec::new() }
    }

    pub fn send(&mut self, message: Message<'_>) {
        self.stream.write_all(&frame_bytes(message)).unwrap();
    }

    /// The next whole frame (its debug form and its bytes), or `None` at EOF.
    pub fn next_frame(&mut self) -> Option<(String, Vec<u8>)> {
        loop {
            if let Ok((message, used)) = decode_frame(&self.pending) {
                let text = format!("{message:?}");
                let bytes: Vec<u8> = self.pending.drain(..used).collect();
                return Some((text, bytes));
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Frames until one whose debug form starts with `prefix` (included); panics at EOF.
    pub fn until(&mut self, prefix: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let (text, _) = self.next_frame().unwrap_or_else(|| panic!("EOF before {prefix}: {seen:?}"));
            let done = text.starts_with(prefix);
            seen.push(text);
            if done {
                return seen;
            }
        }
    }

    /// Every frame until the other side closes.
    pub fn rest(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.next_frame().map(|(text, _)| text)).collect()
    }

    /// The dialer's handshake as TaskManager `n` with `auth`: HELLO, the acceptor's HELLO,
    /// AUTH, the acceptor's AUTH.
    pub fn handshake(&mut self, n: u8, auth: &ClusterAuth) {
        let hello = Hello { tm: tm(n), cluster_token: *auth.token(), nonce: [0x99; 32], pid: 1, heartbeat_ms: 200 };
        let mine = frame_bytes(Message::Hello(hello));
        self.stream.write_all(&mine).unwrap();
        let (text, theirs) = self.next_frame().expect("the acceptor's HELLO");
        assert!(text.starts_with("Hello"), "{text}");
        let mac = auth_mac(auth, &mine, &theirs, Role::Dialer);
        self.send(Message::Auth { mac });
        let (text, _) = self.next_frame().expect("the acceptor's AUTH");
        assert!(text.starts_with("Auth"), "{text}");
    }

    /// Answers every job end frame with JOB_CLOSE until CLOSE, then closes too.
    pub fn ack_and_close(&mut self) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some((text, bytes)) = self.next_frame() {
            let (message, _) = decode_frame(&bytes).unwrap();
            match message {
                Message::Cancel { deployment, .. } | Message::Error { deployment: deployment @ 1.., .. } => {
                    self.send(Message::JobClose { deployment })
                }
                Message::Close => {
                    self.send(Message::Close);
                    self.stream.shutdown(std::net::Shutdown::Write).unwrap();
                    seen.push(text);
                    seen.extend(self.rest());
                    return seen;
                }
                _ => {}
            }
            seen.push(text);
        }
        seen
    }
}

pub const HEADER: usize = HEADER_BYTES;

impl RawPeer {
    /// Accepts one connection on `listener` and runs the acceptor's handshake as TaskManager
    /// `n` with `auth`.
    pub fn accept(listener: &std::net::TcpListener, n: u8, auth: &ClusterAuth) -> Self {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(WATCHDOG)).unwrap();
        let mut peer = Self { stream, pending: Vec::new() };
        let (text, theirs) = peer.next_frame().expect("the dialer's HELLO");
        assert!(text.starts_with("Hello"), "{text}");
        let hello = Hello { tm: tm(n), cluster_token: *auth.token(), nonce: [0x98; 32], pid: 2, heartbeat_ms: 200 };
        let mine = frame_bytes(Message::Hello(hello));
        peer.stream.write_all(&mine).unwrap();
        let mac = auth_mac(auth, &theirs, &mine, Role::Acceptor);
        peer.send(Message::Auth { mac });
        let (text, _) = peer.next_frame().expect("the dialer's AUTH");
        assert!(text.starts_with("Auth"), "{text}");
        peer
    }
}
