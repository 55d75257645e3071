//! The only Modbus client in the agent, read-only by construction.
//!
//! [`ReadOnlyClient`] owns a `tokio_modbus` TCP (or RTU) context privately and exposes only read
//! functions: FC 1, 2, 3, 4, 17 and 43/14. There is no `Deref`, no accessor and no trait impl
//! that hands the context out, so nothing in the agent can send a write:
//!
//! ```compile_fail
//! use tokio_modbus::prelude::*;
//! async fn f(client: &mut outpost_agent::modbus::read_only::ReadOnlyClient) {
//!     let _ = client.write_single_register(1, 2).await;
//! }
//! ```
//!
//! while the same shape with a read compiles:
//!
//! ```no_run
//! use tokio_modbus::prelude::*;
//! async fn f(client: &mut outpost_agent::modbus::read_only::ReadOnlyClient) {
//!     let _ = client.read_holding_registers(1, 2).await;
//! }
//! ```
//!
//! Every request runs under `request_timeout`, the connection under `connect_timeout`. Requests
//! take `&mut self`, so a device never has more than one outstanding request, and starts are
//! spaced at least `min_request_gap` apart (politeness to small PLCs).
//!
//! Back-off: a device that answers "server busy" (exception 06) is asked again after
//! [`BUSY_BACKOFF`], doubling, at most [`BUSY_RETRIES`] times; a device whose answer took more
//! than half the request timeout gets a doubled gap between requests (up to [`MAX_GAP`]).
//!
//! After a timeout or a transport error the TCP connection is in an unknown state (a late answer
//! would be taken for the next request's), so the client drops it and reconnects before the next
//! request; the gap between request starts survives the reconnect.
//!
//! tokio-modbus's `Reader` helpers `debug_assert!` on response lengths and `unreachable!` on
//! mismatched responses; this client calls `Client::call` and checks responses itself, so a
//! misbehaving device yields [`ModbusError::UnexpectedResponse`], never a panic.
//!
//! The same client speaks Modbus RTU on a serial bus ([`ReadOnlyClient::open_serial`], see
//! [`super::serial`]): one client owns the port, so requests to the bus's units go one at a
//! time; at least the bus's frame gap of silence is kept between the end of one exchange and
//! the next request; stale input is flushed before every request; after a timeout or a garbled
//! frame the port is closed and reopened, and what was received is diagnosed
//! ([`ModbusError::Garbled`]: "CRC mismatch on /dev/ttyX unit 3 …"). The whole line waits
//! for a silent unit, so on a bus a unit whose first request timed out is not asked again
//! until [`ReadOnlyClient::set_unit`] addresses it anew: its later requests fail at once with
//! the same timeout error, without touching the line (one silent unit costs one timeout).

use std::net::SocketAddr;
use std::time::Duration;

use super::serial::SerialLink;

use tokio::time::Instant;
use tokio_modbus::client::{Client as _, Context};
use tokio_modbus::prelude::{ReadCode, ReadDeviceIdentificationResponse, SlaveContext as _};
use tokio_modbus::{ExceptionCode, Request, Response, Slave};

/// Attempts after a first "server busy" (exception 06) answer, per request.
pub const BUSY_RETRIES: u32 = 3;
/// First wait after "server busy"; doubled on each further busy answer (0.5 s, 1 s, 2 s).
pub const BUSY_BACKOFF: Duration = Duration::from_millis(500);
/// Largest gap between request starts that slow answers can grow the gap to.
pub const MAX_GAP: Duration = Duration::from_secs(2);
/// A slow answer raises the gap to at least this much.
const SLOW_GAP_FLOOR: Duration = Duration::from_millis(100);

/// Timing for one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub min_request_gap: Duration,
}

impl From<&crate::config::ModbusConfig> for Timing {
    fn from(m: &crate::config::ModbusConfig) -> Self {
        Timing {
            connect_timeout: m.connect_timeout,
            request_timeout: m.request_timeout,
            min_request_gap: m.min_request_gap,
        }
    }
}

