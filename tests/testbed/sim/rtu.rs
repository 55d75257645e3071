//! The simulator on a serial line: several devices (unit ids) behind one Modbus RTU port.
//!
//! [`RtuLine::start`] opens a serial port (in tests: one end of a socat pty pair) and serves
//! it with tokio-modbus's RTU server. Each unit id of each [`DeviceSpec`] is a device on the
//! line, answering as the TCP simulator does ([`DeviceState::answer`]); a unit id nobody serves
//! stays silent (on a serial line nobody answers for an absent device). Every request is
//! recorded with the time it was received and the time its answer was ready, so a test can
//! prove the master never sent while a request was outstanding, and kept the frame gap.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_modbus::server::Service;
use tokio_modbus::server::rtu::Server;
use tokio_modbus::{ExceptionCode, Response, SlaveRequest};

use super::device::DeviceState;
use super::spec::{Behaviour, DeviceSpec};

/// One request as the line saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineRequest {
    pub unit: u8,
    pub function: u8,
    pub received: Instant,
    /// When the answer was handed to the port (`None`: the unit stayed silent).
    pub answered: Option<Instant>,
}

struct Unit {
    behaviour: Behaviour,
    state: Arc<Mutex<DeviceState>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running serial line; dropping it aborts the server, [`RtuLine::stop`] waits for it.
pub struct RtuLine {
    log: Arc<Mutex<Vec<LineRequest>>>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl RtuLine {
    /// Serves `specs` on the serial port at `path` (any baud: a pty ignores it). Each unit id
    /// may be served by one device only. Must run inside a tokio runtime.
    pub fn start(path: &Path, specs: &[DeviceSpec]) -> io::Result<RtuLine> {
        let mut units = BTreeMap::new();
        for spec in specs {
            spec.validate().map_err(io::Error::other)?;
            let state = Arc::new(Mutex::new(DeviceState::new(spec)));
            for &u in &spec.unit_ids {
                let unit = Unit {
                    behaviour: spec.behaviour,
                    state: Arc::clone(&state),
                };
                if units.insert(u, unit).is_some() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("unit id {u} is served by two devices on one serial line"),
                    ));
                }
            }
        }
        let port =
            tokio_serial::SerialStream::open(&tokio_serial::new(path.to_string_lossy(), 19_200))
                .map_err(|e| io::Error::other(format!("cannot open {}: {e}", path.display())))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let service = LineService {
            units: Arc::new(units),
            log: Arc::clone(&log),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let abort = async move {
                let _ = stopped.await;
            };
            if let Err(e) = Server::new(port).serve_until(service, abort).await {
                tracing::warn!("simulated RTU line stopped: {e}");
            }
        });
        Ok(RtuLine {
            log,
            stop: Some(stop),
            handle: Some(handle),
        })
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<LineRequest> {
        lock(&self.log).clone()
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }
}

impl Drop for RtuLine {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

struct LineService {
    units: Arc<BTreeMap<u8, Unit>>,
    log: Arc<Mutex<Vec<LineRequest>>>,
}

type Answer = Result<Option<Response>, ExceptionCode>;

impl Service for LineService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let received = Instant::now();
        let index = {
            let mut log = lock(&self.log);
            log.push(LineRequest {
                unit: req.slave,
                function: req.request.function_code().value(),
                received,
                answered: None,
            });
            log.len() - 1
        };
        let units = Arc::clone(&self.units);
        let log = Arc::clone(&self.log);
        Box::pin(async move {
            let Some(unit) = units.get(&req.slave) else {
                // Nobody on the line has this address: silence.
                return Ok(None);
            };
            if let Behaviour::Slow(delay) = unit.behaviour {
                tokio::time::sleep(delay).await;
            }
            let answer = lock(&unit.state).answer(unit.behaviour, req.slave, &req.request);
            if !matches!(answer, Ok(None))
                && let Some(entry) = lock(&log).get_mut(index)
            {
                entry.answered = Some(Instant::now());
            }
            answer
        })
    }
}

/// Three devices on one RS-485 line: an energy meter (unit 1), a drive (unit 2) and an old
/// temperature controller without FC 43 (unit 3, identified by FC 17 Report Server ID).
pub fn rtu_line() -> Vec<DeviceSpec> {
    use super::plants::{CONFIG_START, PROCESS_START};
    use super::spec::SimIdentity;
    let device = |name: &str, unit: u8, identity: SimIdentity, holding: Vec<u16>| DeviceSpec {
        name: name.to_owned(),
        identity,
        unit_ids: vec![unit],
        holding: vec![(CONFIG_START, holding)],
        input: vec![(PROCESS_START, vec![2301, 498, 150])],
        coils: vec![(0, vec![true, false, true, false])],
        discrete: vec![],
        behaviour: Behaviour::Normal,
    };
    let ident = |vendor: &str, product: &str, revision: &str, model: &str| SimIdentity {
        vendor_name: vendor.to_owned(),
        product_code: product.to_owned(),
        revision: revision.to_owned(),
        vendor_url: None,
        product_name: Some(model.to_owned()),
        model_name: Some(model.to_owned()),
        user_application_name: None,
        extra: vec![],
    };
    let mut tc = device(
        "oven-tc",
        3,
        ident(
            "West Control Solutions",
            "P6100",
            "2.07",
            "P6100 controller",
        ),
        vec![1800, 15, 5],
    );
    tc.behaviour = Behaviour::NoDeviceId;
    vec![
        device(
            "feeder-meter",
            1,
            ident("Eastron", "SDM630-Modbus", "V2.1", "SDM630 energy meter"),
            vec![9600, 1, 2],
        ),
        device(
            "conveyor-drive",
            2,
            ident("ABB", "ACS580-01", "2.15.0.1", "ACS580 drive"),
            vec![1450, 50, 30, 3],
        ),
        tc,
    ]
}
