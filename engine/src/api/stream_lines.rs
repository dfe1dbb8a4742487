//! Lines of a stream that is not a regular file (a pipe, a FIFO, a terminal, `/dev/stdin`),
//! read by a thread of its own. Opening a FIFO waits for a writer and reading a pipe waits for
//! data; either would stop every task of the slot and make the job deaf to cancellation, so
//! the slot's source only takes finished lines from a bounded channel and is woken through its
//! doorbell when the reader has sent more. The channel holds at most [`STREAM_LINES_QUEUED`]
//! lines, each at most the line limit, so memory stays bounded while the job is backpressured.
//! When the source is dropped (the job ended or was cancelled), the reader ends at its next
//! line, or when the writer closes the stream.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use corestream_netstack::Doorbell;
use crossbeam_channel::{Receiver, TryRecvError};

use crate::api::lines::{LineInfo, LineReader};

/// Lines waiting between the reader thread and the source.
pub(crate) const STREAM_LINES_QUEUED: usize = 256;

/// What the reader thread sends: a line (empty when it was too long), the end of the stream,
/// or the error that ended it with what it was doing.
enum Message {
    Line(LineInfo, Vec<u8>),
    End,
    Failed(&'static str, io::Error),
}

/// What the source gets from [`StreamLines::next_line`].
pub(crate) enum Next {
    Line(LineInfo),
    /// No line is ready; the doorbell rings when one is.
    Pending,
    End,
}

pub(crate) struct StreamLines {
    rx: Receiver<Message>,
    max_line_bytes: usize,
    offset: u64,
}

impl StreamLines {
    /// Starts the reader thread, which opens `path` itself (opening a FIFO blocks until a
    /// writer opens it).
    pub(crate) fn start(path: &Path, max_line_bytes: usize, bell: Arc<Doorbell>) -> io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded(STREAM_LINES_QUEUED);
        let path: PathBuf = path.to_path_buf();
        std::thread::Builder::new().name("cs-stream-reader".into()).spawn(move || {
            let send = |message: Message| {
                let sent = tx.send(message).is_ok();
                bell.ring();
                sent
            };
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) => {
                    send(Message::Failed("cannot open input file", e));
                    return;
                }
            };
            let mut lines = LineReader::new(BufReader::with_capacity(64 * 1024, file), max_line_bytes, 0);
            loop {
                let mut line = Vec::new();
                let message = match lines.read_line(&mut line) {
                    Ok(Some(info)) => {
                        if info.too_long {
                            line = Vec::new();
                        }
                        Message::Line(info, line)
                    }
                    Ok(None) => Message::End,
                    Err(e) => Message::Failed("cannot read input file", e),
                };
                let last = !matches!(message, Message::Line(..));
                if !send(message) || last {
                    return;
                }
            }
        })?;
        Ok(Self { rx, max_line_bytes, offset: 0 })
    }

    pub(crate) fn max_line_bytes(&self) -> usize {
        self.max_line_bytes
    }

    /// The byte offset after the last line taken.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// The next line into `line`, if the reader has one ready. Errors carry what failed.
    pub(crate) fn next_line(&mut self, line: &mut Vec<u8>) -> Result<Next, (&'static str, io::Error)> {
        match self.rx.try_recv() {
            Ok(Message::Line(info, bytes)) => {
                *line = bytes;
                self.offset = info.offset + info.stream_bytes;
                Ok(Next::Line(info))
            }
            Ok(Message::End) => Ok(Next::End),
            Ok(Message::Failed(what, e)) => Err((what, e)),
            Err(TryRecvError::Empty) => Ok(Next::Pending),
            Err(TryRecvError::Disconnected) => {
                Err(("cannot read input file", io::Error::other("the thread reading the stream ended early")))
            }
        }
    }
}