/// Why a request (or the connection) failed.
#[derive(Debug, thiserror::Error)]
pub enum ModbusError {
    #[error("connect timed out after {}", humantime::format_duration(*.0))]
    ConnectTimeout(Duration),
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("exception {0:?}")]
    Exception(ExceptionCode),
    #[error("transport error: {0}")]
    Transport(std::io::Error),
    #[error("unexpected response: {0}")]
    UnexpectedResponse(String),
    /// RTU: bytes came back but not a valid frame for the request (noise, a collision).
    #[error("{0}")]
    Garbled(String),
}

impl ModbusError {
    /// True when the device gave a Modbus answer (an exception is an answer).
    pub fn is_answer(&self) -> bool {
        matches!(self, ModbusError::Exception(_))
    }
}

/// A Report Server ID (FC 17) answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerId {
    pub server_id: u8,
    pub running: bool,
    pub additional: Vec<u8>,
}

/// Where a client's requests go.
#[derive(Debug)]
pub enum Link {
    /// Modbus TCP to one address.
    Tcp(SocketAddr),
    /// Modbus RTU on a serial bus.
    Rtu(SerialLink),
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Link::Tcp(addr) => write!(f, "{addr}"),
            Link::Rtu(bus) => write!(f, "{}", bus.path()),
        }
    }
}

/// A read-only Modbus client for one TCP device or one serial bus.
pub struct ReadOnlyClient {
    ctx: Option<Context>,
    peer: Link,
    unit: u8,
    timing: Timing,
    last_start: Option<Instant>,
    /// The gap kept between request starts: `timing.min_request_gap`, grown by slow answers.
    gap: Duration,
    requests: u64,
    busy_backoffs: u64,
    /// RTU: silence kept between the end of one exchange and the next request (zero on TCP).
    frame_gap: Duration,
    last_end: Option<Instant>,
    /// RTU: the current unit timed out before it ever answered (see the module docs).
    unit_silent: bool,
    unit_answered: bool,
}

impl std::fmt::Debug for ReadOnlyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOnlyClient")
            .field("peer", &self.peer)
            .field("unit", &self.unit)
            .field("connected", &self.ctx.is_some())
            .finish()
    }
}

async fn open(peer: SocketAddr, unit: u8, timeout: Duration) -> Result<Context, ModbusError> {
    let stream = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(peer)).await {
        Err(_) => return Err(ModbusError::ConnectTimeout(timeout)),
        Ok(Err(e)) => return Err(ModbusError::Connect(e)),
        Ok(Ok(s)) => s,
    };
    // Small request/response exchanges: do not wait for Nagle.
    let _ = stream.set_nodelay(true);
    Ok(tokio_modbus::client::tcp::attach_slave(stream, Slave(unit)))
}

impl ReadOnlyClient {
    /// Connects to `peer` (under `timing.connect_timeout`), addressing unit id `unit`.
    pub async fn connect(peer: SocketAddr, unit: u8, timing: Timing) -> Result<Self, ModbusError> {
        let ctx = open(peer, unit, timing.connect_timeout).await?;
        Ok(ReadOnlyClient {
            ctx: Some(ctx),
            peer: Link::Tcp(peer),
            unit,
            timing,
            last_start: None,
            gap: timing.min_request_gap,
            requests: 0,
            busy_backoffs: 0,
            frame_gap: Duration::ZERO,
            last_end: None,
            unit_silent: false,
            unit_answered: false,
        })
    }

    /// Opens the serial bus `bus` (Modbus RTU), addressing unit id `unit`. Each request waits
    /// at most `bus.timeout`; `min_request_gap` spaces request starts as on TCP.
    pub fn open_serial(
        bus: &crate::rtu_config::SerialBusConfig,
        unit: u8,
        min_request_gap: Duration,
    ) -> Result<Self, ModbusError> {
        let mut link = SerialLink::new(bus);
        let ctx = link.attach(unit)?;
        let timing = Timing {
            connect_timeout: bus.timeout,
            request_timeout: bus.timeout,
            min_request_gap,
        };
        Ok(ReadOnlyClient {
            ctx: Some(ctx),
            peer: Link::Rtu(link),
            unit,
            timing,
            last_start: None,
            gap: min_request_gap,
            requests: 0,
            busy_backoffs: 0,
            frame_gap: bus.frame_gap,
            last_end: None,
            unit_silent: false,
            unit_answered: false,
        })
    }

