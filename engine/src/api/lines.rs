//! Bounded line reading: the lines of any byte stream (a file, a pipe, a device with no line
//! breaks at all) with at most a fixed number of bytes of any line held in memory.
//!
//! [`LineReader`] reads through the reader's own buffer (`fill_buf`/`consume`, via
//! `read_until` on a length-limited view and `skip_until`): a line longer than the limit is
//! never buffered whole. Its first `max_line_bytes` bytes are kept (so a caller can show a
//! bounded prefix), the rest of it is skipped up to and including its `\n`, and the line is
//! returned marked as too long with its byte offset and full length. Invariant: the buffer a
//! caller passes never grows past `max_line_bytes + 1` bytes. Used by the text-file source
//! ([`crate::api::sources`]) and by applications that read lines at the edge of a job (the
//! command-line program's CSV reader).

use std::io::{self, BufRead, Read, Seek, SeekFrom};

/// Where a line was and what became of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineInfo {
    /// Byte offset of the line's first byte in the stream.
    pub offset: u64,
    /// Bytes the line took in the stream, its `\n` included.
    pub stream_bytes: u64,
    /// The line (without its line break) was longer than the limit: the buffer holds only its
    /// first `max_line_bytes` bytes.
    pub too_long: bool,
}

/// Lines of `R`, each held to at most `max_line_bytes` bytes (see the module documentation).
#[derive(Debug)]
pub struct LineReader<R> {
    reader: R,
    max_line_bytes: usize,
    offset: u64,
}

impl<R: BufRead> LineReader<R> {
    /// Reads lines from `reader`, whose next byte is at stream offset `offset`. A limit of 0
    /// is taken as 1.
    pub fn new(reader: R, max_line_bytes: usize, offset: u64) -> Self {
        Self { reader, max_line_bytes: max_line_bytes.max(1), offset }
    }

    /// The offset of the next byte to be read.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes
    }

    /// The reader.
    pub fn get_ref(&self) -> &R {
        &self.reader
    }

    /// The reader, positioned at [`offset`](Self::offset) (plus what its buffer holds).
    pub fn into_inner(self) -> R {
        self.reader
    }

    /// Reads the next line into `line` (cleared first), without its `\n` and without a `\r`
    /// before it; `None` at the end of the stream. A too-long line leaves its first
    /// `max_line_bytes` bytes in `line` (a `\r` among them is kept).
    pub fn read_line(&mut self, line: &mut Vec<u8>) -> io::Result<Option<LineInfo>> {
        line.clear();
        let offset = self.offset;
        // One byte more than the limit tells a line of exactly the limit from a longer one.
        let limit = self.max_line_bytes as u64 + 1;
        let n = (&mut self.reader).take(limit).read_until(b'\n', line)? as u64;
        if n == 0 {
            return Ok(None);
        }
        self.offset += n;
        let too_long = if line.last() == Some(&b'\n') {
            line.pop();
            false
        } else if n == limit {
            // No line break within the limit: skip the rest of the line, buffering none of it.
            line.truncate(self.max_line_bytes);
            let skipped = self.reader.skip_until(b'\n')? as u64;
            self.offset += skipped;
            true
        } else {
            false // the last line, without a line break
        };
        if !too_long && line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(Some(LineInfo { offset, stream_bytes: self.offset - offset, too_long }))
    }
}

impl<R: BufRead + Seek> LineReader<R> {
    /// Moves to stream offset `offset` (a line's first byte, as a checkpoint recorded it), when
    /// the stream's offsets are the reader's (it was created at offset 0 of the stream, or at
    /// the reader's own position).
    pub fn seek(&mut self, offset: u64) -> io::Result<()> {
        self.reader.seek(SeekFrom::Start(offset))?;
        self.offset = offset;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[u8], max: usize) -> Vec<(Vec<u8>, LineInfo)> {
        let mut r = LineReader::new(io::BufReader::with_capacity(4, text), max, 0);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(info) = r.read_line(&mut buf).unwrap() {
            assert!(buf.len() <= max, "the buffer holds at most the limit");
            out.push((buf.clone(), info));
        }
        assert_eq!(r.offset(), text.len() as u64);
        out
    }

    fn info(offset: u64, stream_bytes: u64, too_long: bool) -> LineInfo {
        LineInfo { offset, stream_bytes, too_long }
    }

    #[test]
    fn lines_within_the_limit_are_whole() {
        let got = lines(b"ab\r\ncdef\n\nxyz", 4);
        assert_eq!(
            got,
            vec![
                (b"ab".to_vec(), info(0, 4, false)),
                (b"cdef".to_vec(), info(4, 5, false)),
                (b"".to_vec(), info(9, 1, false)),
                (b"xyz".to_vec(), info(10, 3, false)),
            ]
        );
    }

    #[test]
    fn a_longer_line_keeps_its_prefix_and_the_next_line_follows() {
        let got = lines(b"one\n0123456789abcdef\ntwo\n0123456789", 5);
        assert_eq!(
            got,
            vec![
                (b"one".to_vec(), info(0, 4, false)),
                (b"01234".to_vec(), info(4, 17, true)),
                (b"two".to_vec(), info(21, 4, false)),
                (b"01234".to_vec(), info(25, 10, true)),
            ]
        );
        // Exactly the limit is not too long; one byte more is.
        assert_eq!(lines(b"12345\n", 5)[0].1, info(0, 6, false));
        assert!(lines(b"123456\n", 5)[0].1.too_long);
    }

    #[test]
    fn seeking_to_a_recorded_offset_reads_the_rest_as_before() {
        let text = b"alpha\nbeta\r\ngamma\ndelta";
        let all = lines(text, 16);
        for (k, (_, info)) in all.iter().enumerate() {
            let mut r = LineReader::new(io::BufReader::with_capacity(4, io::Cursor::new(&text[..])), 16, 0);
            let mut buf = Vec::new();
            r.read_line(&mut buf).unwrap();
            r.seek(info.offset).unwrap();
            let mut rest = Vec::new();
            while let Some(i) = r.read_line(&mut buf).unwrap() {
                rest.push((buf.clone(), i));
            }
            assert_eq!(rest, all[k..], "resumed at line {k}");
        }
    }

    #[test]
    fn an_endless_line_is_read_in_bounded_memory() {
        // 64 MiB of zeros without a line break, produced on the fly.
        let zeros = io::BufReader::with_capacity(64 * 1024, io::repeat(0).take(64 << 20));
        let mut r = LineReader::new(zeros, 1024, 0);
        let mut buf = Vec::new();
        let info = r.read_line(&mut buf).unwrap().unwrap();
        assert!(info.too_long);
        assert_eq!(info.stream_bytes, 64 << 20);
        assert!(buf.capacity() < 64 * 1024, "capacity {}", buf.capacity());
        assert_eq!(r.read_line(&mut buf).unwrap(), None);
    }
}
