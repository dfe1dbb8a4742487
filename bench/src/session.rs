//! The engine's transport without a job: one [`PeerSession`] pair over loopback TCP (wire
//! protocol 2: handshake with AUTH, one deployment on the connection), driven by the production
//! `run_session` on two glommio executors (pinned to cores 0 and 1 when there
//! are two), moves full 32 KB buffers of `bench network` records under the same credit-based
//! flow control as a job (the job's [`CreditConfig`]), and the receiving side validates
//! every buffer with the record type's rkyv validation before its consumer takes it. The
//! producer copies a buffer of records written once into each fresh pool buffer, and the
//! consumer only counts and releases what it gets, so the figure is the ceiling of the data
//! plane — framing, credit, validation, socket I/O — between the raw loopback pair and a real
//! job, whose records are also generated, archived and deserialized.

use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use corestream_netstack::handshake::{ClusterAuth, Role, TmId};
use corestream_netstack::record::validate_buffer;
use corestream_netstack::remote::{LocalIdentity, SessionConfig};
use corestream_netstack::{
    accept, dial, run_session, BufferPool, ChannelItem, CreditConfig, Doorbell, Event, InputGate, JobSpec,
    LocalChannel, NetConfig, OutputChannel, PeerSession, RecordWriter, SessionStats,
};
use glommio::net::TcpListener;
use glommio::timer::Timer;
use glommio::{LocalExecutorBuilder, Placement};

use crate::network::{payload, payload_len, ExchangeRecord};

const FINGERPRINT: u64 = 0x5e55_1011;
/// Longest a side waits for the other before the measurement fails.
const WATCHDOG: Duration = Duration::from_secs(120);
/// How often a side with nothing to do looks again even if its doorbell did not ring.
const IDLE_POLL: Duration = Duration::from_millis(5);
/// Locked io_uring memory per executor: within the 8 MiB `RLIMIT_MEMLOCK` beside the slots.
const IO_MEMORY: usize = 512 << 10;

/// One run of the session pair.
#[derive(Debug, Clone)]
pub struct SessionFigures {
    /// Payload bytes of the buffers that crossed, per second.
    pub gbps: f64,
    pub buffers: u64,
    pub bytes: u64,
    /// Times the producer had a buffer ready and no credit for it.
    pub credit_stalls: u64,
}

const DEPLOYMENT: u64 = 1;

/// TaskManager `tm` (0 dials, 1 accepts) of a cluster that exists for this measurement.
fn session(tm: u8, config: &NetConfig, pool: &BufferPool) -> PeerSession {
    let peer = 1 - tm;
    let config = SessionConfig {
        identity: LocalIdentity {
            tm: TmId([tm; 16]),
            pid: std::process::id(),
            auth: ClusterAuth::new([0x5e; 32], None),
        },
        role: if tm == 0 { Role::Dialer } else { Role::Acceptor },
        expected_peer: Some(TmId([peer; 16])),
        heartbeat_ms: config.heartbeat_ms(),
        open_timeout: config.open_timeout,
        nonce: [tm; 32],
        peer_name: format!("TaskManager {peer}"),
    };
    PeerSession::new(config, pool.clone())
}

fn placement(core: usize) -> Placement {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores >= 2 {
        Placement::Fixed(core)
    } else {
        Placement::Unbound
    }
}

/// A full buffer of `(key, count, payload)` records of about `record_bytes` bytes each.
fn template(record_bytes: usize) -> anyhow::Result<Vec<u8>> {
    let pool = BufferPool::new(1);
    let mut buffer = pool.take()?;
    let mut writer = RecordWriter::new();
    let len = payload_len(record_bytes);
    let mut i = 0u64;
    loop {
        let record: ExchangeRecord = (i, 1, payload(i, len));
        match writer.write(&mut buffer, &record).map_err(|e| anyhow!("record of {record_bytes} bytes: {e}"))? {
            corestream_netstack::record::Written::Done => i += 1,
            corestream_netstack::record::Written::BufferFull => break,
        }
    }
    anyhow::ensure!(i > 0, "a record of {record_bytes} bytes does not fit a 32 KB buffer");
    Ok(buffer.freeze().as_slice().to_vec())
}

async fn idle(bell: &Doorbell) {
    futures_lite::future::or(bell.wait(), async {
        Timer::new(IDLE_POLL).await;
    })
    .await;
}

