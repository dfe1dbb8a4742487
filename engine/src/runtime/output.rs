//! The end of a chain that feeds exchanges: it picks the channel of each record (forward,
//! round-robin, rescale, broadcast or key group), writes the record as an rkyv archive into that
//! channel's open buffer, and hands full buffers to the channel, which ships them when credit
//! allows. Partly filled buffers are sent when the task goes idle, when the buffer timeout
//! expires, and before any event that must follow them.
//!
//! Bound: a task holds at most one open buffer and `max_backlog` finished buffers per channel
//! between batches, plus the overdraft of one batch; taking more is an error that names the
//! operator, never unbounded growth. The task loop stops feeding input while any channel is
//! over its backlog ([`Control::poll_ready`]).

use std::any::Any;
use std::sync::Arc;

use corestream_netstack::record::Written;
use corestream_netstack::{BufferBuilder, BufferPool, Data, Event, OutputChannel, RecordWriter, SendOutcome};
use corestream_state::{key_group_for_hash, operator_index_for_key_group};

use super::build::{KeyHashFn, OutputCtx, OutputEdgeRt};
use super::metrics::TaskCounters;
use crate::error::TaskError;
use crate::graph::execution::OVERDRAFT_BUFFERS_PER_TASK;
use crate::graph::Partitioning;
use crate::operators::{Control, Emit, FlushReason, Readiness};

enum Selector<T> {
    Single,
    RoundRobin { next: usize },
    Hash { key_hash: Arc<KeyHashFn<T>>, max_parallelism: u32, consumers: u32 },
    Broadcast,
}

struct EdgeOut<T> {
    selector: Selector<T>,
    channels: Vec<OutputChannel>,
    open: Vec<Option<BufferBuilder>>,
}

pub(crate) struct NetworkOutput<T: Data> {
    edges: Vec<EdgeOut<T>>,
    writer: RecordWriter,
    pool: BufferPool,
    counters: Arc<TaskCounters>,
    node: usize,
    unflushed: bool,
    allowance: u32,
    marker_next: usize,
}

impl<T: Data> NetworkOutput<T> {
    pub(crate) fn new(edges: Vec<OutputEdgeRt>, ctx: OutputCtx) -> Self {
        let channel_count: u32 = edges.iter().map(|e| e.channels.len() as u32).sum();
        let edges = edges
            .into_iter()
            .map(|e| {
                let selector = match e.partitioning {
                    Partitioning::Forward => Selector::Single,
                    Partitioning::Rebalance | Partitioning::Rescale => {
                        Selector::RoundRobin { next: ctx.subtask as usize % e.channels.len().max(1) }
                    }
                    Partitioning::Broadcast => Selector::Broadcast,
                    Partitioning::Hash => {
                        let key_hash = e
                            .key_hash
                            .as_ref()
                            .and_then(|k| (k.as_ref() as &dyn Any).downcast_ref::<Arc<KeyHashFn<T>>>())
                            .cloned()
                            .expect("internal error: hash edge without a key function of the record type");
                        Selector::Hash { key_hash, max_parallelism: e.max_parallelism, consumers: e.consumer_parallelism }
                    }
                };
                let n = e.channels.len();
                EdgeOut { selector, channels: e.channels, open: (0..n).map(|_| None).collect() }
            })
            .collect();
        Self {
            edges,
            writer: RecordWriter::new(),
            pool: ctx.pool,
            counters: ctx.counters,
            node: ctx.node,
            unflushed: false,
            allowance: channel_count * (1 + ctx.max_backlog) + OVERDRAFT_BUFFERS_PER_TASK,
            marker_next: 0,
        }
    }

    fn held_buffers(&self) -> u32 {
        self.edges
            .iter()
            .map(|e| {
                e.open.iter().filter(|b| b.is_some()).count() as u32
                    + e.channels.iter().map(|c| c.pending_buffers()).sum::<u32>()
            })
            .sum()
    }

    #[cold]
    fn take_buffer(&self) -> Result<BufferBuilder, TaskError> {
        let held = self.held_buffers();
        if held >= self.allowance {
            return Err(TaskError::User {
                node: self.node,
                message: format!(
                    "one input batch produced more output than the exchange may hold ({held} buffers of 32 KB, \
                     allowance {}); lower the batch size or the fan-out of this operator",
                    self.allowance
                ),
            });
        }
        Ok(self.pool.take()?)
    }

    fn account(&self, outcome: SendOutcome) {
        if outcome.buffers_sent > 0 {
            TaskCounters::inc(&self.counters.buffers_out, outcome.buffers_sent as u64);
        }
    }

    #[inline]
    fn write(&mut self, edge: usize, ch: usize, record: &T) -> Result<(), TaskError> {
        loop {
            if self.edges[edge].open[ch].is_none() {
                let fresh = self.take_buffer()?;
                self.edges[edge].open[ch] = Some(fresh);
            }
            let e = &mut self.edges[edge];
            let buf = e.open[ch].as_mut().expect("open buffer");
            match self.writer.write(buf, record) {
                Ok(Written::Done) => return Ok(()),
                Ok(Written::BufferFull) => {
                    let full = e.open[ch].take().expect("open buffer").freeze();
                    TaskCounters::inc(&self.counters.flushes_full, 1);
                    TaskCounters::inc(&self.counters.bytes_out, full.len() as u64);
                    let outcome = e.channels[ch].send_buffer(full);
                    self.account(outcome);
                }
                Err(cause) => return Err(TaskError::Record { node: self.node, cause }),
            }
        }
    }

