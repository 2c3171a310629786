//! A stream that encrypts what it writes and decrypts what it reads: the transport cipher
//! between the socket and the frame codec.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rpc_proto::cipher::{MessageNonce, TransportCipher};

use crate::runtime::AsyncStream;

/// The most plaintext one write takes into one cipher message (one GCM message). Bounds the
/// ciphertext a write buffers.
const MAX_MESSAGE: usize = 1024 * 1024;

/// Ciphertext waiting for the socket beyond which writes are refused (`Pending`) until the
/// socket takes some.
const MAX_UNSENT: usize = 256 * 1024;

/// Ciphertext read from the socket at once.
const READ_CHUNK: usize = 64 * 1024;

/// The cipher around a stream.
///
/// Writes encrypt the plaintext given into one cipher message and return at once with all
/// of it taken (bounded by `MAX_MESSAGE`); the ciphertext goes to the socket then or on
/// [`poll_flush`](AsyncStream::poll_flush). Reads decrypt what the socket has and hand out at
/// most what was asked for, keeping the rest. `sendfile` is refused (the bytes of a file must
/// go through the cipher), so the driver reads files and writes them here.
pub(crate) struct CipherStream {
    inner: Box<dyn AsyncStream>,
    cipher: TransportCipher,
    /// Draws each GCM message's salt and nonce prefix: a CSPRNG seeded from the OS.
    rng: StdRng,
    /// Ciphertext read and not yet decrypted (the handshake's leftover, at first).
    ciphertext: BytesMut,
    /// Plaintext decrypted and not yet read.
    plaintext: BytesMut,
    /// Ciphertext not yet written.
    unsent: BytesMut,
    eof: bool,
}

impl CipherStream {
    /// `leftover` is the ciphertext that arrived with the handshake's last frame.
    pub(crate) fn new(
        inner: Box<dyn AsyncStream>,
        cipher: TransportCipher,
        leftover: &[u8],
    ) -> Self {
        Self {
            inner,
            cipher,
            rng: StdRng::from_os_rng(),
            ciphertext: BytesMut::from(leftover),
            plaintext: BytesMut::new(),
            unsent: BytesMut::new(),
            eof: false,
        }
    }

    /// Writes unsent ciphertext until the socket would block; `Ready(Ok)` once all is sent.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.unsent.is_empty() {
            match self
                .inner
                .poll_write_vectored(cx, &[IoSlice::new(&self.unsent)])
            {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => self.unsent.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Decrypts what is buffered; a cipher error is the stream's.
    fn decrypt_buffered(&mut self) -> io::Result<()> {
        if self.ciphertext.is_empty() {
            return Ok(());
        }
        let result = self.cipher.decrypt(&self.ciphertext, &mut self.plaintext);
        self.ciphertext.clear();
        result.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

impl AsyncStream for CipherStream {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut out = BytesMut::new();
        match self.poll_read_buf(cx, &mut out, buf.len()) {
            Poll::Ready(Ok(n)) => {
                buf[..n].copy_from_slice(&out);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            self.decrypt_buffered()?;
            if !self.plaintext.is_empty() {
                let n = self.plaintext.len().min(max);
                if buf.is_empty() && n == self.plaintext.len() {
                    // Hand the whole buffer over instead of copying it.
                    std::mem::swap(buf, &mut self.plaintext);
                } else {
                    buf.extend_from_slice(&self.plaintext.split_to(n));
                }
                return Poll::Ready(Ok(n));
            }
            if self.eof {
                return Poll::Ready(
                    self.cipher
                        .finish_input()
                        .map(|()| 0)
                        .map_err(|e| io::Error::new(io::ErrorKind::UnexpectedEof, e)),
                );
            }
            match self
                .inner
                .poll_read_buf(cx, &mut self.ciphertext, READ_CHUNK)
            {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => self.eof = true,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.unsent.len() >= MAX_UNSENT {
            match self.poll_send(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if self.unsent.len() >= MAX_UNSENT => return Poll::Pending,
                Poll::Pending => {}
            }
        }
        let mut taken = 0;
        let mut pieces: Vec<&[u8]> = Vec::with_capacity(bufs.len());
        for buf in bufs {
            if taken == MAX_MESSAGE {
                break;
            }
            let piece = &buf[..buf.len().min(MAX_MESSAGE - taken)];
            taken += piece.len();
            pieces.push(piece);
        }
        if taken == 0 {
            return Poll::Ready(Ok(0));
        }
        let nonce = MessageNonce::random(&mut self.rng);
        self.cipher
            .encrypt(&pieces, nonce, &mut self.unsent)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // Start sending now; what the socket does not take yet waits for `poll_flush`.
        if let Poll::Ready(Err(e)) = self.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.poll_send(cx) {
            Poll::Ready(Ok(())) => self.inner.poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.poll_flush(cx) {
            Poll::Ready(Ok(())) => self.inner.poll_shutdown(cx),
            other => other,
        }
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A stream whose first bytes were already read (by the handshake): they are read again
/// first, then the stream's own.
pub(crate) struct Prefixed {
    inner: Box<dyn AsyncStream>,
    prefix: bytes::Bytes,
}

impl Prefixed {
    pub(crate) fn new(inner: Box<dyn AsyncStream>, prefix: bytes::Bytes) -> Self {
        Self { inner, prefix }
    }
}

impl AsyncStream for Prefixed {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if self.prefix.is_empty() {
            return self.inner.poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.len());
        buf[..n].copy_from_slice(&self.prefix.split_to(n));
        Poll::Ready(Ok(n))
    }

    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        if self.prefix.is_empty() {
            return self.inner.poll_read_buf(cx, buf, max);
        }
        let n = self.prefix.len().min(max);
        buf.extend_from_slice(&self.prefix.split_to(n));
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_write_vectored(cx, bufs)
    }

    fn poll_send_file(
        &mut self,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_send_file(cx, file, offset, len)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_flush(cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_shutdown(cx)
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}
