//! Compute devices as a worker's libtorch sees them: what `cnnd-worker probe` prints (the
//! daemon reads it to plan its local worker slots) and what a worker registers with.
//!
//! Owns: the device description. Pure.

use serde::{Deserialize, Serialize};

/// One device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// "cpu" or "cuda:N".
    pub name: String,
    /// "cpu" or "cuda".
    pub kind: String,
    /// CPU cores (0 for a GPU).
    pub cores: u32,
    /// GPU memory (0 for the CPU or when unknown).
    pub memory_bytes: u64,
    /// "16 cores", "NVIDIA H200".
    pub description: String,
}

impl Device {
    pub fn is_cuda(&self) -> bool {
        self.kind == "cuda"
    }
}

/// What `cnnd-worker probe` prints, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub libtorch_version: String,
    /// The CPU first, then every CUDA device.
    pub devices: Vec<Device>,
    pub cudnn: bool,
}
