//! Prediction with a trained trial: the `Predict` RPC's work, done by workers. The daemon
//! turns each Predict call into a job on the worker protocol; every worker serves jobs
//! beside its training ([`serve_jobs`], on the CPU, on a thread of its own), so a
//! prediction never waits for a trial. Images arrive as bytes (never paths), are decoded
//! within limits, preprocessed the way the trial's data was (MNIST-style for digit models,
//! else the trial's resize, channels and normalisation) and classified with the trial's
//! best weights.
//!
//! Owns: the input record a worker writes beside a trial's weights ([`InputRecord`]), and
//! answering jobs ([`answer`]).
//! Must not touch: scheduling, training.

use std::io::Cursor;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};
use tonic::Status;

use crate::cache::BlobHandle;
use crate::data::{standardize, Prepared};
use crate::files::after;
use crate::imaging::{self, DecodeLimits};
use crate::model;
use crate::worker::PredictContext;
use cnnd_core::datasets::DatasetInfo;
use cnnd_core::sweep::{InputSize, Output, Resample, TrialParams};
use cnnd_proto as proto;

/// How a trial saw its images: written by the worker that trains it, uploaded with its
/// weights, and handed to the worker that answers a Predict job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InputRecord {
    pub dataset: String,
    /// The model input's height (`side`, as records written before non-square inputs call
    /// it) and width (0 in those records: square).
    #[serde(alias = "side")]
    pub height: u32,
    #[serde(default)]
    pub width: u32,
    pub channels: u32,
    pub resample: Resample,
    /// Per-channel (mean, std) subtracted and divided after scaling to 0..1.
    pub standardization: Option<(Vec<f64>, Vec<f64>)>,
    pub class_names: Vec<String>,
    /// 28x28 gray digits: `preprocess: auto` means MNIST-style.
    pub digits: bool,
}

impl InputRecord {
    /// The model input's height and width.
    pub fn size(&self) -> InputSize {
        InputSize {
            height: self.height,
            width: if self.width == 0 {
                self.height
            } else {
                self.width
            },
        }
    }

    pub fn of(p: &TrialParams, info: &DatasetInfo, prepared: &Prepared) -> InputRecord {
        let size = p.effective_input_size(info);
        InputRecord {
            dataset: info.name.clone(),
            height: size.height,
            width: size.width,
            channels: p.effective_channels(info),
            resample: p.resample,
            standardization: prepared.standardization.clone(),
            class_names: info.class_names.clone(),
            digits: info.is_digits(),
        }
    }

    /// Writes the record to `path` (uploaded with the weights when the trial ends).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }
}

/// How an image becomes model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preprocessing {
    /// MNIST-style digit preprocessing ([`imaging::mnist_style`]), then the trial's input.
    Mnist,
    /// The trial's resize and channel conversion, as in training.
    Resize,
}

impl Preprocessing {
    pub fn name(self) -> &'static str {
        match self {
            Preprocessing::Mnist => "mnist",
            Preprocessing::Resize => "resize",
        }
    }

    /// Parses the request's `preprocess` ("", auto, mnist, resize).
    pub fn choose(requested: &str, record: &InputRecord) -> Result<Preprocessing, Status> {
        match requested {
            "" | "auto" if record.digits => Ok(Preprocessing::Mnist),
            "" | "auto" | "resize" => Ok(Preprocessing::Resize),
            "mnist" => Ok(Preprocessing::Mnist),
            other => Err(Status::invalid_argument(format!(
                "preprocess: '{other}' is not one of auto, mnist, resize"
            ))),
        }
    }
}

/// The model input of one image (CHW floats in 0..1, before standardisation) and its
/// picture.
pub fn model_input(
    img: &image::DynamicImage,
    how: Preprocessing,
    record: &InputRecord,
) -> Result<(Vec<f32>, image::DynamicImage), imaging::ImagingError> {
    let source = match how {
        Preprocessing::Mnist => image::DynamicImage::ImageLuma8(imaging::mnist_style(img)?),
        Preprocessing::Resize => img.clone(),
    };
    let input = imaging::to_model_input(&source, record.size(), record.channels, record.resample);
    Ok((
        input.clone(),
        picture(&input, record.size(), record.channels),
    ))
}

