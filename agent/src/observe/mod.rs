//! Observation: the last observed state of every asset and of the gateway host, and the change
//! events that come from comparing each poll with it.
//!
//! - [`state`]: what is remembered (per asset: presence, identity, configuration blocks).
//! - [`store`]: `state_dir/observed-state.cbor`, atomic, size-capped, damaged files set aside.
//! - [`block`]: one block's debounce (`confirm_polls`, `unstable`, `settled`).
//! - [`host_diff`]: gateway host changes from two `HostFacts`.
//! - [`observer`]: [`Observer`], the comparison of one cycle.

pub mod block;
pub mod host_diff;
pub mod observer;
pub mod state;
pub mod store;

pub use observer::{Observer, Settings};
pub use state::ObservedState;
