//! An event stream on a socket of its own, taken from hyper once the
//! response head was out (see `handoff`): it writes the rest of the
//! chunked body itself, on a small task, so that an idle stream costs no
//! more than an idle WebSocket.
//!
//! Its client's reads set the pace: a client that stops reading leaves the
//! writes waiting, its outbox fills up, and the hub closes it as a slow
//! consumer.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::connection::Registration;
use crate::event_stream::poll_take;
use crate::hub::tune;
use crate::outbox::CloseReason;

/// Frames handed to one vectored write, each as three slices: its size
/// line, its data and the CRLF that ends it.
const MAX_WRITE_FRAMES: usize = 21;
/// The longest size line: 16 hex digits and CRLF.
const MAX_SIZE_LINE: usize = 18;
/// Bytes read, and discarded, per call: an `EventSource` sends nothing.
const DISCARD_CHUNK: usize = 256;

/// A running event stream; completes when it is closed.
pub(crate) struct ChunkedStream {
    socket: TcpStream,
    registration: Registration,
    /// Frames taken from the outbox; the front one's chunk may be partly
    /// written. An empty frame is the body's last chunk, `0\r\n\r\n`.
    sending: VecDeque<Bytes>,
    /// Bytes of the front frame's chunk already written.
    written: usize,
    /// Set once the hub closes the stream cleanly (shutdown, or the
    /// application's close): what is queued and the last chunk go out by
    /// then. Boxed: every field here costs each idle stream.
    ending: Option<Pin<Box<Sleep>>>,
}

impl ChunkedStream {
    /// Runs the stream of `registration` on `socket`, on a task of its own,
    /// sending `first` first.
    pub(crate) fn spawn(registration: Registration, first: VecDeque<Bytes>, socket: TcpStream) {
        let registry = registration.registry();
        if !registry.sockets_tuned.load(Ordering::Relaxed) {
            tune(socket2::SockRef::from(&socket), &registry.config);
        }
        tokio::spawn(ChunkedStream {
            socket,
            registration,
            sending: first,
            written: 0,
            ending: None,
        });
    }

    /// Reads and discards what the client sends; ready once it hangs up or
    /// the socket fails.
    fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut sink = [MaybeUninit::<u8>::uninit(); DISCARD_CHUNK];
        loop {
            let mut buf = ReadBuf::uninit(&mut sink);
            match ready!(Pin::new(&mut self.socket).poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => return Poll::Ready(()),
                Ok(()) => {}
                Err(_) => return Poll::Ready(()),
            }
        }
    }

    /// Moves the stream forward as far as it can go without waiting; ready
    /// once it is over.
    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.ending.is_none() {
                match poll_take(&self.registration, &mut self.sending, cx) {
                    None => {}
                    Some(CloseReason::GoingAway | CloseReason::Requested(_)) => {
                        // What is queued goes first, then the last chunk:
                        // an empty frame's.
                        self.sending.push_back(Bytes::new());
                        let timeout = self.registration.registry().config.close_timeout;
                        self.ending = Some(Box::pin(tokio::time::sleep(timeout)));
                    }
                    // A slow consumer's frames were dropped: the stream is
                    // cut short, so that its client reconnects and resumes.
                    // (The others do not befall event streams.)
                    Some(
                        CloseReason::SlowConsumer
                        | CloseReason::HeartbeatTimeout
                        | CloseReason::Closing,
                    ) => return Poll::Ready(()),
                }
            }
            if self.sending.is_empty() {
                if self.ending.is_none() {
                    // The outbox wakes this task for its next frame.
                    return Poll::Pending;
                }
                let _ = ready!(Pin::new(&mut self.socket).poll_shutdown(cx));
                return Poll::Ready(());
            }
            if ready!(self.poll_write(cx)).is_err() {
                return Poll::Ready(());
            }
        }
    }

    /// Writes `sending` as chunks, several frames per call when the client
    /// is behind.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.sending.is_empty() {
            let mut size_lines = [[0; MAX_SIZE_LINE]; MAX_WRITE_FRAMES];
            let mut slices = [IoSlice::new(&[]); 3 * MAX_WRITE_FRAMES];
            let mut count = 0;
            let mut skip = self.written;
            for (frame, size_line) in self.sending.iter().zip(&mut size_lines) {
                for part in [size_line_of(frame.len(), size_line), &frame[..], b"\r\n"] {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    slices[count] = IoSlice::new(&part[skip..]);
                    skip = 0;
                    count += 1;
                }
            }
            let mut n =
                ready!(Pin::new(&mut self.socket).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            while let Some(front) = self.sending.front() {
                let left = chunk_len(front.len()) - self.written;
                if n < left {
                    self.written += n;
                    break;
                }
                n -= left;
                self.written = 0;
                self.sending.pop_front();
            }
        }
        // All sent: an idle stream keeps no buffer (the outbox brings one
        // with the next event), and a burst gives back what it grew.
        self.sending = VecDeque::new();
        Poll::Ready(Ok(()))
    }
}

impl Future for ChunkedStream {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.poll_discard(cx).is_ready() {
            return Poll::Ready(());
        }
        let progress = this.drive(cx);
        match &mut this.ending {
            // However the client stalls, the deadline ends it.
            Some(deadline) if progress.is_pending() => deadline.as_mut().poll(cx),
            _ => progress,
        }
    }
}

/// Writes the size line of a chunk of `len` bytes, `{len:X}\r\n` as hyper
/// writes it, into `line`, and returns it.
fn size_line_of(len: usize, line: &mut [u8; MAX_SIZE_LINE]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let digits = hex_digits(len);
    for (i, digit) in line[..digits].iter_mut().rev().enumerate() {
        *digit = HEX[(len >> (4 * i)) & 0xf];
    }
    line[digits..digits + 2].copy_from_slice(b"\r\n");
    &line[..digits + 2]
}

/// How many hex digits `len` takes.
fn hex_digits(len: usize) -> usize {
    (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize
}

/// The bytes of a chunk of `len` bytes: size line, data, CRLF.
fn chunk_len(len: usize) -> usize {
    hex_digits(len) + 2 + len + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_lines_are_uppercase_hex_as_hyper_writes_them() {
        let mut line = [0; MAX_SIZE_LINE];
        for len in [0, 1, 9, 10, 0x2e, 0xff, 0x100, 65_536] {
            let expected = format!("{len:X}\r\n");
            assert_eq!(size_line_of(len, &mut line), expected.as_bytes());
            assert_eq!(chunk_len(len), expected.len() + len + 2);
        }
        assert_eq!(
            size_line_of(usize::MAX, &mut line),
            format!("{:X}\r\n", usize::MAX).as_bytes()
        );
    }
}