    /// The device's address, or the serial bus.
    pub fn peer(&self) -> &Link {
        &self.peer
    }

    /// Requests sent so far (including ones that failed).
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Times the client waited because the device said "server busy" (exception 06).
    pub fn busy_backoffs(&self) -> u64 {
        self.busy_backoffs
    }

    /// Addresses further requests to unit id `unit` (same TCP connection).
    pub fn set_unit(&mut self, unit: u8) {
        self.unit = unit;
        self.unit_silent = false;
        self.unit_answered = false;
        if let Some(ctx) = self.ctx.as_mut() {
            ctx.set_slave(Slave(unit));
        }
    }

    /// FC 1: `count` coils from `addr`.
    pub async fn read_coils(&mut self, addr: u16, count: u16) -> Result<Vec<bool>, ModbusError> {
        match self.call(Request::ReadCoils(addr, count)).await? {
            Response::ReadCoils(bits) => take_bits(bits, count),
            other => Err(unexpected("FC 1", &other)),
        }
    }

    /// FC 2: `count` discrete inputs from `addr`.
    pub async fn read_discrete_inputs(
        &mut self,
        addr: u16,
        count: u16,
    ) -> Result<Vec<bool>, ModbusError> {
        match self.call(Request::ReadDiscreteInputs(addr, count)).await? {
            Response::ReadDiscreteInputs(bits) => take_bits(bits, count),
            other => Err(unexpected("FC 2", &other)),
        }
    }

    /// FC 3: `count` holding registers from `addr`.
    pub async fn read_holding_registers(
        &mut self,
        addr: u16,
        count: u16,
    ) -> Result<Vec<u16>, ModbusError> {
        match self
            .call(Request::ReadHoldingRegisters(addr, count))
            .await?
        {
            Response::ReadHoldingRegisters(words) => exact_words(words, count),
            other => Err(unexpected("FC 3", &other)),
        }
    }

    /// FC 4: `count` input registers from `addr`.
    pub async fn read_input_registers(
        &mut self,
        addr: u16,
        count: u16,
    ) -> Result<Vec<u16>, ModbusError> {
        match self.call(Request::ReadInputRegisters(addr, count)).await? {
            Response::ReadInputRegisters(words) => exact_words(words, count),
            other => Err(unexpected("FC 4", &other)),
        }
    }

    /// FC 17: Report Server ID.
    pub async fn report_server_id(&mut self) -> Result<ServerId, ModbusError> {
        match self.call(Request::ReportServerId).await? {
            Response::ReportServerId(server_id, running, additional) => Ok(ServerId {
                server_id,
                running,
                additional,
            }),
            other => Err(unexpected("FC 17", &other)),
        }
    }

    /// FC 43 / MEI 14: one Read Device Identification request (paging is the caller's).
    pub async fn read_device_identification(
        &mut self,
        code: ReadCode,
        object_id: u8,
    ) -> Result<ReadDeviceIdentificationResponse, ModbusError> {
        match self
            .call(Request::ReadDeviceIdentification(code, object_id))
            .await?
        {
            Response::ReadDeviceIdentification(r) => Ok(r),
            other => Err(unexpected("FC 43", &other)),
        }
    }

    /// Closes the connection politely.
    pub async fn disconnect(mut self) {
        if let Some(mut ctx) = self.ctx.take() {
            let _ = tokio::time::timeout(self.timing.request_timeout, ctx.disconnect()).await;
        }
    }

    /// The gap currently kept between request starts (grows for slow devices).
    pub fn current_gap(&self) -> Duration {
        self.gap
    }

    /// Sends one request, backing off on "server busy": exception 06 is retried at most
    /// [`BUSY_RETRIES`] times, after [`BUSY_BACKOFF`], then twice that, and so on.
    async fn call(&mut self, request: Request<'static>) -> Result<Response, ModbusError> {
        let mut wait = BUSY_BACKOFF;
        for _ in 0..BUSY_RETRIES {
            match self.call_once(request.clone()).await {
                Err(ModbusError::Exception(ExceptionCode::ServerDeviceBusy)) => {
                    self.busy_backoffs += 1;
                    tokio::time::sleep(wait).await;
                    wait = wait.saturating_mul(2);
                }
                other => return other,
            }
        }
        self.call_once(request).await
    }

