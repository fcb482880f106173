//! # shadowbucket
//!
//! Forecast-driven soft reservations ("shadow buckets") over exact token buckets, for millions of
//! customers, in batches.
//!
//! Every customer has a standard token bucket (its contract) and a shadow bucket: a reservation of
//! shared pool capacity sized from a forecast of its consumption. A request is granted from the
//! shadow bucket when the reservation covers it (a fast path that touches no shared state), else
//! from the pool (a fallback that raises the reservation at once), else denied with the reason and
//! a retry-after. The exact contract is `docs/semantics.md`; the choices this crate makes where the
//! contract leaves room are in `docs/engine.md`.
//!
//! State lives in one memory-mapped file ([`Engine::create`], [`Engine::open`]): a
//! structure-of-arrays store that survives restarts and crashes (a batch is all or nothing). Token
//! arithmetic is exact fixed point ([`fixed`]); the caller supplies every timestamp, so replays
//! are deterministic.
//!
//! Modules: [`fixed`] (token arithmetic), [`config`] (contracts, pool, reservations),
//! [`layout`] (the file format), `store` (file, transactions, recovery), `kernel` (one request),
//! `batch` (the parallel batch path), [`reserve`] (budget cut-back), [`engine`] (the API), [`snapshot`] (consistent copies),
//! [`forecast`] (usage histories, baseline forecasters and their evaluation metrics), [`model`]
//! (the streaming LSTM), [`train`] (fitting it on the CPU).

pub mod batch;
pub mod config;
pub mod engine;
pub mod error;
pub mod fixed;
pub mod forecast;
pub mod index;
pub mod kernel;
pub mod layout;
mod mmap;
pub mod model;
pub mod predict;
pub mod reserve;
pub mod snapshot;
mod store;
pub mod train;

pub use batch::{NO_SLOT, PhaseTimes};
pub use config::{Contract, EngineConfig, Reservation};
pub use engine::{
    BatchOutcome, CreateOptions, CustomerView, Engine, GrantPath, Keys, Ledger, MAX_BATCH, Stats,
    TickReport,
};
pub use error::{Error, Result};
pub use fixed::Rate;
pub use kernel::{Decision, Outcome};
pub use predict::{Event, Forecast, Predictor, ReservationPolicy, Target};
pub use snapshot::{Snapshot, SnapshotCapture};
