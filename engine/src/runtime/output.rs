//! The end of a chain that feeds exchanges: it picks the channel of each record (forward,
//! round-robin, rescale, broadcast or key group), writes the record as an rkyv archive into that
//! channel's open buffer, and hands full buffers to the channel, which ships them when credit
//! allows. Partly filled buffers are sent when the task goes idle, when the buffer timeout
//! expires, and before any event that must follow them.
//!
//! Bound: a task holds at most `allowance` buffers (one open and `max_backlog` finished per
//! channel, plus a fixed overdraft). When a record needs a fresh buffer and the allowance is
//! used up, the output parks that record and the rest of its batch and reports `Blocked`; the
//! task then waits for credit and the parked records go out first when it arrives. The parked
//! records are at most one batch of the chain's output, which already existed in memory.
//!
//! Checkpoint barriers: an aligned barrier is an ordinary event (behind parked records, then
//! behind the channel's queued buffers). An unaligned barrier (a priority event) overtakes
//! everything at once: the open buffers are sent, and the barrier goes to every channel ahead of
//! the buffers (and the events between them) waiting for credit, of restored channel state still
//! to send, and of the parked records. All of that becomes the task's output channel state
//! (`OutputCapture`, collected while the task emits the barrier, `capturing`): the queued
//! buffers' bytes, serialized copies of the parked records in the channels they will take, and
//! the watermarks and statuses with their places among them. The overtaken items stay where they
//! are and go out after the barrier, under credit, in order. A restored task's output channel
//! state is validated and sent on its channels, buffers in full buffers from the pool and under
//! credit, events in their places, before any new output.

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use corestream_netstack::record::{validate_buffer, Written};
use corestream_netstack::{
    BufferBuilder, BufferPool, Data, Event, InFlightCopy, OutputChannel, RecordWriter, SendOutcome, BUFFER_SIZE,
};
use corestream_state::{key_group_for_hash, operator_index_for_key_group};

use super::build::{KeyHashFn, OutputCtx, OutputEdgeRt};
use super::metrics::TaskCounters;
use crate::checkpoint::channel_state::{check_channels, AlignedBuffer, Direction, Replay};
use crate::checkpoint::{ChannelState, PartLayout, TaskSnapshot, TimeEvent};
use crate::error::TaskError;
use crate::graph::execution::OVERDRAFT_BUFFERS_PER_TASK;
use crate::graph::Partitioning;
use crate::operators::{enter_node, Control, Emit, FlushReason, Readiness};

/// Name of the state part that tells a restored output which task-wide channel indices are its.
const LAYOUT_PART: &str = "network-output";

/// What the network outputs of one task captured for one unaligned checkpoint: the bytes each
/// barrier overtook, by task-wide channel index (outputs are numbered in the order the barrier
/// reached them, then by edge and channel), and where each output's channels start.
#[derive(Debug, Default)]
pub(crate) struct OutputCapture {
    next_base: u32,
    pub channels: Vec<ChannelState>,
    /// (node, part name, first channel, channels) of every output the barrier reached.
    layout: Vec<(usize, String, u32, u32)>,
    pub bytes: u64,
}

pub(crate) type CaptureSink = Rc<RefCell<OutputCapture>>;

impl OutputCapture {
    fn allocate(&mut self, node: usize, name: &str, channels: u32) -> u32 {
        let base = self.next_base;
        self.next_base += channels;
        self.layout.push((node, name.to_string(), base, channels));
        base
    }

    /// Moves the captured channels into `snapshot`, with a state part per output that has any,
    /// naming its channel range (so a restored output finds its channels by node and name).
    pub fn put_into(&mut self, snapshot: &mut TaskSnapshot) {
        let channels = std::mem::take(&mut self.channels);
        for (node, name, base, count) in &self.layout {
            if !channels.iter().any(|c| (*base..base + count).contains(&c.channel)) {
                continue;
            }
            let bytes = [base.to_le_bytes(), count.to_le_bytes()].concat();
            let part = crate::checkpoint::StatePart { name: name.clone(), layout: PartLayout::Subtask, bytes };
            match snapshot.nodes.iter_mut().find(|(n, _)| *n as usize == *node) {
                Some((_, parts)) => parts.parts.push(part),
                None => snapshot.nodes.push((
                    *node as u32,
                    crate::checkpoint::OperatorStateParts { parts: vec![part], shared_root: None },
                )),
            }
        }
        snapshot.output_channels.extend(channels);
    }
}

