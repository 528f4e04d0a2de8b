//! cnnd: the daemon. It accepts sweeps over gRPC, schedules their trials on worker processes
//! (`cnnd-worker`, which it starts and supervises, or which connect to it), records every
//! epoch in its store and renders comparison charts. It never trains and never links
//! libtorch: the trainer is another crate and another process.
//!
//! Layering (imports point down only; see docs/ARCHITECTURE.md):
//!
//! ```text
//! bin/cnnd.rs
//! web (the browser dashboard)
//! api (Orchestrator, WorkerHub)    metrics   launcher (Slurm, Kubernetes)   leadership
//! scheduler   predict_jobs   charts
//! store   datasets (the data directory)   blobs (files by digest)
//! config  auth  limits  files
//! ```
//!
//! Below them, from other crates: `cnnd_core` (sweeps, pruning, tpe, typed states),
//! `cnnd_proto` (the wire), `cnnd_client` (token files).

pub mod auth;
pub mod blobs;
pub mod config;
pub mod datasets;
pub mod files;
pub mod limits;

pub mod api;
pub mod charts;
pub mod launcher;
pub mod leadership;
pub mod metrics;
pub mod predict_jobs;
pub mod scheduler;
pub mod store;
pub mod web;
