//! Transfer learning: starting a model from other weights (a trial's best weights or a
//! safetensors file). Variables whose name and shape match the source are copied; the rest
//! (a head for another number of classes, a dense layer for another input size, the first
//! convolution when the channels differ) keep their fresh initialisation and are listed.
//! With `freeze: conv` (or `backbone`) everything before the head stops training; with
//! `fineTuneAfter`, [`unfreeze_top`] lets the top stages of that body train again.
//!
//! Owns: matching source tensors to a model's variables, freezing and unfreezing.
//! Must not touch: the training loop, data, the control plane.

use std::collections::HashMap;
use std::path::Path;

use tch::{nn, Tensor};

use cnnd_core::sweep::{Arch, Freeze, TrialParams};

/// What starting from other weights did to a model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transfer {
    /// Variables copied from the source.
    pub loaded: Vec<String>,
    /// Variables left freshly initialised: absent from the source or of another shape.
    pub reinitialised: Vec<String>,
    /// Variables that no longer train.
    pub frozen: Vec<String>,
    /// A one-line summary for the trial's record.
    pub note: String,
}

/// The stage of the body a variable belongs to: the family's block (`block{i}.conv.*`,
/// `block{i}.bn.*`), a backbone's stage (`cnnd_core::backbones`); None for the head's.
pub fn body_stage(arch: Arch, name: &str) -> Option<usize> {
    match cnnd_core::backbones::backbone(arch) {
        Some(b) => b.stage_of(name),
        None => name
            .strip_prefix("block")
            .and_then(|rest| rest.split('.').next())
            .and_then(|i| i.parse().ok()),
    }
}

/// Batch norm's running statistics: kept, never trained, so never frozen or unfrozen.
fn is_statistic(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// Fine-tuning: lets the variables of the top `fineTuneBlocks` stages of a frozen body train
/// again; returns their names (sorted).
pub fn unfreeze_top(vs: &nn::VarStore, p: &TrialParams) -> Vec<String> {
    let first = p.body_stages().saturating_sub(p.fine_tune_blocks) as usize;
    let mut names: Vec<String> = vs
        .variables()
        .into_iter()
        .filter(|(name, var)| {
            !is_statistic(name)
                && !var.requires_grad()
                && body_stage(p.arch, name).is_some_and(|s| s >= first)
        })
        .map(|(name, var)| {
            let _ = var.shallow_clone().set_requires_grad(true);
            name
        })
        .collect();
    names.sort();
    names
}

/// Copies the tensors of `source` (safetensors) into the matching variables of `vs` and
/// freezes as asked. Errors name the file.
pub fn apply(
    vs: &nn::VarStore,
    source: &Path,
    described_as: &str,
    freeze: Freeze,
    arch: Arch,
) -> Result<Transfer, String> {
    let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(source)
        .map_err(|e| {
            format!(
                "initFrom {described_as}: cannot read {}: {e}",
                source.display()
            )
        })?
        .into_iter()
        .collect();
    let mut names: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Transfer::default();
    let _no_grad = tch::no_grad_guard();
    for (name, var) in &names {
        match tensors.get(name) {
            Some(t) if t.size() == var.size() => {
                var.shallow_clone()
                    .f_copy_(&t.to_device(var.device()).to_kind(var.kind()))
                    .map_err(|e| format!("initFrom {described_as}: {name}: {e}"))?;
                out.loaded.push(name.clone());
            }
            _ => out.reinitialised.push(name.clone()),
        }
    }
    if out.loaded.is_empty() {
        return Err(format!(
            "initFrom {described_as}: {} shares no variable (same name and shape) with this model",
            source.display()
        ));
    }
    if freeze != Freeze::None {
        let backbone = cnnd_core::backbones::backbone(arch);
        for (name, var) in &names {
            let in_body = match &backbone {
                Some(b) => b.stage_of(name).is_some(),
                None => body_stage(arch, name).is_some(),
            };
            if in_body && var.requires_grad() {
                let _ = var.shallow_clone().set_requires_grad(false);
                out.frozen.push(name.clone());
            }
        }
    }
    out.note = format!(
        "initFrom {described_as}: {} variables loaded, {} re-initialised{}, {} frozen",
        out.loaded.len(),
        out.reinitialised.len(),
        if out.reinitialised.is_empty() {
            String::new()
        } else {
            format!(" ({})", out.reinitialised.join(", "))
        },
        out.frozen.len()
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model;
    use cnnd_core::sweep::{DenseUnits, Head, TrialParams};

    fn net(p: &TrialParams, channels: i64, side: i64, classes: i64) -> nn::VarStore {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        model::build(&vs.root(), p, channels, side, classes);
        vs
    }

    #[test]
    fn matching_layers_are_copied_and_the_rest_reinitialised_and_listed() {
        let p = TrialParams {
            base_filters: 4,
            units: DenseUnits(vec![8]),
            ..Default::default()
        };
        let source = net(&p, 1, 28, 10);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.safetensors");
        source.save(&file).unwrap();

        // Three channels, 32x32, two classes: first conv, dense hidden and out differ.
        let target = net(&p, 3, 32, 2);
        let t = apply(&target, &file, "test", Freeze::Conv, Arch::Cnn).unwrap();
        assert!(t.reinitialised.contains(&"block0.conv.weight".to_string()));
        assert!(t.reinitialised.contains(&"hidden.weight".to_string()));
        assert!(t.reinitialised.contains(&"out.weight".to_string()));
        assert!(t.loaded.contains(&"block1.conv.weight".to_string()));
        let src = source.variables();
        let dst = target.variables();
        assert!(dst["block1.conv.weight"].equal(&src["block1.conv.weight"]));
        assert!(t.frozen.iter().all(|n| n.starts_with("block")));
        assert!(!dst["block1.conv.weight"].requires_grad());
        assert!(dst["out.weight"].requires_grad());
        assert!(t.note.contains("re-initialised"), "{}", t.note);
    }

    #[test]
    fn a_source_sharing_nothing_is_refused() {
        let p = TrialParams {
            base_filters: 4,
            units: DenseUnits(vec![8]),
            ..Default::default()
        };
        let gap = TrialParams {
            head: Head::Gap,
            base_filters: 6,
            ..p.clone()
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.safetensors");
        // Other filter counts everywhere, 3 classes vs 10: nothing fits, not even the bias.
        net(&gap, 3, 28, 3).save(&file).unwrap();
        let e = apply(&net(&p, 1, 28, 10), &file, "x", Freeze::None, Arch::Cnn).unwrap_err();
        assert!(e.contains("shares no variable"), "{e}");
        let e = apply(
            &net(&p, 1, 28, 10),
            &dir.path().join("missing.safetensors"),
            "x",
            Freeze::None,
            Arch::Cnn,
        )
        .unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }
}
