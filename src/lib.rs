//! cnnd: a daemon that runs hyperparameter sweeps of convolutional networks.
//!
//! Layering (imports point down only; see docs/ARCHITECTURE.md):
//!
//! ```text
//! bin (cnnd, cnnctl)
//! api  metrics   worker  predict
//! scheduler  charts        train  transfer
//! store                    model
//! sweep  datasets  pruning  tpe   data  imaging
//! proto  config  auth  limits  client
//! ```
//!
//! The control plane (api, scheduler, store, charts) never imports the training side
//! (worker, predict, train, transfer, model, data, imaging) and the other way round; they
//! meet in `sweep`, `datasets` and `proto`. `Predict` runs in the daemon process through the
//! [`api::Predictor`] trait, which the `cnnd` binary fills with [`predict::LocalPredictor`].

pub mod auth;
pub mod client;
pub mod config;
pub mod datasets;
pub mod limits;
pub mod proto;
pub mod sweep;

// Control plane.
pub mod api;
pub mod charts;
pub mod metrics;
pub mod pruning;
pub mod scheduler;
pub mod store;
pub mod tpe;

// Training side.
pub mod data;
pub mod imaging;
pub mod model;
pub mod predict;
pub mod train;
pub mod transfer;
pub mod worker;
