//! cnnd-core: what every part of cnnd agrees on, with no libtorch and no I/O. The daemon,
//! the trainer (`cnnd-worker`) and the client all depend on it; it depends on none of them.
//!
//! - [`sweep`]: the sweep request, its validation and expansion into trials
//!   ([`sweep::TrialParams`]), the objective and how the best trial is chosen;
//! - [`datasets`]: the data-set catalogue (built-in names, image-folder layout types);
//! - [`test_report`], [`data_preview`]: what a trial's test pass found class by class, and
//!   its training images as the model saw them (sent home by the worker, shown by GetTrial);
//! - [`pruning`]: early stopping (median, ASHA) decisions;
//! - [`tpe`]: the Tree-structured Parzen Estimator sampler;
//! - [`model_size`]: the model family's arithmetic (sizes, filters per block);
//! - [`backbones`]: the pretrained backbones (resnet18, mobilenet_v2) as torchvision defines
//!   them, as data the trainer builds from and `model_size` counts;
//! - [`status`]: typed states of trials, sweeps and workers, and stop reasons;
//! - [`devices`]: compute devices as workers see them;
//! - [`epoch`]: the epoch record;
//! - [`idx`]: the IDX file format (MNIST) as bytes;
//! - [`content`]: files by SHA-256 digest (how daemon and workers that share no folder refer
//!   to data, weights and checkpoints), the data manifest, the protocol and checkpoint
//!   versions.

pub mod backbones;
pub mod content;
pub mod data_preview;
pub mod datasets;
pub mod devices;
pub mod epoch;
pub mod idx;
pub mod model_size;
pub mod pruning;
pub mod status;
pub mod sweep;
pub mod test_report;
pub mod tpe;