/// CHW floats in 0..1 as an 8-bit image.
fn picture(input: &[f32], size: InputSize, channels: u32) -> image::DynamicImage {
    let InputSize { height, width } = size;
    let plane = (height * width) as usize;
    let byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    if channels == 1 {
        let px: Vec<u8> = input.iter().map(|&v| byte(v)).collect();
        image::DynamicImage::ImageLuma8(
            image::GrayImage::from_raw(width, height, px).expect("height*width pixels"),
        )
    } else {
        let px: Vec<u8> = (0..plane)
            .flat_map(|i| (0..3).map(move |c| byte(input[c * plane + i])))
            .collect();
        image::DynamicImage::ImageRgb8(
            image::RgbImage::from_raw(width, height, px).expect("height*width*3 pixels"),
        )
    }
}

fn png(img: &image::DynamicImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    // Encoding an in-memory 8-bit image to PNG cannot fail.
    let _ = img.write_to(&mut out, image::ImageFormat::Png);
    out.into_inner()
}

/// Answers Predict jobs until the worker stops: long-polls `NextPredict`, fetches the
/// trial's weights by digest (kept in the cache for the next job), computes each answer on a
/// blocking thread, and sends it with `FinishPredict`.
pub async fn serve_jobs(ctx: PredictContext) {
    let session = ctx.session();
    let mut unreachable_since: Option<Instant> = None;
    loop {
        if ctx.terminating() {
            return;
        }
        let polled = session
            .call(
                after(Duration::from_secs(1)),
                |mut client, worker_id| async move {
                    client
                        .next_predict(proto::NextPredictRequest { worker_id })
                        .await
                },
            )
            .await;
        let job = match polled {
            Ok(job) => {
                unreachable_since = None;
                job.into_inner()
            }
            Err(e) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if ctx.local() && since.elapsed() > Duration::from_secs(10) {
                    tracing::warn!("no more Predict jobs: {}", e.message());
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if job.job_id.is_empty() {
            continue;
        }
        let job_id = job.job_id.clone();
        let outcome = match fetch_weights(&ctx, &job).await {
            Ok(weights) => tokio::task::spawn_blocking(move || {
                let outcome = answer(&job, weights.path());
                drop(weights);
                outcome
            })
            .await
            .unwrap_or_else(|e| Err(Status::internal(format!("predict panicked: {e}")))),
            Err(status) => Err(status),
        };
        let outcome = match outcome {
            Ok(response) => proto::finish_predict_request::Outcome::Response(response),
            Err(status) => proto::finish_predict_request::Outcome::Failure(proto::PredictFailure {
                code: status.code() as i32,
                message: status.message().to_string(),
            }),
        };
        let sent = session
            .call(after(Duration::from_secs(10)), |mut client, worker_id| {
                let finish = proto::FinishPredictRequest {
                    worker_id,
                    job_id: job_id.clone(),
                    outcome: Some(outcome.clone()),
                };
                async move { client.finish_predict(finish).await }
            })
            .await;
        if let Err(e) = sent {
            tracing::warn!(job = job_id, "Predict answer not taken: {}", e.message());
        }
    }
}

/// The job's weights in the cache (fetched when missing).
async fn fetch_weights(
    ctx: &PredictContext,
    job: &proto::PredictJob,
) -> Result<BlobHandle, Status> {
    let weights = job
        .weights
        .as_ref()
        .ok_or_else(|| Status::internal("a Predict job without weights"))?
        .checked("weights")
        .map_err(Status::internal)?;
    ctx.files()
        .get(&weights, after(Duration::from_secs(60)))
        .await
        .map_err(|e| {
            Status::unavailable(format!(
                "trialId: the weights of trial '{}' could not be fetched: {e:#}",
                job.trial_id
            ))
        })
}

/// Classifies a job's images with its trial's best weights, on the CPU. The error is the
/// status the Predict caller gets.
pub fn answer(job: &proto::PredictJob, weights: &Path) -> Result<proto::PredictResponse, Status> {
    let request = job
        .request
        .as_ref()
        .ok_or_else(|| Status::internal("a Predict job without its request"))?;
    let p: TrialParams = serde_json::from_str(&job.params_json)
        .map_err(|e| Status::internal(format!("trial parameters unreadable: {e}")))?;
    let limits = DecodeLimits {
        max_bytes: job.max_image_bytes,
        max_pixels: job.max_image_pixels,
    };
    let record: InputRecord = serde_json::from_str(&job.input_record_json).map_err(|e| {
        Status::failed_precondition(format!(
            "trialId: trial '{}' has no readable input record ({e}); train it again",
            job.trial_id
        ))
    })?;
    let how = Preprocessing::choose(&request.preprocess, &record)?;
    let p = &p;
    let classes = record.class_names.len() as i64;
    let vs = nn::VarStore::new(Device::Cpu);
    let net = model::build(
        &vs.root(),
        p,
        record.channels as i64,
        record.size(),
        classes,
    );
    crate::train::load_weights(&vs, weights)
        .map_err(|e| Status::internal(format!("loading {}: {e}", weights.display())))?;
    let top_k = match request.top_k {
        0 => 3,
        k => k as i64,
    }
    .min(classes);

    let mut predictions = Vec::with_capacity(request.images.len());
    for (i, image) in request.images.iter().enumerate() {
        let label = if image.name.is_empty() {
            format!("images[{i}]")
        } else {
            format!("images[{i}] ({})", image.name)
        };
        let img = imaging::decode(&image.data, &limits).map_err(|e| match e {
            imaging::ImagingError::TooManyBytes { .. }
            | imaging::ImagingError::TooManyPixels { .. }
            | imaging::ImagingError::DecoderLimit(_) => {
                Status::resource_exhausted(format!("{label}: {e}"))
            }
            _ => Status::invalid_argument(format!("{label}: {e}")),
        })?;
        let (input, pic) = model_input(&img, how, &record)
            .map_err(|e| Status::invalid_argument(format!("{label}: {e}")))?;
        let c = record.channels as i64;
        let size = record.size();
        let (h, w) = (size.height as i64, size.width as i64);
        let mut xs = Tensor::from_slice(&input).view([1, c, h, w]);
        if let Some((mean, std)) = &record.standardization {
            xs = standardize(&xs, mean, std);
        }
        let probs = tch::no_grad(|| -> Result<Tensor, tch::TchError> {
            let logits = net.f_forward_t(&xs, false)?;
            Ok(match p.output {
                Output::Softmax => logits.f_softmax(-1, Kind::Float)?,
                Output::Sigmoid => {
                    let one = logits.f_sigmoid()?;
                    Tensor::f_cat(&[one.f_neg()?.f_add_scalar(1.0)?, one], 1)?
                }
            })
        })
        .map_err(|e| Status::internal(format!("{label}: libtorch: {e}")))?;
        let probs = Vec::<f32>::try_from(&probs.view([-1]))
            .map_err(|e| Status::internal(format!("{label}: {e}")))?;
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        predictions.push(proto::Prediction {
            name: image.name.clone(),
            top: order
                .into_iter()
                .take(top_k as usize)
                .map(|k| proto::ClassScore {
                    index: k as u32,
                    class_name: record.class_names.get(k).cloned().unwrap_or_default(),
                    probability: f64::from(probs[k]),
                })
                .collect(),
            preprocessing: how.name().to_string(),
            preprocessed_png: if request.return_preprocessed {
                png(&pic)
            } else {
                Vec::new()
            },
        });
    }
    Ok(proto::PredictResponse {
        predictions,
        class_names: record.class_names,
    })
}
