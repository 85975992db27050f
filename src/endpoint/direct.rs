//! Echoes written straight from the read buffer ("cork" without the copy).
//!
//! `/echo` unmasks a frame in place in the bytes just read (the decoder
//! does, §5.3), so the echo's payload is already there, unmasked: when the
//! connection's out queue is empty, the echo is recorded here as a header
//! and a range of those bytes instead of being copied into the queue, and
//! the worker writes header + payload of every such echo with one `writev`
//! before the read buffer is reused. Only what the kernel does not take is
//! copied into the out queue. Saves a copy of every echoed payload (16 KiB
//! echo: docs/benchmarks.md).
//!
//! Order: an echo is recorded only while nothing is queued; anything queued
//! after it (a pong, a close reply, an echo copied because the queue was no
//! longer empty) goes after it on the wire: [`write`] writes the recorded
//! echoes first, or puts them in front of the queue.

use std::io::{self, IoSlice, Write};
use std::ops::Range;

use super::OutQueue;
use crate::proto::frame::{encode_header, OpCode, MAX_HEADER};

/// Frames per `writev` (two slices each; Linux allows 1024).
const BATCH: usize = 32;

/// One echo: its frame header, and where its unmasked payload lies in the
/// bytes the endpoint was handed.
#[derive(Clone, Copy, Debug)]
pub struct DirectEcho {
    head: [u8; MAX_HEADER],
    head_len: u8,
    start: usize,
    len: usize,
}

impl DirectEcho {
    /// An unmasked, uncompressed, final frame (server role) for the payload
    /// at `payload` of the handled bytes.
    pub fn new(text: bool, payload: Range<usize>) -> DirectEcho {
        let op = if text { OpCode::Text } else { OpCode::Binary };
        let mut head = [0u8; MAX_HEADER];
        let n = encode_header(&mut head, true, 0, op, None, payload.len() as u64);
        DirectEcho {
            head,
            head_len: n as u8,
            start: payload.start,
            len: payload.len(),
        }
    }

    /// The payload was found this far into a slice that starts `by` bytes
    /// into the handled bytes.
    pub fn shifted(mut self, by: usize) -> DirectEcho {
        self.start += by;
        self
    }

    fn head(&self) -> &[u8] {
        &self.head[..self.head_len as usize]
    }

    fn payload<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        &data[self.start..self.start + self.len]
    }

    fn wire_len(&self) -> usize {
        self.head_len as usize + self.len
    }
}

