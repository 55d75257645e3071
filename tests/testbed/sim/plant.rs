//! A running plant: one tokio-modbus TCP server per device, plus test hooks.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_modbus::server::Service;
use tokio_modbus::server::tcp::Server;
use tokio_modbus::{ExceptionCode, Response, SlaveRequest};

use super::SimError;
use super::device::DeviceState;
use super::spec::{Behaviour, DeviceSpec};
use super::wire::SniffStream;

/// One device of a running plant, as a test sees it.
#[derive(Debug, Clone)]
pub struct SimDevice {
    pub name: String,
    /// The address it actually listens on (the real port when it was bound to port 0).
    pub addr: SocketAddr,
    pub unit_ids: Vec<u8>,
    /// The spec it was started from, with its current identity (after `set_revision`).
    pub spec: DeviceSpec,
}

struct Device {
    spec: DeviceSpec,
    addr: SocketAddr,
    state: Arc<Mutex<DeviceState>>,
}

impl Device {
    fn state(&self) -> MutexGuard<'_, DeviceState> {
        lock(&self.state)
    }
}

fn lock(state: &Mutex<DeviceState>) -> MutexGuard<'_, DeviceState> {
    // A panic while holding the lock cannot leave the tables half-updated in a way that
    // matters to a simulator; keep serving.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

struct Task {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<()>,
}

/// A running simulated plant. Dropping it aborts its servers; [`Plant::stop`] waits for them.
pub struct Plant {
    devices: Vec<Device>,
    tasks: Vec<Task>,
}

