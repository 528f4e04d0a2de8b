//! What libtorch sees on this machine: the CPU and every CUDA device (names and memory from
//! nvidia-smi when it is there), printed as JSON by `cnnd-worker probe` (the daemon runs it
//! in a child to plan its local slots, so the daemon never initialises CUDA itself) and sent
//! when a worker registers.
//!
//! Owns: probing. Must not touch: training, the protocol.

use cnnd_core::devices::{Device, Probe};

/// The CPU cores this process may use.
pub fn cpu_cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// Asks libtorch for its CUDA devices; names and memory come from nvidia-smi when present.
pub fn probe() -> Probe {
    let cores = cpu_cores();
    let mut devices = vec![Device {
        name: "cpu".into(),
        kind: "cpu".into(),
        cores,
        memory_bytes: 0,
        description: format!("{cores} cores"),
    }];
    let count = tch::Cuda::device_count().max(0) as u32;
    let mut gpus: Vec<Device> = (0..count)
        .map(|index| Device {
            name: format!("cuda:{index}"),
            kind: "cuda".into(),
            cores: 0,
            memory_bytes: 0,
            description: format!("CUDA device {index}"),
        })
        .collect();
    if count > 0 {
        if let Ok(out) = std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=index,name,memory.total",
                "--format=csv,noheader,nounits",
            ])
            .output()
        {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let f: Vec<&str> = line.split(',').map(str::trim).collect();
                if let [i, name, mib] = f[..] {
                    if let (Ok(i), Ok(mib)) = (i.parse::<usize>(), mib.parse::<u64>()) {
                        if let Some(g) = gpus.get_mut(i) {
                            g.description = name.to_string();
                            g.memory_bytes = mib * 1024 * 1024;
                        }
                    }
                }
            }
        }
    }
    devices.extend(gpus);
    Probe {
        libtorch_version: crate::LIBTORCH_VERSION.to_string(),
        devices,
        cudnn: tch::Cuda::cudnn_is_available(),
    }
}
