//! One serial port for Modbus RTU, as the read-only client uses it.
//!
//! [`SerialLink`] opens the port with the bus's settings and hands tokio-modbus's RTU client a
//! [`Tap`]: the port plus a record of the bytes received since the last request was written.
//! The client keeps the port only through the tap, so it can
//! - flush stale input before every request (one master on the line: anything already waiting
//!   is a late answer or noise), and
//! - say what went wrong when no valid answer came: tokio-modbus's RTU decoder drops bytes that
//!   fail the CRC and waits on, so a noisy line would otherwise look like a silent device.
//!   [`SerialLink::diagnose`] turns what arrived into "CRC mismatch on /dev/ttyX unit 3 …",
//!   "reply from unit 5 on /dev/ttyX while asking unit 3" or "N garbled bytes on …".
//!
//! Opening uses no udev: `tokio-serial` is built without default features, so the static
//! aarch64 agent links.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_modbus::Slave;
use tokio_modbus::client::Context;
use tokio_serial::{SerialPort as _, SerialPortBuilderExt as _, SerialStream};

use super::read_only::ModbusError;
use crate::rtu_config::{Parity, SerialBusConfig};

/// Garbled RTU answers (bad CRC, wrong address, truncated) since the agent started, all buses.
static GARBLED_FRAMES: AtomicU64 = AtomicU64::new(0);

/// Garbled RTU answers seen since the agent started, on all buses.
pub fn garbled_frames_total() -> u64 {
    GARBLED_FRAMES.load(Ordering::Relaxed)
}

/// Bytes of an answer kept for diagnosis (an RTU frame is at most 256 bytes).
const MAX_RECORDED: usize = 512;

/// The modbus CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF), sent low byte first.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

struct Shared {
    port: SerialStream,
    /// Bytes received since the last request was written.
    received: Vec<u8>,
}

/// The port as the RTU client sees it: reads are recorded, a write starts a new record.
pub struct Tap(Arc<Mutex<Shared>>);

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // Nothing panics while holding this lock; if something did, the port is still usable.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl AsyncRead for Tap {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut shared = lock(&self.0);
        let before = buf.filled().len();
        let polled = Pin::new(&mut shared.port).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let fresh = &buf.filled()[before..];
            let room = MAX_RECORDED.saturating_sub(shared.received.len());
            let keep = fresh.len().min(room);
            let fresh = fresh[..keep].to_vec();
            shared.received.extend_from_slice(&fresh);
        }
        polled
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut shared = lock(&self.0);
        shared.received.clear();
        Pin::new(&mut shared.port).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.0).port).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.0).port).poll_shutdown(cx)
    }
}

/// A serial bus's settings and its currently open port.
pub struct SerialLink {
    bus: SerialBusConfig,
    open: Option<Arc<Mutex<Shared>>>,
}

impl std::fmt::Debug for SerialLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialLink")
            .field("path", &self.bus.path)
            .field("open", &self.open.is_some())
            .finish()
    }
}

impl SerialLink {
    pub fn new(bus: &SerialBusConfig) -> Self {
        let mut bus = bus.clone();
        bus.devices.clear();
        SerialLink { bus, open: None }
    }

    /// The serial device path.
    pub fn path(&self) -> &str {
        &self.bus.path
    }

