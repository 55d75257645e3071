//! Counting function codes on the wire.
//!
//! [`SniffStream`] wraps a device's TCP connection and reads the function code of every
//! request ADU as the bytes arrive, before tokio-modbus decodes them. So the counts include
//! requests the server could not decode (an unknown MEI type, a malformed frame): a test that
//! asserts "the agent only sent FCs 1, 2, 3, 4, 17, 43" sees everything the agent sent.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::device::DeviceState;

/// A Modbus TCP ADU's header: transaction id, protocol id, length, unit id; then the FC.
const HEAD: usize = 8;

/// Finds request function codes in a Modbus TCP byte stream.
#[derive(Debug, Default)]
pub struct FcSniffer {
    head: [u8; HEAD],
    have: usize,
    skip: usize,
}

impl FcSniffer {
    /// Feeds the next bytes of the stream; calls `on_fc` once per request seen.
    pub fn feed(&mut self, mut bytes: &[u8], mut on_fc: impl FnMut(u8)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEAD - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == HEAD {
                // The length field counts the unit id and the PDU; we consumed both the unit id
                // and the function code already.
                let len = usize::from(u16::from_be_bytes([self.head[4], self.head[5]]));
                on_fc(self.head[7]);
                self.skip = len.saturating_sub(2);
                self.have = 0;
            }
        }
    }
}

/// A transport that counts request function codes into the device state as it reads.
#[derive(Debug)]
pub struct SniffStream<T> {
    inner: T,
    sniffer: FcSniffer,
    state: Arc<Mutex<DeviceState>>,
}

impl<T> SniffStream<T> {
    pub fn new(inner: T, state: Arc<Mutex<DeviceState>>) -> Self {
        Self {
            inner,
            sniffer: FcSniffer::default(),
            state,
        }
    }
}

fn count(map: &mut BTreeMap<u8, u64>, fc: u8) {
    *map.entry(fc).or_insert(0) += 1;
}

impl<T: AsyncRead + Unpin> AsyncRead for SniffStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            let fresh = &buf.filled()[before..];
            if !fresh.is_empty() {
                let mut state = this.state.lock().unwrap_or_else(|p| p.into_inner());
                this.sniffer.feed(fresh, |fc| count(&mut state.fc_seen, fc));
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SniffStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adu(tid: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut v = tid.to_be_bytes().to_vec();
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
        v.push(unit);
        v.extend_from_slice(pdu);
        v
    }

    #[test]
    fn finds_function_codes_across_arbitrary_splits() {
        let mut stream = adu(1, 1, &[0x03, 0, 100, 0, 8]);
        stream.extend(adu(2, 1, &[0x2B, 0x0E, 0x01, 0x00]));
        stream.extend(adu(3, 2, &[0x10, 0, 1, 0, 2, 4, 0, 1, 0, 2]));
        stream.extend(adu(4, 1, &[0x11]));
        for split in 1..stream.len() {
            let mut s = FcSniffer::default();
            let mut seen = Vec::new();
            for chunk in stream.chunks(split) {
                s.feed(chunk, |fc| seen.push(fc));
            }
            assert_eq!(seen, [0x03, 0x2B, 0x10, 0x11], "split {split}");
        }
    }
}
