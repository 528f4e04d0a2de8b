//! cnnd: a daemon that runs hyperparameter sweeps of convolutional networks.
//!
//! Layering (imports point down only; see docs/ARCHITECTURE.md):
//!
//! ```text
//! bin (cnnd, cnnctl)
//! api            worker
//! scheduler  charts        train
//! store                    model
//! sweep
//! proto  config            data
//! ```
//!
//! The control plane (api, scheduler, store, charts) never imports the training side
//! (worker, train, model, data) and the other way round; they meet in `sweep` and `proto`.

pub mod config;
pub mod proto;
pub mod sweep;

// Control plane.
pub mod api;
pub mod charts;
pub mod scheduler;
pub mod store;

// Training side.
pub mod data;
pub mod model;
pub mod train;
pub mod worker;
