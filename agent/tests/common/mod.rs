//! A minimal Modbus TCP device for the agent's tests, on tokio-modbus's server (127.0.0.1:0).
//!
//! It serves FC 1/2/3/4 from fixed tables, FC 43 (paged, `page` objects per answer) and FC 17
//! according to its [`Behaviour`], and logs every request with its arrival time and unit id.
//! The fuller plant simulator lives in tests/testbed; this one only has what these tests need.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_modbus::bytes::Bytes;
use tokio_modbus::prelude::{
    ConformityLevel, DeviceIdObject, ReadCode, ReadDeviceIdentificationResponse,
};
use tokio_modbus::server::Service;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

/// How the device answers identification requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// FC 43 with the identity objects; FC 17 answered too.
    Identity,
    /// FC 43 → exception 01 Illegal Function; FC 17 answered.
    NoFc43,
    /// FC 43 Basic answered, Regular → exception 03 (a Basic-only device).
    BasicOnly,
    /// FC 43 always says "more follows from object 0": a paging loop.
    LoopingFc43,
    /// Accepts connections, reads requests, never answers anything.
    Silent,
}

/// One logged request.
#[derive(Debug, Clone)]
pub struct Logged {
    pub at: Instant,
    pub unit: u8,
    pub request: Request<'static>,
}

pub struct Device {
    pub behaviour: Behaviour,
    pub objects: BTreeMap<u8, &'static str>,
    pub page: usize,
    pub holding: BTreeMap<u16, u16>,
    pub input: BTreeMap<u16, u16>,
    pub coils: BTreeMap<u16, bool>,
    pub log: Mutex<Vec<Logged>>,
}

/// The identity the `Identity` device reports.
pub fn acme_objects() -> BTreeMap<u8, &'static str> {
    BTreeMap::from([
        (0x00, "ACME Automation"),
        (0x01, "AX-200"),
        (0x02, "v3.2.1"),
        (0x03, "https://acme.example/ax200"),
        (0x04, "AX Controller"),
        (0x05, "AX-200-PN"),
        (0x06, "Mixer line 1\0\0"),
    ])
}

impl Device {
    pub fn new(behaviour: Behaviour) -> Device {
        Device {
            behaviour,
            objects: acme_objects(),
            page: 2,
            // Holding 100..108 = 1000 + i; 0..400 = i (for chunking); input 0..4 = 7, 8, 9, 10.
            holding: (0..400u16)
                .map(|i| (i, i))
                .chain((100..108u16).map(|i| (i, 1000 + i)))
                .collect(),
            input: (0..4u16).map(|i| (i, 7 + i)).collect(),
            coils: (0..10u16).map(|i| (i, i % 3 == 0)).collect(),
            log: Mutex::new(Vec::new()),
        }
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn registers(table: &BTreeMap<u16, u16>, addr: u16, n: u16) -> Result<Vec<u16>, ExceptionCode> {
        (0..n)
            .map(|i| {
                addr.checked_add(i)
                    .and_then(|a| table.get(&a).copied())
                    .ok_or(ExceptionCode::IllegalDataAddress)
            })
            .collect()
    }

    fn identification(&self, code: ReadCode, from: u8) -> Result<Option<Response>, ExceptionCode> {
        match (self.behaviour, code) {
            (Behaviour::NoFc43, _) => return Err(ExceptionCode::IllegalFunction),
            (Behaviour::BasicOnly, ReadCode::Regular) => {
                return Err(ExceptionCode::IllegalDataValue);
            }
            _ => {}
        }
        let last = match code {
            ReadCode::Basic => 0x02,
            ReadCode::Regular => 0x06,
            _ => return Err(ExceptionCode::IllegalDataValue),
        };
        let wanted: Vec<(u8, &str)> = self
            .objects
            .range(from..=last)
            .map(|(k, v)| (*k, *v))
            .collect();
        let page: Vec<(u8, &str)> = wanted.iter().take(self.page).copied().collect();
        let (more, next) = if self.behaviour == Behaviour::LoopingFc43 {
            (true, 0)
        } else {
            match wanted.get(self.page) {
                Some((id, _)) => (true, *id),
                None => (false, 0),
            }
        };
        Ok(Some(Response::ReadDeviceIdentification(
            ReadDeviceIdentificationResponse {
                read_code: code,
                conformity_level: ConformityLevel::RegularIdentification,
                more_follows: more,
                next_object_id: next,
                device_id_objects: page
                    .into_iter()
                    .map(|(id, v)| DeviceIdObject {
                        id,
                        value: Bytes::from(v.as_bytes().to_vec()),
                    })
                    .collect(),
            },
        )))
    }

    fn answer(&self, req: &Request<'static>) -> Result<Option<Response>, ExceptionCode> {
        if self.behaviour == Behaviour::Silent {
            return Ok(None);
        }
        match *req {
            Request::ReadHoldingRegisters(a, n) => Self::registers(&self.holding, a, n)
                .map(|v| Some(Response::ReadHoldingRegisters(v))),
            Request::ReadInputRegisters(a, n) => {
                Self::registers(&self.input, a, n).map(|v| Some(Response::ReadInputRegisters(v)))
            }
            Request::ReadCoils(a, n) => (0..n)
                .map(|i| {
                    a.checked_add(i)
                        .and_then(|a| self.coils.get(&a).copied())
                        .ok_or(ExceptionCode::IllegalDataAddress)
                })
                .collect::<Result<Vec<bool>, _>>()
                .map(|v| Some(Response::ReadCoils(v))),
            Request::ReadDeviceIdentification(code, from) => self.identification(code, from),
            Request::ReportServerId => Ok(Some(report_server_id(0x42, true, b"LEGACY-PLC 4.1"))),
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

/// An FC 17 answer, encoded by hand: tokio-modbus 0.17.0's server sizes a
/// `Response::ReportServerId` one byte short in the MBAP length (`response_pdu_size` says
/// `3 + data.len()`, the encoder writes `4 + data.len()`), so clients fail with "failed to fill
/// whole buffer". A `Custom(0x11, ..)` response carries the same bytes with the right length.
pub fn report_server_id(server_id: u8, running: bool, data: &[u8]) -> Response {
    let mut pdu = Vec::with_capacity(3 + data.len());
    pdu.push(u8::try_from(2 + data.len()).unwrap_or(u8::MAX));
    pdu.push(server_id);
    pdu.push(if running { 0xFF } else { 0x00 });
    pdu.extend_from_slice(data);
    Response::Custom(0x11, Bytes::from(pdu))
}

#[derive(Clone)]
pub struct Svc(pub Arc<Device>);

impl Service for Svc {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        if let Ok(mut log) = self.0.log.lock() {
            log.push(Logged {
                at: Instant::now(),
                unit: req.slave,
                request: req.request.clone(),
            });
        }
        ready(self.0.answer(&req.request))
    }
}

/// A running test device; the server task is aborted on drop.
pub struct Running {
    pub addr: SocketAddr,
    pub device: Arc<Device>,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts `device` on 127.0.0.1 with an ephemeral port.
pub async fn start(device: Device) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind test device");
    let addr = listener.local_addr().expect("local addr");
    let device = Arc::new(device);
    let svc = Svc(Arc::clone(&device));
    let task = tokio::spawn(async move {
        let server = Server::new(listener);
        let on_connected = move |stream, peer| {
            let svc = svc.clone();
            async move { accept_tcp_connection(stream, peer, move |_| Ok(Some(svc.clone()))) }
        };
        let _ = server.serve(&on_connected, |_err| {}).await;
    });
    Running { addr, device, task }
}

/// A 127.0.0.1 port with nothing listening (bound, then closed).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}