/// Write `echoes` (payloads in `data`) to `w` ahead of whatever `out`
/// holds; what the kernel does not take (or everything, when `out` is not
/// empty: something was queued after the echoes) goes into `out`, in order.
/// Returns the bytes written. A write error is left for the out queue's
/// next flush to meet (the unwritten echoes are queued).
pub fn write<W: Write>(w: &mut W, out: &mut OutQueue, echoes: &[DirectEcho], data: &[u8]) -> usize {
    if !out.is_empty() {
        // Queued after the echoes (the decoder's pong or close reply, or an
        // echo copied once the queue was not empty): the echoes go first.
        let mut front = Vec::with_capacity(echoes.iter().map(DirectEcho::wire_len).sum());
        for e in echoes {
            front.extend_from_slice(e.head());
            front.extend_from_slice(e.payload(data));
        }
        out.put_front(front);
        return 0;
    }
    let mut written = 0;
    let mut done = 0; // echoes fully written
    while done < echoes.len() {
        let batch = &echoes[done..(done + BATCH).min(echoes.len())];
        let mut iov = [IoSlice::new(&[]); 2 * BATCH];
        for (i, e) in batch.iter().enumerate() {
            iov[2 * i] = IoSlice::new(e.head());
            iov[2 * i + 1] = IoSlice::new(e.payload(data));
        }
        let want: usize = batch.iter().map(DirectEcho::wire_len).sum();
        let n = match w.write_vectored(&iov[..2 * batch.len()]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // WouldBlock, or an error the next flush reports.
            Err(_) => 0,
        };
        written += n;
        if n == want {
            done += batch.len();
            continue;
        }
        // The kernel took part: queue the rest, from where it stopped.
        let mut skip = n;
        for e in &echoes[done..] {
            for part in [e.head(), e.payload(data)] {
                if skip >= part.len() {
                    skip -= part.len();
                } else {
                    crate::proto::Output::put(out, &part[skip..]);
                    skip = 0;
                }
            }
        }
        break;
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::put_frame;

    /// Takes at most `cap` bytes per call in total `budget`, then blocks.
    struct Trickle {
        got: Vec<u8>,
        cap: usize,
        budget: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.cap).min(self.budget);
            self.got.extend_from_slice(&buf[..n]);
            self.budget -= n;
            Ok(n)
        }
        /// Gathers like writev(2): as much of the slices, in order, as it
        /// takes.
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.cap - n).min(self.budget);
                self.got.extend_from_slice(&b[..take]);
                self.budget -= take;
                n += take;
                if take < b.len() {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The bytes of `msgs` as frames, what the copying path would queue.
    fn framed(msgs: &[(bool, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        for &(text, p) in msgs {
            put_frame(&mut v, if text { OpCode::Text } else { OpCode::Binary }, p);
        }
        v
    }

    fn echoes_of(data: &[u8], sizes: &[usize]) -> Vec<DirectEcho> {
        let mut at = 0;
        let mut v = Vec::new();
        for (i, &s) in sizes.iter().enumerate() {
            v.push(DirectEcho::new(i % 2 == 0, at..at + s));
            at += s;
        }
        assert!(at <= data.len());
        v
    }

    fn drain(out: &mut OutQueue, w: &mut Trickle) {
        w.budget = usize::MAX;
        w.cap = usize::MAX;
        out.flush(w).expect("flush");
        assert!(out.is_empty());
    }

    #[test]
    fn every_split_of_the_write_keeps_the_bytes_and_their_order() {
        let data: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        let sizes = [20, 0, 125, 126, 65_535 - 300, 16];
        let echoes = echoes_of(&data, &sizes);
        let mut at = 0;
        let msgs: Vec<(bool, &[u8])> = sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                at += s;
                (i % 2 == 0, &data[at - s..at])
            })
            .collect();
        let want = framed(&msgs);
        for budget in [
            0,
            1,
            2,
            21,
            22,
            23,
            200,
            60_000,
            want.len() - 1,
            want.len(),
            usize::MAX,
        ] {
            for cap in [1, 7, 4096, usize::MAX] {
                if cap == 1 && budget > 1000 {
                    continue;
                }
                let mut w = Trickle {
                    got: Vec::new(),
                    cap,
                    budget,
                };
                let mut out = OutQueue::new();
                let n = write(&mut w, &mut out, &echoes, &data);
                assert_eq!(n, w.got.len());
                assert_eq!(n + out.len(), want.len(), "budget {budget} cap {cap}");
                drain(&mut out, &mut w);
                assert_eq!(w.got, want, "budget {budget} cap {cap}");
            }
        }
    }

    #[test]
    fn more_echoes_than_one_writev_holds() {
        let data = vec![b'x'; 100 * 3];
        let echoes: Vec<_> = (0..100)
            .map(|i| DirectEcho::new(true, i * 3..i * 3 + 3))
            .collect();
        let want = framed(&vec![(true, &b"xxx"[..]); 100]);
        let mut w = Trickle {
            got: Vec::new(),
            cap: usize::MAX,
            budget: usize::MAX,
        };
        let mut out = OutQueue::new();
        assert_eq!(write(&mut w, &mut out, &echoes, &data), want.len());
        assert!(out.is_empty());
        assert_eq!(w.got, want);
    }

    #[test]
    fn what_was_queued_after_the_echoes_stays_after_them() {
        let data = b"hello world".to_vec();
        let echoes = vec![DirectEcho::new(true, 0..5), DirectEcho::new(false, 6..11)];
        let mut out = OutQueue::new();
        put_frame(&mut out, OpCode::Pong, b"p");
        let mut w = Trickle {
            got: Vec::new(),
            cap: usize::MAX,
            budget: usize::MAX,
        };
        assert_eq!(
            write(&mut w, &mut out, &echoes, &data),
            0,
            "nothing written ahead of the queue"
        );
        drain(&mut out, &mut w);
        let mut want = framed(&[(true, b"hello"), (false, b"world")]);
        put_frame(&mut want, OpCode::Pong, b"p");
        assert_eq!(w.got, want);
    }

    #[test]
    fn a_write_error_leaves_the_echoes_queued() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let data = b"abc".to_vec();
        let echoes = [DirectEcho::new(true, 0..3)];
        let mut out = OutQueue::new();
        assert_eq!(write(&mut Broken, &mut out, &echoes, &data), 0);
        assert_eq!(out.len(), 5);
        assert!(out.flush(&mut Broken).is_err(), "the flush meets the error");
    }
}