thread_local! {
    static CAPTURE: RefCell<Option<CaptureSink>> = const { RefCell::new(None) };
}

/// Runs `f`, which emits an unaligned barrier through a task's chain, with the task's network
/// outputs adding what the barrier overtook to `sink`. The chain runs synchronously on this
/// thread, so the scope is exactly the outputs of this task.
pub(crate) fn capturing<R>(sink: &CaptureSink, f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CAPTURE.with(|c| *c.borrow_mut() = None);
        }
    }
    CAPTURE.with(|c| *c.borrow_mut() = Some(sink.clone()));
    let _reset = Reset;
    f()
}

/// An event waiting behind parked records, with the number of records parked before it
/// (counted since the output started, like `parked_out`).
struct ParkedEvent {
    before: u64,
    event: Event,
}

/// Serialized copies of what one channel has parked, built when an unaligned barrier overtakes
/// it: full buffers and the events between them, and the buffer being filled.
#[derive(Default)]
struct ParkedCopy {
    copy: InFlightCopy,
    open: Vec<u8>,
    len: usize,
}

impl ParkedCopy {
    fn write<T: Data>(&mut self, writer: &mut RecordWriter, record: &T, node: usize) -> Result<(), TaskError> {
        loop {
            if self.open.is_empty() {
                self.open = vec![0; BUFFER_SIZE];
                self.len = 0;
            }
            match writer.write_unpooled(&mut self.open, &mut self.len, record) {
                Ok(Written::Done) => return Ok(()),
                Ok(Written::BufferFull) => self.close(),
                Err(cause) => return Err(TaskError::Record { node, cause }),
            }
        }
    }

    fn close(&mut self) {
        if self.len > 0 {
            let mut bytes = std::mem::take(&mut self.open);
            bytes.truncate(self.len);
            self.copy.buffers.push(bytes);
            self.len = 0;
        }
    }

    fn event(&mut self, event: Event) {
        self.close();
        self.copy.events.push((self.copy.buffers.len(), event));
    }

    fn buffer(&mut self, bytes: &[u8]) {
        self.close();
        self.copy.buffers.push(bytes.to_vec());
    }

    fn finish(mut self) -> InFlightCopy {
        self.close();
        self.copy
    }
}

/// An item of restored output channel state.
enum Restored {
    Buffer(Vec<u8>),
    Event(Event),
}

enum Selector<T> {
    Single,
    RoundRobin { next: usize },
    Hash { key_hash: Arc<KeyHashFn<T>>, max_parallelism: u32, consumers: u32, keyed_node: usize },
    Broadcast,
}

struct EdgeOut<T> {
    selector: Selector<T>,
    channels: Vec<OutputChannel>,
    open: Vec<Option<BufferBuilder>>,
}

/// Where writing a record stopped for want of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resume {
    edge: usize,
    /// Next broadcast channel to write (other selectors write one channel per record).
    channel: usize,
}

pub(crate) struct NetworkOutput<T: Data> {
    edges: Vec<EdgeOut<T>>,
    writer: RecordWriter,
    pool: BufferPool,
    counters: Arc<TaskCounters>,
    node: usize,
    unflushed: bool,
    held: u32,
    /// Buffers the output may hold at most: open and backlog per channel and the overdraft.
    allowance: u32,
    /// The state part naming this output's channels in a checkpoint.
    layout_name: String,
    /// Restored output channel state still to send, in order: (edge, channel, item).
    replay: VecDeque<(usize, usize, Restored)>,
    marker_next: usize,
    /// Key hashes of the batch being written, per edge (empty for edges not hashed).
    hashes: Vec<Vec<u64>>,
    /// Records waiting for buffers, in order; those before `parked_head` are written already
    /// and are dropped when the rest is. Writing from the head leaves the others in place, so
    /// a producer that gets one buffer of credit at a time pays for the records it writes, not
    /// for the whole parked batch.
    parked: Vec<T>,
    parked_head: usize,
    /// Key hashes of the parked records, per edge, index for index with `parked`.
    parked_hashes: Vec<Vec<u64>>,
    /// Events waiting behind parked records.
    parked_events: VecDeque<ParkedEvent>,
    parked_out: u64,
    resume: Resume,
}