/// Moves at least `bytes` in full buffers of `record_bytes` records from one executor to the
/// other through a session pair under `credit`; the clock runs from the producer's first buffer to the
/// consumer's end of partition.
pub fn session_gbps(bytes: u64, record_bytes: usize, credit: CreditConfig) -> anyhow::Result<SessionFigures> {
    let template = Arc::new(template(record_bytes)?);
    let buffers = bytes.div_ceil(template.len() as u64).max(1);
    let config = NetConfig::default();
    let (addr_tx, addr_rx) = mpsc::channel::<SocketAddr>();
    let (consumer_tx, consumer_rx) = mpsc::channel::<anyhow::Result<(u64, u64, Instant, SessionStats)>>();
    LocalExecutorBuilder::new(placement(1))
        .name("cs-bench-session-in")
        .io_memory(IO_MEMORY)
        .spawn(move || async move {
            let run = async {
                let pool = BufferPool::new(credit.exclusive_per_channel + credit.floating_per_gate + 2);
                let bell = Arc::new(Doorbell::new());
                let consumer_bell = Arc::new(Doorbell::new());
                let mut session = session(1, &config, &pool);
                let channel =
                    LocalChannel::new_remote_in(credit.exclusive_per_channel, bell.clone(), consumer_bell.clone());
                let mut job = JobSpec::new(DEPLOYMENT, FINGERPRINT, 1, bell.clone());
                job.add_inbound(0, channel.clone(), validate_buffer::<ExchangeRecord>);
                session.register_job(job).map_err(|e| anyhow!("registering the consumer's job: {e}"))?;
                let listener =
                    TcpListener::bind("127.0.0.1:0").map_err(|e| anyhow!("binding the consumer's listener: {e}"))?;
                let addr = listener.local_addr().map_err(|e| anyhow!("the consumer's listener address: {e}"))?;
                addr_tx.send(addr)?;
                let stream = accept(&listener, "the producer", &config).await?;
                let mut gate = InputGate::new(vec![channel], &credit);
                let consumer = glommio::spawn_local(async move {
                    let (mut received, mut bytes) = (0u64, 0u64);
                    loop {
                        match gate.poll_next() {
                            Some((c, ChannelItem::Buffer(buffer))) => {
                                received += 1;
                                bytes += buffer.len() as u64;
                                drop(buffer);
                                gate.release(c);
                            }
                            Some((_, ChannelItem::Event(Event::EndOfPartition))) => {
                                return (received, bytes, Instant::now())
                            }
                            Some((_, ChannelItem::Event(_))) => {}
                            None => idle(&consumer_bell).await,
                        }
                    }
                });
                let outcome = run_session(stream, session, bell, &config, "the producer".into(), || None).await?;
                let (received, bytes, ended) = consumer.await;
                anyhow::Ok((received, bytes, ended, outcome.stats))
            };
            let _ = consumer_tx.send(run.await);
        })
        .map_err(|e| anyhow!("starting the consumer executor: {e}"))?;
    let addr = addr_rx.recv_timeout(WATCHDOG).context("the consumer did not start listening")?;
    let (producer_tx, producer_rx) = mpsc::channel::<anyhow::Result<(Instant, u64)>>();
    LocalExecutorBuilder::new(placement(0))
        .name("cs-bench-session-out")
        .io_memory(IO_MEMORY)
        .spawn(move || async move {
            let run = async {
                let pool = BufferPool::new(64);
                let bell = Arc::new(Doorbell::new());
                let producer_bell = Arc::new(Doorbell::new());
                let mut session = session(0, &config, &pool);
                let channel = LocalChannel::new_remote_out(producer_bell.clone(), bell.clone());
                let mut job = JobSpec::new(DEPLOYMENT, FINGERPRINT, 1, bell.clone());
                job.add_outbound(0, channel.clone());
                session.register_job(job).map_err(|e| anyhow!("registering the producer's job: {e}"))?;
                let mut output = OutputChannel::new(channel, &credit);
                let stream = dial(addr, "the consumer", &config).await?;
                let producer_pool = pool.clone();
                let producer = glommio::spawn_local(async move {
                    let started = Instant::now();
                    let mut sent = 0u64;
                    while sent < buffers {
                        output.try_send();
                        if !output.is_available() {
                            idle(&producer_bell).await;
                            continue;
                        }
                        let mut buffer = producer_pool.take()?;
                        buffer.whole_mut()[..template.len()].copy_from_slice(&template);
                        buffer.set_len(template.len());
                        output.send_buffer(buffer.freeze());
                        sent += 1;
                        glommio::yield_if_needed().await;
                    }
                    output.send_event(Event::EndOfPartition);
                    while output.has_pending() {
                        output.try_send();
                        idle(&producer_bell).await;
                    }
                    anyhow::Ok((started, output.credit_stalls()))
                });
                run_session(stream, session, bell, &config, "the consumer".into(), || None).await?;
                producer.await
            };
            let _ = producer_tx.send(run.await);
        })
        .map_err(|e| anyhow!("starting the producer executor: {e}"))?;
    let (started, credit_stalls) = producer_rx.recv_timeout(WATCHDOG).context("the producer did not finish")??;
    let (received, bytes, ended, _stats) =
        consumer_rx.recv_timeout(WATCHDOG).context("the consumer did not finish")??;
    anyhow::ensure!(received == buffers, "{received} of {buffers} buffers arrived");
    let secs = ended.duration_since(started).as_secs_f64().max(1e-9);
    Ok(SessionFigures { gbps: bytes as f64 / secs / 1e9, buffers: received, bytes, credit_stalls })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_buffer_crosses_the_session_pair() {
        let figures = session_gbps(4 << 20, 256, CreditConfig::default()).unwrap();
        assert!(figures.buffers >= 128, "{figures:?}");
        assert!(figures.bytes >= 4 << 20, "{figures:?}");
    }
}