    /// Sends one request: waits for the politeness gap, reconnects if the last exchange left
    /// the connection unusable, and bounds the exchange by the request timeout. An answer that
    /// took more than half the request timeout doubles the gap (up to [`MAX_GAP`]).
    async fn call_once(&mut self, request: Request<'static>) -> Result<Response, ModbusError> {
        if self.unit_silent {
            return Err(ModbusError::Timeout(self.timing.request_timeout));
        }
        if let Some(last) = self.last_start {
            tokio::time::sleep_until(last + self.gap).await;
        }
        if let Some(end) = self.last_end.filter(|_| !self.frame_gap.is_zero()) {
            tokio::time::sleep_until(end + self.frame_gap).await;
        }
        let started = Instant::now();
        self.last_start = Some(started);
        let result = self.exchange(request).await;
        self.last_end = Some(Instant::now());
        match &result {
            Ok(_) | Err(ModbusError::Exception(_)) => self.unit_answered = true,
            Err(ModbusError::Timeout(_)) if matches!(self.peer, Link::Rtu(_)) => {
                self.unit_silent = !self.unit_answered;
            }
            Err(_) => {}
        }
        if result.is_ok() || matches!(result, Err(ModbusError::Exception(_))) {
            let took = started.elapsed();
            if took > self.timing.request_timeout / 2 {
                let grown = self.gap.saturating_mul(2).max(SLOW_GAP_FLOOR);
                self.gap = grown.min(MAX_GAP.max(self.timing.min_request_gap));
            }
        }
        result
    }

    async fn exchange(&mut self, request: Request<'static>) -> Result<Response, ModbusError> {
        self.requests += 1;
        let mut ctx = match (self.ctx.take(), &mut self.peer) {
            (Some(ctx), _) => ctx,
            (None, Link::Tcp(peer)) => open(*peer, self.unit, self.timing.connect_timeout).await?,
            (None, Link::Rtu(bus)) => bus.attach(self.unit)?,
        };
        if let Link::Rtu(bus) = &self.peer {
            // One master on the line: anything waiting in the input buffer now is stale.
            bus.flush_input();
        }
        let timeout = self.timing.request_timeout;
        match tokio::time::timeout(timeout, ctx.call(request)).await {
            // The connection (or port) is left dropped (closed): a late answer must not be
            // read as the next request's.
            Err(_) => Err(match &self.peer {
                Link::Rtu(bus) => bus
                    .diagnose(self.unit)
                    .unwrap_or(ModbusError::Timeout(timeout)),
                Link::Tcp(_) => ModbusError::Timeout(timeout),
            }),
            Ok(Err(tokio_modbus::Error::Transport(e))) => Err(match &self.peer {
                Link::Rtu(bus) => bus.diagnose(self.unit).unwrap_or(ModbusError::Transport(e)),
                Link::Tcp(_) => ModbusError::Transport(e),
            }),
            Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                Err(ModbusError::UnexpectedResponse(match &self.peer {
                    Link::Rtu(bus) => format!("{e} (on {} unit {})", bus.path(), self.unit),
                    Link::Tcp(_) => e.to_string(),
                }))
            }
            Ok(Ok(Err(code))) => {
                self.ctx = Some(ctx);
                Err(ModbusError::Exception(code))
            }
            Ok(Ok(Ok(response))) => {
                self.ctx = Some(ctx);
                Ok(response)
            }
        }
    }
}

fn unexpected(what: &str, got: &Response) -> ModbusError {
    ModbusError::UnexpectedResponse(format!("{what} answered with {:?}", got.function_code()))
}

fn take_bits(mut bits: Vec<bool>, count: u16) -> Result<Vec<bool>, ModbusError> {
    let want = usize::from(count);
    if bits.len() < want {
        return Err(ModbusError::UnexpectedResponse(format!(
            "asked for {want} bits, got {}",
            bits.len()
        )));
    }
    bits.truncate(want);
    Ok(bits)
}

fn exact_words(words: Vec<u16>, count: u16) -> Result<Vec<u16>, ModbusError> {
    if words.len() != usize::from(count) {
        return Err(ModbusError::UnexpectedResponse(format!(
            "asked for {count} registers, got {}",
            words.len()
        )));
    }
    Ok(words)
}