    /// Opens the port (closing any earlier one: the old context must be dropped already) and
    /// returns an RTU context addressing `unit`.
    pub fn attach(&mut self, unit: u8) -> Result<Context, ModbusError> {
        self.open = None;
        let parity = match self.bus.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        };
        let data_bits = match self.bus.data_bits {
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        };
        let stop_bits = match self.bus.stop_bits {
            2 => tokio_serial::StopBits::Two,
            _ => tokio_serial::StopBits::One,
        };
        let port = tokio_serial::new(&self.bus.path, self.bus.baud)
            .parity(parity)
            .data_bits(data_bits)
            .stop_bits(stop_bits)
            .flow_control(tokio_serial::FlowControl::None)
            .open_native_async()
            .map_err(|e| {
                ModbusError::Connect(io::Error::new(
                    io::Error::from(e.clone()).kind(),
                    format!(
                        "cannot open serial port {}: {e} (does the device exist, and is the \
                         agent's user in the group that owns it, usually dialout?)",
                        self.bus.path
                    ),
                ))
            })?;
        // Whatever arrived while the port was closed is not an answer to anything we send.
        let _ = port.clear(tokio_serial::ClearBuffer::All);
        let shared = Arc::new(Mutex::new(Shared {
            port,
            received: Vec::new(),
        }));
        self.open = Some(Arc::clone(&shared));
        Ok(tokio_modbus::client::rtu::attach_slave(
            Tap(shared),
            Slave(unit),
        ))
    }

    /// Discards input waiting on the open port and forgets what was recorded.
    pub fn flush_input(&self) {
        if let Some(shared) = &self.open {
            let mut shared = lock(shared);
            if let Err(e) = shared.port.clear(tokio_serial::ClearBuffer::Input) {
                tracing::debug!(bus = %self.bus.path, "cannot flush serial input: {e}");
            }
            shared.received.clear();
        }
    }

    /// After a request failed without a valid answer: what arrived instead, if anything.
    pub fn diagnose(&self, unit: u8) -> Option<ModbusError> {
        let shared = self.open.as_ref()?;
        let received = lock(shared).received.clone();
        let why = describe_garbage(&self.bus.path, unit, &received)?;
        GARBLED_FRAMES.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(bus = %self.bus.path, unit, total = garbled_frames_total(), "{why}");
        Some(ModbusError::Garbled(why))
    }
}

/// Says what `received` (the bytes after a request to `unit` on `path`) was, or `None` when
/// nothing arrived.
pub fn describe_garbage(path: &str, unit: u8, received: &[u8]) -> Option<String> {
    let n = received.len();
    match received {
        [] => None,
        [first, ..] if *first != unit => Some(format!(
            "garbled reply on {path} unit {unit}: {n} bytes starting 0x{first:02X} (not this \
             unit's address); noise on the line, or another master?"
        )),
        _ if n < 4 => Some(format!(
            "truncated reply on {path} unit {unit}: {n} bytes, shorter than any RTU frame"
        )),
        _ => {
            let (body, tail) = received.split_at(n - 2);
            let sent = u16::from_le_bytes([tail[0], tail[1]]);
            let computed = crc16(body);
            if sent == computed {
                Some(format!(
                    "malformed reply on {path} unit {unit}: {n} bytes with a valid CRC but not \
                     a complete answer to the request"
                ))
            } else {
                Some(format!(
                    "CRC mismatch on {path} unit {unit}: {n} bytes received, CRC 0x{sent:04X} \
                     sent, 0x{computed:04X} computed (noise on the line? check wiring, \
                     termination and baud rate)"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_of_a_known_frame() {
        // Read holding registers, unit 1, address 0, count 1: 01 03 00 00 00 01 84 0A.
        let frame = [0x01, 0x03, 0x00, 0x00, 0x00, 0x01];
        assert_eq!(crc16(&frame).to_le_bytes(), [0x84, 0x0A]);
    }

    #[test]
    fn garbage_is_described() {
        let mut frame = vec![0x03, 0x03, 0x02, 0x00, 0x2A];
        let crc = crc16(&frame).to_le_bytes();
        frame.extend_from_slice(&crc);
        assert!(describe_garbage("/dev/x", 3, &[]).is_none());
        let mut bad = frame.clone();
        bad[4] ^= 0x10;
        let why = describe_garbage("/dev/x", 3, &bad).unwrap_or_default();
        assert!(why.starts_with("CRC mismatch on /dev/x unit 3"), "{why}");
        let why = describe_garbage("/dev/x", 4, &frame).unwrap_or_default();
        assert!(why.contains("not this unit's address"), "{why}");
        let why = describe_garbage("/dev/x", 3, &frame[..2]).unwrap_or_default();
        assert!(why.starts_with("truncated reply"), "{why}");
    }
}
