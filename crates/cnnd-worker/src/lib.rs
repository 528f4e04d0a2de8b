//! cnnd-worker: the trainer. A worker process leases trials from the daemon over the worker
//! protocol, trains them with libtorch (tch) and reports every epoch; beside training it
//! answers Predict jobs. This is the only crate of cnnd that links libtorch: a libtorch
//! crash or an out-of-memory takes down one worker, never the daemon.
//!
//! Layering (imports point down only):
//!
//! ```text
//! worker (the protocol loop)   predict (Predict jobs)
//! session (connection, registration)   files (fetch, upload, data views)   cache (blobs)
//! train (epochs, evaluation, checkpoints)   transfer (initFrom)
//! model (the CNN family with tch::nn)   backbone (resnet18, mobilenet_v2)
//! data (readers, cache, splits)   imaging (decoding, resizing, MNIST-style digits)
//! ```
//!
//! They use `cnnd_core` (trial parameters, the data-set catalogue, the model-size
//! arithmetic), `cnnd_proto` (the wire) and `cnnd_client` (the token).

pub mod backbone;
pub mod cache;
pub mod data;
pub mod files;
pub mod imaging;
pub mod model;
pub mod predict;
pub mod probe;
pub mod session;
pub mod train;
pub mod transfer;
pub mod worker;

/// The CUDA version of the libtorch this binary was built against ("none" for CPU builds).
pub const TORCH_CUDA_VERSION: &str = match option_env!("CNND_TORCH_CUDA_VERSION") {
    Some(v) => v,
    None => "none",
};

/// The libtorch version this binary was built against (read from the torch package).
pub const LIBTORCH_VERSION: &str = match option_env!("CNND_LIBTORCH_VERSION") {
    Some(v) => v,
    None => "unknown",
};