    fn flush_channel(&mut self, edge: usize, ch: usize) -> bool {
        let e = &mut self.edges[edge];
        match e.open[ch].take() {
            Some(b) if !b.is_empty() => {
                TaskCounters::inc(&self.counters.bytes_out, b.len() as u64);
                let outcome = e.channels[ch].send_buffer(b.freeze());
                self.account(outcome);
                true
            }
            other => {
                e.open[ch] = other;
                false
            }
        }
    }

    fn all_channels(&self) -> Vec<(usize, usize)> {
        self.edges.iter().enumerate().flat_map(|(e, edge)| (0..edge.channels.len()).map(move |c| (e, c))).collect()
    }
}

impl<T: Data> Control for NetworkOutput<T> {
    fn emit_event(&mut self, event: &Event) -> Result<(), TaskError> {
        if let Event::LatencyMarker { .. } = event {
            // As in Flink, a latency marker takes one channel, chosen round-robin.
            let all = self.all_channels();
            if let Some(&(e, c)) = all.get(self.marker_next % all.len().max(1)) {
                self.marker_next += 1;
                self.flush_channel(e, c);
                let outcome = self.edges[e].channels[c].send_event(*event);
                self.account(outcome);
            }
            return Ok(());
        }
        self.flush(FlushReason::Final)?;
        for (e, c) in self.all_channels() {
            let outcome = self.edges[e].channels[c].send_event(*event);
            self.account(outcome);
        }
        Ok(())
    }

    fn finish_step(&mut self, _max_records: usize) -> Result<bool, TaskError> {
        Ok(true)
    }

    fn poll_ready(&mut self) -> Result<Readiness, TaskError> {
        let mut ready = Readiness::Ready;
        for e in 0..self.edges.len() {
            for c in 0..self.edges[e].channels.len() {
                let ch = &mut self.edges[e].channels[c];
                if ch.has_pending() {
                    let outcome = ch.try_send();
                    self.account(outcome);
                }
                if !self.edges[e].channels[c].is_available() {
                    ready = Readiness::Blocked;
                }
            }
        }
        Ok(ready)
    }

    fn flush(&mut self, reason: FlushReason) -> Result<bool, TaskError> {
        if !self.unflushed {
            return Ok(false);
        }
        let mut sent = false;
        for (e, c) in self.all_channels() {
            sent |= self.flush_channel(e, c);
        }
        self.unflushed = false;
        if sent {
            let counter = match reason {
                FlushReason::Idle => &self.counters.flushes_idle,
                FlushReason::Timeout => &self.counters.flushes_timeout,
                FlushReason::Final => &self.counters.flushes_full,
            };
            TaskCounters::inc(counter, 1);
        }
        Ok(sent)
    }

    fn has_unflushed(&self) -> bool {
        self.unflushed
    }

    fn close(&mut self) -> Result<(), TaskError> {
        self.emit_event(&Event::EndOfPartition)
    }

    fn drain(&mut self) -> Result<bool, TaskError> {
        let mut done = true;
        let mut stalls = 0;
        for e in 0..self.edges.len() {
            for c in 0..self.edges[e].channels.len() {
                let outcome = self.edges[e].channels[c].try_send();
                self.account(outcome);
                done &= !self.edges[e].channels[c].has_pending();
                stalls += self.edges[e].channels[c].credit_stalls();
            }
        }
        if done {
            self.counters.credit_stalls.store(stalls, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(done)
    }
}

impl<T: Data> Emit<T> for NetworkOutput<T> {
    #[inline]
    fn emit_batch(&mut self, batch: &mut Vec<T>) -> Result<(), TaskError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.unflushed = true;
        for edge in 0..self.edges.len() {
            let n = self.edges[edge].channels.len();
            match &self.edges[edge].selector {
                Selector::Single => {
                    for r in batch.iter() {
                        self.write(edge, 0, r)?;
                    }
                }
                Selector::RoundRobin { next } => {
                    let mut ch = *next;
                    for r in batch.iter() {
                        self.write(edge, ch, r)?;
                        ch += 1;
                        if ch == n {
                            ch = 0;
                        }
                    }
                    self.edges[edge].selector = Selector::RoundRobin { next: ch };
                }
                Selector::Hash { key_hash, max_parallelism, consumers } => {
                    let (key_hash, max_p, consumers) = (key_hash.clone(), *max_parallelism, *consumers);
                    for r in batch.iter() {
                        let kg = key_group_for_hash(key_hash(r), max_p);
                        let ch = operator_index_for_key_group(max_p, consumers, kg) as usize;
                        self.write(edge, ch, r)?;
                    }
                }
                Selector::Broadcast => {
                    for r in batch.iter() {
                        for ch in 0..n {
                            self.write(edge, ch, r)?;
                        }
                    }
                }
            }
        }
        batch.clear();
        Ok(())
    }

    fn emit_archived(&mut self, _bytes: &[u8]) -> Result<(), TaskError> {
        panic!("internal error: a network output cannot be the head of a chain")
    }
}