impl Plant {
    /// Starts one listener per device: `specs[i]` listens on `binds[i]`. Port 0 picks a free
    /// port; any 127.x.y.z address works on Linux. Must run inside a tokio runtime.
    pub async fn start(specs: Vec<DeviceSpec>, binds: Vec<SocketAddr>) -> io::Result<Plant> {
        if specs.len() != binds.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} device specs but {} bind addresses; give one address per device",
                    specs.len(),
                    binds.len()
                ),
            ));
        }
        for spec in &specs {
            spec.validate().map_err(io::Error::other)?;
        }
        let mut plant = Plant {
            devices: Vec::with_capacity(specs.len()),
            tasks: Vec::with_capacity(specs.len()),
        };
        for (spec, bind) in specs.into_iter().zip(binds) {
            let listener = TcpListener::bind(bind).await.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "simulated device {:?} cannot listen on {bind}: {e}",
                        spec.name
                    ),
                )
            })?;
            let addr = listener.local_addr()?;
            let state = Arc::new(Mutex::new(DeviceState::new(&spec)));
            plant
                .tasks
                .push(serve(listener, spec.behaviour, state.clone()));
            plant.devices.push(Device { spec, addr, state });
        }
        Ok(plant)
    }

    /// Starts device `i` on `first + i` (consecutive IPv4 addresses, e.g. 127.0.77.1,
    /// 127.0.77.2, …), all on one port, so a scan of a range finds them. Port 0 picks a port
    /// free on the first address and uses it for all (retried a few times if another address
    /// has it taken).
    pub async fn start_on_addresses(
        specs: Vec<DeviceSpec>,
        first: std::net::Ipv4Addr,
        port: u16,
    ) -> io::Result<Plant> {
        let base = u32::from(first);
        let addresses = |port: u16| -> io::Result<Vec<SocketAddr>> {
            (0..specs.len())
                .map(|i| {
                    u32::try_from(i)
                        .ok()
                        .and_then(|i| base.checked_add(i))
                        .map(|ip| SocketAddr::from((std::net::Ipv4Addr::from(ip), port)))
                        .ok_or_else(|| {
                            io::Error::new(
                                io::ErrorKind::InvalidInput,
                                format!("no room for {} addresses after {first}", specs.len()),
                            )
                        })
                })
                .collect()
        };
        if port != 0 {
            return Self::start(specs.clone(), addresses(port)?).await;
        }
        let mut last = io::Error::other("no attempt made");
        for _ in 0..5 {
            let probe = std::net::TcpListener::bind((first, 0))?;
            let port = probe.local_addr()?.port();
            drop(probe);
            match Self::start(specs.clone(), addresses(port)?).await {
                Ok(plant) => return Ok(plant),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Starts every device on 127.0.0.1 with a free port each.
    pub async fn start_local(specs: Vec<DeviceSpec>) -> io::Result<Plant> {
        let binds = vec![SocketAddr::from(([127, 0, 0, 1], 0)); specs.len()];
        Self::start(specs, binds).await
    }

    /// The devices, in the order they were given.
    pub fn devices(&self) -> Vec<SimDevice> {
        self.devices
            .iter()
            .map(|d| {
                let mut spec = d.spec.clone();
                spec.identity = d.state().identity.clone();
                SimDevice {
                    name: d.spec.name.clone(),
                    addr: d.addr,
                    unit_ids: d.spec.unit_ids.clone(),
                    spec,
                }
            })
            .collect()
    }

    fn device(&self, device: usize) -> Result<&Device, SimError> {
        self.devices.get(device).ok_or(SimError::NoDevice {
            index: device,
            count: self.devices.len(),
        })
    }

    /// Writes a holding register as an engineering workstation would (test hook for drift).
    pub fn write_holding(
        &self,
        device: usize,
        unit: u8,
        addr: u16,
        value: u16,
    ) -> Result<(), SimError> {
        let d = self.device(device)?;
        let mut state = d.state();
        let tables = state.units.get_mut(&unit).ok_or_else(|| SimError::NoUnit {
            device: d.spec.name.clone(),
            unit,
        })?;
        tables
            .holding
            .write(addr, &[value], 1)
            .map_err(|_| SimError::NoRegister {
                device: d.spec.name.clone(),
                unit,
                addr,
            })
    }

    /// Reads a holding register's current value (to check what a workstation wrote).
    pub fn read_holding(&self, device: usize, unit: u8, addr: u16) -> Result<u16, SimError> {
        let d = self.device(device)?;
        let state = d.state();
        state
            .units
            .get(&unit)
            .ok_or_else(|| SimError::NoUnit {
                device: d.spec.name.clone(),
                unit,
            })?
            .holding
            .get(addr)
            .ok_or_else(|| SimError::NoRegister {
                device: d.spec.name.clone(),
                unit,
                addr,
            })
    }

    /// "Upgrades the firmware": changes identification object 0x02 (and the FC 17 text).
    pub fn set_revision(&self, device: usize, rev: &str) -> Result<(), SimError> {
        let d = self.device(device)?;
        let mut state = d.state();
        let mut identity = state.identity.clone();
        identity.revision = rev.to_owned();
        identity.validate(&d.spec.name)?;
        state.identity = identity;
        Ok(())
    }

    /// Requests received so far, by function code, as seen on the wire (including requests
    /// the server could not decode). Empty for an index out of range.
    pub fn function_codes_seen(&self, device: usize) -> BTreeMap<u8, u64> {
        self.devices
            .get(device)
            .map(|d| d.state().fc_seen.clone())
            .unwrap_or_default()
    }

    /// Stops every server and waits for them; open connections are closed.
    pub async fn stop(mut self) {
        for task in std::mem::take(&mut self.tasks) {
            // Sending fails only when the server already ended on its own.
            let _ = task.stop.send(());
            let _ = task.handle.await;
        }
    }
}

impl Drop for Plant {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.handle.abort();
        }
    }
}

fn serve(listener: TcpListener, behaviour: Behaviour, state: Arc<Mutex<DeviceState>>) -> Task {
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        let server = Server::new(listener);
        let on_connected = move |stream: TcpStream, _peer: SocketAddr| {
            let state = state.clone();
            async move {
                let service = SimService {
                    behaviour,
                    state: state.clone(),
                };
                Ok(Some((service, SniffStream::new(stream, state))))
            }
        };
        let abort = async move {
            let _ = stopped.await;
        };
        // Per-connection errors (a client that sent garbage) close that connection only.
        if let Err(e) = server
            .serve_until(&on_connected, |_e: io::Error| {}, abort)
            .await
        {
            tracing::warn!("simulated device server stopped: {e}");
        }
    });
    Task { stop, handle }
}

/// The tokio-modbus service of one device connection.
struct SimService {
    behaviour: Behaviour,
    state: Arc<Mutex<DeviceState>>,
}

type Answer = Result<Option<Response>, ExceptionCode>;

impl Service for SimService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let behaviour = self.behaviour;
        let state = self.state.clone();
        match behaviour {
            Behaviour::Slow(delay) => Box::pin(async move {
                tokio::time::sleep(delay).await;
                lock(&state).answer(behaviour, req.slave, &req.request)
            }),
            _ => {
                let answer = lock(&state).answer(behaviour, req.slave, &req.request);
                Box::pin(std::future::ready(answer))
            }
        }
    }
}