impl<T: Data> NetworkOutput<T> {
    pub(crate) fn new(edges: Vec<OutputEdgeRt>, ctx: OutputCtx) -> Self {
        let channel_count: u32 = edges.iter().map(|e| e.channels.len() as u32).sum();
        let layout_name = match edges.first().and_then(|e| e.side.as_ref()) {
            Some(side) => format!("{LAYOUT_PART}/{}", side.tag),
            None => LAYOUT_PART.to_string(),
        };
        let allowance = channel_count * (1 + ctx.max_backlog) + OVERDRAFT_BUFFERS_PER_TASK;
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
                        Selector::Hash {
                            key_hash,
                            max_parallelism: e.max_parallelism,
                            consumers: e.consumer_parallelism,
                            keyed_node: e.consumer_node,
                        }
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
            held: 0,
            allowance,
            layout_name,
            replay: VecDeque::new(),
            marker_next: 0,
            hashes: Vec::new(),
            parked: Vec::new(),
            parked_head: 0,
            parked_hashes: Vec::new(),
            parked_events: VecDeque::new(),
            parked_out: 0,
            resume: Resume { edge: 0, channel: 0 },
        }
    }

    fn account(&mut self, outcome: SendOutcome) {
        if outcome.buffers_sent > 0 {
            self.held -= outcome.buffers_sent;
            TaskCounters::inc(&self.counters.buffers_out, outcome.buffers_sent as u64);
        }
    }

    /// A buffer to write into, if the allowance has one left.
    fn fresh_buffer(&mut self) -> Result<Option<BufferBuilder>, TaskError> {
        if self.held >= self.allowance {
            return Ok(None);
        }
        let fresh = self.pool.take()?;
        self.held += 1;
        Ok(Some(fresh))
    }

    /// Writes `record` to one channel; false when it needs a buffer and the allowance is used.
    #[inline]
    fn write(&mut self, edge: usize, ch: usize, record: &T) -> Result<bool, TaskError> {
        loop {
            if self.edges[edge].open[ch].is_none() {
                let Some(fresh) = self.fresh_buffer()? else {
                    return Ok(false);
                };
                self.edges[edge].open[ch] = Some(fresh);
            }
            let e = &mut self.edges[edge];
            let buf = e.open[ch].as_mut().expect("open buffer");
            match self.writer.write(buf, record) {
                Ok(Written::Done) => return Ok(true),
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

    /// Writes one record to every edge from `from` on; returns where it stopped, if it did.
    #[inline]
    fn write_record(&mut self, record: &T, hash_index: usize, from: Resume) -> Result<Option<Resume>, TaskError> {
        for edge in from.edge..self.edges.len() {
            let n = self.edges[edge].channels.len();
            match &self.edges[edge].selector {
                Selector::Single => {
                    if !self.write(edge, 0, record)? {
                        return Ok(Some(Resume { edge, channel: 0 }));
                    }
                }
                Selector::RoundRobin { next } => {
                    let ch = *next;
                    if !self.write(edge, ch, record)? {
                        return Ok(Some(Resume { edge, channel: 0 }));
                    }
                    self.edges[edge].selector = Selector::RoundRobin { next: if ch + 1 == n { 0 } else { ch + 1 } };
                }
                Selector::Hash { max_parallelism, consumers, .. } => {
                    let kg = key_group_for_hash(self.hashes[edge][hash_index], *max_parallelism);
                    let ch = operator_index_for_key_group(*max_parallelism, *consumers, kg) as usize;
                    if !self.write(edge, ch, record)? {
                        return Ok(Some(Resume { edge, channel: 0 }));
                    }
                }
                Selector::Broadcast => {
                    let start = if edge == from.edge { from.channel } else { 0 };
                    for ch in start..n {
                        if !self.write(edge, ch, record)? {
                            return Ok(Some(Resume { edge, channel: ch }));
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// Key hashes of `records` for every hash edge: one dynamic call per edge and batch.
    fn hash_batch(&mut self, records: &[T]) {
        self.hashes.resize_with(self.edges.len(), Vec::new);
        for (e, edge) in self.edges.iter().enumerate() {
            self.hashes[e].clear();
            if let Selector::Hash { key_hash, keyed_node, .. } = &edge.selector {
                // The key selector is user code of the keyed operator it feeds.
                enter_node(*keyed_node);
                key_hash(records, &mut self.hashes[e]);
                enter_node(self.node);
            }
        }
    }

    /// Writes `records` in order from `from`; returns the index of the first record that could
    /// not be written for want of a buffer (`self.resume` then says where inside it to resume).
    /// `self.hashes` must hold the records' key hashes from index `hash_base` on.
    fn write_from(&mut self, records: &[T], hash_base: usize, mut from: Resume) -> Result<Option<usize>, TaskError> {
        enter_node(self.node);
        self.unflushed = true;
        if self.edges.len() == 1 && !matches!(self.edges[0].selector, Selector::Broadcast) {
            self.resume = Resume { edge: 0, channel: 0 };
            return self.write_single_edge(records, hash_base);
        }
        for (i, record) in records.iter().enumerate() {
            if let Some(stop) = self.write_record(record, hash_base + i, from)? {
                self.resume = stop;
                return Ok(Some(i));
            }
            from = Resume { edge: 0, channel: 0 };
        }
        Ok(None)
    }

    fn has_parked(&self) -> bool {
        self.parked_head < self.parked.len() || !self.parked_events.is_empty() || !self.replay.is_empty()
    }

    /// Moves `records[from..]` and their hashes behind the parked items.
    fn park_back(&mut self, records: &mut Vec<T>, from: usize) {
        if self.parked_head > 0 {
            self.parked.drain(..self.parked_head);
            for hashes in &mut self.parked_hashes {
                hashes.drain(..self.parked_head.min(hashes.len()));
            }
            self.parked_head = 0;
        }
        self.parked.extend(records.drain(from..));
        records.clear();
        self.parked_hashes.resize_with(self.edges.len(), Vec::new);
        for (e, hashes) in self.hashes.iter_mut().enumerate() {
            if hashes.len() > from {
                self.parked_hashes[e].extend(hashes.drain(from..));
            }
        }
    }

    /// Writes parked records and sends parked events, in order, while buffers are available;
    /// true when nothing is left.
    fn unpark(&mut self) -> Result<bool, TaskError> {
        if !self.send_replay()? {
            return Ok(false);
        }
        loop {
            while self.parked_events.front().is_some_and(|p| p.before == self.parked_out) {
                let parked = self.parked_events.pop_front().expect("front event");
                self.send_event(&parked.event);
            }
            let waiting = self.parked.len() - self.parked_head;
            if waiting == 0 {
                self.parked.clear();
                self.parked_head = 0;
                for hashes in &mut self.parked_hashes {
                    hashes.clear();
                }
                return Ok(true);
            }
            let run = match self.parked_events.front() {
                Some(p) => waiting.min((p.before - self.parked_out) as usize),
                None => waiting,
            };
            let records = std::mem::take(&mut self.parked);
            std::mem::swap(&mut self.hashes, &mut self.parked_hashes);
            let head = self.parked_head;
            let stopped = self.write_from(&records[head..head + run], head, self.resume);
            std::mem::swap(&mut self.hashes, &mut self.parked_hashes);
            self.parked = records;
            let written = match stopped? {
                Some(i) => i,
                None => {
                    self.resume = Resume { edge: 0, channel: 0 };
                    run
                }
            };
            self.parked_head += written;
            self.parked_out += written as u64;
            if written < run {
                return Ok(false);
            }
        }
    }

    /// The common case, one edge that writes each record to one channel: the selector is
    /// matched once per batch and each arm is a tight loop.
    fn write_single_edge(&mut self, records: &[T], hash_base: usize) -> Result<Option<usize>, TaskError> {
        let n = self.edges[0].channels.len();
        let mut stopped_at = None;
        match &self.edges[0].selector {
            Selector::Single => {
                for (i, r) in records.iter().enumerate() {
                    if !self.write(0, 0, r)? {
                        stopped_at = Some(i);
                        break;
                    }
                }
            }
            Selector::RoundRobin { next } => {
                let mut ch = *next;
                for (i, r) in records.iter().enumerate() {
                    if !self.write(0, ch, r)? {
                        stopped_at = Some(i);
                        break;
                    }
                    ch = if ch + 1 == n { 0 } else { ch + 1 };
                }
                self.edges[0].selector = Selector::RoundRobin { next: ch };
            }
            Selector::Hash { max_parallelism, consumers, .. } => {
                let (max_p, consumers) = (*max_parallelism, *consumers);
                let hashes = std::mem::take(&mut self.hashes[0]);
                for (i, (r, h)) in records.iter().zip(&hashes[hash_base..]).enumerate() {
                    let ch = operator_index_for_key_group(max_p, consumers, key_group_for_hash(*h, max_p)) as usize;
                    if !self.write(0, ch, r)? {
                        stopped_at = Some(i);
                        break;
                    }
                }
                self.hashes[0] = hashes;
            }
            Selector::Broadcast => unreachable!("broadcast takes the general path"),
        }
        Ok(stopped_at)
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

    /// Sends restored output channel state, in order, while buffers are available; true when
    /// all of it is queued on its channels.
    fn send_replay(&mut self) -> Result<bool, TaskError> {
        while let Some((e, c, item)) = self.replay.pop_front() {
            let outcome = match item {
                Restored::Event(event) => self.edges[e].channels[c].send_event(event),
                Restored::Buffer(bytes) => {
                    let Some(mut buf) = self.fresh_buffer()? else {
                        self.replay.push_front((e, c, Restored::Buffer(bytes)));
                        return Ok(false);
                    };
                    buf.spare_mut()[..bytes.len()].copy_from_slice(&bytes);
                    buf.advance(bytes.len());
                    TaskCounters::inc(&self.counters.bytes_out, bytes.len() as u64);
                    self.edges[e].channels[c].send_buffer(buf.freeze())
                }
            };
            self.account(outcome);
        }
        Ok(true)
    }

    /// Sends an unaligned barrier ahead of everything queued on every channel, after the open
    /// buffers; with a capture, what it overtook goes there, channel `base + i` for the output's
    /// channel `i`: the channel's queued items, then its share of the restored state still to
    /// send and of the parked records and events.
    fn send_priority(&mut self, event: &Event, capture: Option<(CaptureSink, u32)>) -> Result<(), TaskError> {
        for (e, c) in self.all_channels() {
            self.flush_channel(e, c);
        }
        self.unflushed = false;
        let mut parked = match &capture {
            Some(_) if self.has_parked() => self.copy_parked()?,
            _ => Vec::new(),
        };
        let mut overtaken = InFlightCopy::default();
        for (i, (e, c)) in self.all_channels().into_iter().enumerate() {
            let outcome = match &capture {
                Some(_) => {
                    let (outcome, _) = self.edges[e].channels[c].send_priority_event(*event, &mut overtaken);
                    outcome
                }
                None => self.edges[e].channels[c].send_event(*event),
            };
            self.account(outcome);
            if let Some(copy) = parked.get_mut(i) {
                let base = overtaken.buffers.len();
                let copy = std::mem::take(copy);
                overtaken.events.extend(copy.events.into_iter().map(|(after, e)| (base + after, e)));
                overtaken.buffers.extend(copy.buffers);
            }
            if let Some((sink, base)) = &capture {
                let state = ChannelState::from_copy(base + i as u32, std::mem::take(&mut overtaken));
                if !state.is_empty() {
                    let mut sink = sink.borrow_mut();
                    sink.bytes += state.buffers.iter().map(|b| b.len() as u64).sum::<u64>();
                    sink.channels.push(state);
                }
            }
        }
        Ok(())
    }

    /// Sends an event that is not a priority event on every channel after the records before
    /// it (a latency marker on one channel, round-robin, as in Flink).
    fn send_event(&mut self, event: &Event) {
        debug_assert!(!event.is_priority(), "{event:?} takes send_priority");
        if let Event::LatencyMarker { .. } = event {
            let all = self.all_channels();
            if let Some(&(e, c)) = all.get(self.marker_next % all.len().max(1)) {
                self.marker_next += 1;
                self.flush_channel(e, c);
                let outcome = self.edges[e].channels[c].send_event(*event);
                self.account(outcome);
            }
            return;
        }
        if self.unflushed {
            let mut sent = false;
            for (e, c) in self.all_channels() {
                sent |= self.flush_channel(e, c);
            }
            self.unflushed = false;
            if sent {
                TaskCounters::inc(&self.counters.flushes_final, 1);
            }
        }
        for (e, c) in self.all_channels() {
            let outcome = self.edges[e].channels[c].send_event(*event);
            self.account(outcome);
        }
    }

    /// Serialized copies of what waits to be sent, per channel in `all_channels` order: the
    /// restored channel state, then the parked records (in the channels their selectors will
    /// pick) with the parked events that channel state keeps in their places.
    fn copy_parked(&mut self) -> Result<Vec<InFlightCopy>, TaskError> {
        let mut first = Vec::with_capacity(self.edges.len());
        let mut count = 0;
        for edge in &self.edges {
            first.push(count);
            count += edge.channels.len();
        }
        let mut copies: Vec<ParkedCopy> = (0..count).map(|_| ParkedCopy::default()).collect();
        for (e, c, item) in &self.replay {
            match item {
                Restored::Buffer(bytes) => copies[first[*e] + c].buffer(bytes),
                Restored::Event(event) => copies[first[*e] + c].event(*event),
            }
        }
        let mut round_robin: Vec<usize> = self
            .edges
            .iter()
            .map(|e| match e.selector {
                Selector::RoundRobin { next } => next,
                _ => 0,
            })
            .collect();
        let mut events = self.parked_events.iter().peekable();
        let mut from = self.resume;
        let waiting = self.parked.len() - self.parked_head;
        for i in 0..=waiting {
            while let Some(parked) = events.next_if(|p| p.before <= self.parked_out + i as u64) {
                if TimeEvent::of(&parked.event).is_some() {
                    copies.iter_mut().for_each(|copy| copy.event(parked.event));
                }
            }
            let Some(record) = self.parked.get(self.parked_head + i) else {
                break;
            };
            for e in from.edge..self.edges.len() {
                let n = self.edges[e].channels.len();
                match &self.edges[e].selector {
                    Selector::Single => copies[first[e]].write(&mut self.writer, record, self.node)?,
                    Selector::RoundRobin { .. } => {
                        let ch = round_robin[e];
                        round_robin[e] = if ch + 1 == n { 0 } else { ch + 1 };
                        copies[first[e] + ch].write(&mut self.writer, record, self.node)?;
                    }
                    Selector::Hash { max_parallelism, consumers, .. } => {
                        let hash = self.parked_hashes[e][self.parked_head + i];
                        let kg = key_group_for_hash(hash, *max_parallelism);
                        let ch = operator_index_for_key_group(*max_parallelism, *consumers, kg) as usize;
                        copies[first[e] + ch].write(&mut self.writer, record, self.node)?;
                    }
                    Selector::Broadcast => {
                        let start = if e == from.edge { from.channel } else { 0 };
                        for ch in start..n {
                            copies[first[e] + ch].write(&mut self.writer, record, self.node)?;
                        }
                    }
                }
            }
            from = Resume { edge: 0, channel: 0 };
        }
        Ok(copies.into_iter().map(ParkedCopy::finish).collect())
    }

    fn all_channels(&self) -> Vec<(usize, usize)> {
        self.edges.iter().enumerate().flat_map(|(e, edge)| (0..edge.channels.len()).map(move |c| (e, c))).collect()
    }
}

impl<T: Data> Control for NetworkOutput<T> {
    fn emit_event(&mut self, event: &Event) -> Result<(), TaskError> {
        let capture = match event.is_priority() {
            true => CAPTURE.with(|c| c.borrow().clone()).map(|sink| {
                let channels = self.edges.iter().map(|e| e.channels.len() as u32).sum();
                let base = sink.borrow_mut().allocate(self.node, &self.layout_name, channels);
                (sink, base)
            }),
            false => None,
        };
        if event.is_priority() {
            return self.send_priority(event, capture);
        }
        if !self.has_parked() {
            self.send_event(event);
            return Ok(());
        }
        // Events keep their place behind the records waiting for buffers.
        let before = self.parked_out + (self.parked.len() - self.parked_head) as u64;
        self.parked_events.push_back(ParkedEvent { before, event: *event });
        Ok(())
    }

    fn restore_state(&mut self, from: &TaskSnapshot) -> Result<(), TaskError> {
        let Some(part) = from.node(self.node).and_then(|parts| parts.get(&self.layout_name)) else {
            return Ok(());
        };
        let fail = |message: String| TaskError::Checkpoint { node: None, message };
        let channels: Vec<(usize, usize)> = self.all_channels();
        let (base, count) = match part.bytes.as_slice() {
            [b0, b1, b2, b3, c0, c1, c2, c3] => {
                (u32::from_le_bytes([*b0, *b1, *b2, *b3]), u32::from_le_bytes([*c0, *c1, *c2, *c3]))
            }
            other => return Err(fail(format!("state part '{}' has {} bytes, not 8", self.layout_name, other.len()))),
        };
        if count as usize != channels.len() {
            return Err(fail(format!(
                "the output of node {} had {count} channels when checkpointed and has {} now",
                self.node,
                channels.len()
            )));
        }
        let mine: Vec<ChannelState> = from
            .output_channels
            .iter()
            .filter(|c| (base..base + count).contains(&c.channel))
            .map(|c| ChannelState { channel: c.channel - base, ..c.clone() })
            .collect();
        check_channels(&mine, channels.len(), Direction::Output).map_err(|e| fail(e.to_string()))?;
        let mut aligned = AlignedBuffer::default();
        for mut state in mine {
            let (e, c) = channels[state.channel as usize];
            let channel = base + state.channel;
            for step in state.replay() {
                let item = match step {
                    Replay::Buffer(index) => {
                        let bytes = std::mem::take(&mut state.buffers[index]);
                        aligned
                            .load_valid(&bytes, validate_buffer::<T>, Direction::Output, channel, index)
                            .map_err(|e| fail(e.to_string()))?;
                        Restored::Buffer(bytes)
                    }
                    Replay::Event(event) => Restored::Event(event),
                };
                self.replay.push_back((e, c, item));
            }
        }
        Ok(())
    }

    fn finish_step(&mut self, _max_records: usize) -> Result<bool, TaskError> {
        self.unpark()
    }

    fn poll_ready(&mut self) -> Result<Readiness, TaskError> {
        for e in 0..self.edges.len() {
            for c in 0..self.edges[e].channels.len() {
                if self.edges[e].channels[c].has_pending() {
                    let outcome = self.edges[e].channels[c].try_send();
                    self.account(outcome);
                }
            }
        }
        if !self.unpark()? {
            return Ok(Readiness::Blocked);
        }
        let available = self.edges.iter().all(|e| e.channels.iter().all(|c| c.is_available()));
        Ok(if available { Readiness::Ready } else { Readiness::Blocked })
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
                FlushReason::Final => &self.counters.flushes_final,
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
        self.hash_batch(batch);
        if self.has_parked() {
            // Keep order: new records (and their hashes) queue behind the parked items.
            self.park_back(batch, 0);
            return Ok(());
        }
        if let Some(i) = self.write_from(batch, 0, Resume { edge: 0, channel: 0 })? {
            self.park_back(batch, i);
        }
        batch.clear();
        Ok(())
    }

    fn emit_archived(&mut self, _bytes: &[u8]) -> Result<(), TaskError> {
        panic!("internal error: a network output cannot be the head of a chain")
    }
}
