//! One full-MNIST epoch of the seed model through `run_trial_with` (with a per-epoch
//! checkpoint, as the worker runs trials), printing images/s.
//! Usage: epoch_speed [DATA_DIR] [THREADS] [EPOCHS] [cuda]
//!        epoch_speed optim [THREADS] [ROUNDS]   (optimiser A/B, see `optim_ab`)
//!        epoch_speed micro                      (where a step's time goes)
//!        epoch_speed layout [ROUNDS]            (NCHW vs channels-last A/B, see `layout_ab`)
use cnnd_core::datasets::builtin as dataset_info;
use cnnd_core::sweep::TrialParams;
use cnnd_worker::data::{self, DataCache};
use cnnd_worker::train::{run_trial_with, TrialControl};
use tch::Device;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("micro") {
        micro();
        return Ok(());
    }
    if args.get(1).map(String::as_str) == Some("layout") {
        let rounds = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(6);
        layout_ab(rounds);
        return Ok(());
    }
    if args.get(1).map(String::as_str) == Some("optim") {
        let threads = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1);
        let rounds = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(6);
        optim_ab(threads, rounds);
        return Ok(());
    }
    let dir = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "/work/shared/data".into());
    let threads: i32 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let epochs: u32 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(1);
    tch::set_num_threads(threads);
    let device = if args.get(4).map(|s| s == "cuda").unwrap_or(false) {
        Device::Cuda(0)
    } else {
        Device::Cpu
    };
    let p = TrialParams {
        epochs,
        ..TrialParams::default()
    };
    // RUST_LOG=cnnd=debug shows the trainer's phase timings.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let t = std::time::Instant::now();
    let info = dataset_info("mnist").unwrap();
    let as_ = cnnd_worker::data::DecodeAs::of(&TrialParams::default(), &info);
    let ds = DataCache::new().get(&info, None, std::path::Path::new(&dir), as_)?;
    let load = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let prepared = data::prepare(&ds, &p);
    let prepare_seconds = t.elapsed().as_secs_f64();
    println!(
        "{{\"threads\": {}, \"load_seconds\": {load:.3}, \"prepare_seconds\": {prepare_seconds:.3}, \"train_examples\": {}, \"val_examples\": {}}}",
        tch::get_num_threads(),
        prepared.train.len(),
        prepared.val.len()
    );
    // As the worker runs a trial: weights and a per-epoch checkpoint.
    let dir = std::env::temp_dir().join(format!("epoch-speed-{}", std::process::id()));
    let weights = dir.join("w.safetensors");
    let checkpoint = dir.join("c.safetensors");
    let control = TrialControl {
        checkpoint: Some(&checkpoint),
        ..TrialControl::default()
    };
    let started = std::time::Instant::now();
    let mut epoch_seconds = 0.0;
    let out = run_trial_with(
        &prepared,
        &p,
        1,
        10,
        device,
        &weights,
        &control,
        &mut |r, _| {
            epoch_seconds += r.seconds;
            println!(
            "{{\"epoch\": {}, \"train_loss\": {}, \"train_accuracy\": {}, \"val_loss\": {}, \"val_accuracy\": {}, \"seconds\": {}, \"images_per_second\": {}, \"seconds_outside_epochs\": {:.3}, \"checkpoint_bytes\": {}}}",
            r.epoch, r.train_loss, r.train_accuracy, r.val_loss, r.val_accuracy, r.seconds, r.images_per_second,
            started.elapsed().as_secs_f64() - epoch_seconds,
            std::fs::metadata(&checkpoint).map(|m| m.len()).unwrap_or(0)
        );
            true
        },
    )?;
    println!(
        "{{\"best_epoch\": {}, \"test_loss\": {}, \"test_accuracy\": {}}}",
        out.best_epoch, out.test_loss, out.test_accuracy
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// `epoch_speed optim [THREADS] [ROUNDS]`: thread-CPU milliseconds per training step (forward,
/// backward, update) of the seed model on one batch of 64: tch's `nn::Adam` (libtorch's C++
/// Adam, `backward()`), cnnd's `Optim` (`run_backward`), and cnnd's `Optim` fed from
/// `backward()`'s `.grad`; interleaved in short bursts, medians of the bursts.
fn optim_ab(threads: i32, rounds: usize) {
    use cnnd_worker::train::optim::{Optim, OptimConfig};
    use tch::nn::{self, OptimizerConfig};
    use tch::{Kind, Tensor};
    tch::set_num_threads(threads);
    let p = TrialParams::default();
    let steps = 20;
    tch::manual_seed(0);
    let xs = Tensor::rand([64, 1, 28, 28], (Kind::Float, Device::Cpu));
    let ys = Tensor::randint(10, [64], (Kind::Int64, Device::Cpu));
    let names = [
        "tch nn::Adam",
        "cnnd Optim (run_backward)",
        "cnnd Optim (backward + .grad)",
    ];
    tch::manual_seed(1);
    let stores: Vec<(nn::VarStore, cnnd_worker::model::Net)> = (0..3)
        .map(|_| {
            let vs = nn::VarStore::new(Device::Cpu);
            let net = cnnd_worker::model::build(&vs.root(), &p, 1, 28, 10);
            (vs, net)
        })
        .collect();
    let mut theirs = nn::Adam::default().build(&stores[0].0, 1e-3).unwrap();
    let mut ours_rb = Optim::new(&stores[1].0, OptimConfig::of(&p)).unwrap();
    let mut ours_bw = Optim::new(&stores[2].0, OptimConfig::of(&p)).unwrap();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); 3];
    for round in 0..rounds {
        for k in 0..3 {
            let which = (k + round) % 3;
            let net = &stores[which].1;
            let start = thread_cpu_seconds();
            for _ in 0..steps {
                let loss = net
                    .f_forward_t(&xs, true)
                    .unwrap()
                    .cross_entropy_for_logits(&ys);
                match which {
                    0 => {
                        theirs.zero_grad();
                        loss.backward();
                        theirs.step();
                    }
                    1 => ours_rb.backward_step(&loss).unwrap(),
                    _ => {
                        for v in ours_bw.variables() {
                            let mut v = v.shallow_clone();
                            v.zero_grad();
                        }
                        loss.backward();
                        let grads: Vec<Tensor> =
                            ours_bw.variables().iter().map(|v| v.grad()).collect();
                        ours_bw.step_with(&grads).unwrap();
                    }
                }
            }
            times[which].push((thread_cpu_seconds() - start) * 1e3 / steps as f64);
        }
    }
    for (name, mut t) in names.iter().zip(times) {
        t.sort_by(f64::total_cmp);
        println!(
            "{{\"optimizer\": \"{name}\", \"median_ms_per_step\": {:.2}, \"min\": {:.2}, \"max\": {:.2}}}",
            t[t.len() / 2],
            t[0],
            t[t.len() - 1]
        );
    }
}

/// CPU seconds used by this thread (insensitive to other processes taking the cores).
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// `epoch_speed micro`: where the time of a step goes.
fn micro() {
    use cnnd_worker::train::optim::{Optim, OptimConfig};
    use tch::nn::{self, OptimizerConfig};
    use tch::{Kind, Tensor};
    tch::set_num_threads(1);
    let p = TrialParams::default();
    tch::manual_seed(0);
    let xs = Tensor::rand([64, 1, 28, 28], (Kind::Float, Device::Cpu));
    let ys = Tensor::randint(10, [64], (Kind::Int64, Device::Cpu));
    let vs = nn::VarStore::new(Device::Cpu);
    let net = cnnd_worker::model::build(&vs.root(), &p, 1, 28, 10);
    let n = 50;
    let time = |name: &str, f: &mut dyn FnMut()| {
        f();
        let start = std::time::Instant::now();
        for _ in 0..n {
            f();
        }
        println!(
            "{name}: {:.3} ms",
            start.elapsed().as_secs_f64() * 1e3 / n as f64
        );
    };
    let mut opt = nn::Adam::default().build(&vs, 1e-3).unwrap();
    let mut ours = Optim::new(&vs, OptimConfig::of(&p)).unwrap();
    let vars: Vec<Tensor> = ours.variables().iter().map(|t| t.shallow_clone()).collect();
    for _ in 0..2 {
        time("forward only", &mut || {
            let _ = net.f_forward_t(&xs, true).unwrap();
        });
        time("fwd+backward()", &mut || {
            let loss = net
                .f_forward_t(&xs, true)
                .unwrap()
                .cross_entropy_for_logits(&ys);
            opt.zero_grad();
            loss.backward();
        });
        time("nn::Adam step only", &mut || opt.step());
        time("fwd+run_backward", &mut || {
            let loss = net
                .f_forward_t(&xs, true)
                .unwrap()
                .cross_entropy_for_logits(&ys);
            let _ = Tensor::run_backward(&[&loss], &vars, false, false);
        });
        let loss = net
            .f_forward_t(&xs, true)
            .unwrap()
            .cross_entropy_for_logits(&ys);
        let grads = Tensor::run_backward(&[&loss], &vars, false, false);
        time("ours step only", &mut || ours.step_with(&grads).unwrap());
        {
            let (v, g) = (&vars[7], &grads[7]);
            let mut m = v.zeros_like();
            let mut vv = v.zeros_like();
            let mut d = v.zeros_like();
            let mut p = v.copy();
            let _g = tch::no_grad_guard();
            let mut ts = [0f64; 8];
            for _ in 0..n {
                let mut k = 0;
                let mut lap = |ts: &mut [f64; 8], t: std::time::Instant| {
                    ts[k] += t.elapsed().as_secs_f64();
                    k += 1;
                };
                let t = std::time::Instant::now();
                let _ = m.f_lerp_(g, 0.1).unwrap();
                lap(&mut ts, t);
                let t = std::time::Instant::now();
                let _ = g.f_mul_out(&d, g).unwrap();
                lap(&mut ts, t);
                let t = std::time::Instant::now();
                let _ = vv.f_lerp_(&d, 0.001).unwrap();
                lap(&mut ts, t);
                let t = std::time::Instant::now();
                let _ = vv.f_clamp_min_out(&d, 1.1754944e-38).unwrap();
                let _ = d.f_sqrt_().unwrap();
                lap(&mut ts, t);
                let t = std::time::Instant::now();
                let _ = d.f_div_scalar_(0.5).unwrap();
                lap(&mut ts, t);
                let t = std::time::Instant::now();
                let _ = d.f_add_scalar_(1e-8).unwrap();
                lap(&mut ts, t);
                let t = std::time::Instant::now();
                let _ = d.f_mul_scalar_(-1000.0).unwrap();
                lap(&mut ts, t);
                let t = std::time::Instant::now();
                let _ = p.f_addcdiv_(&m, &d).unwrap();
                lap(&mut ts, t);
            }
            let names = [
                "lerp m",
                "mul_out g*g",
                "lerp v",
                "sqrt_out",
                "div",
                "add eps",
                "mul",
                "addcdiv",
            ];
            for (name, t) in names.iter().zip(ts) {
                println!("  {name}: {:.3} ms", t * 1e3 / n as f64);
            }
            let mut vz = vv.copy();
            time("sqrt_out of v", &mut || {
                let _ = vv.f_sqrt_out(&d).unwrap();
            });
            time("sqrt (alloc) of v", &mut || {
                let _ = vv.f_sqrt().unwrap();
            });
            time("sqrt_ of a copy of v", &mut || {
                vz.f_copy_(&vv).unwrap();
                let _ = vz.f_sqrt_().unwrap();
            });
            let zeros = vv.zeros_like();
            time("sqrt_out of zeros", &mut || {
                let _ = zeros.f_sqrt_out(&d).unwrap();
            });
            let ones = vv.ones_like();
            time("sqrt_out of ones", &mut || {
                let _ = ones.f_sqrt_out(&d).unwrap();
            });
            let tiny = vv.ones_like() * 1e-40;
            time("sqrt_out of denormals", &mut || {
                let _ = tiny.f_sqrt_out(&d).unwrap();
            });
            let denormal = vv
                .gt(0.0)
                .logical_and(&vv.lt(1.1754944e-38))
                .sum(tch::Kind::Int64)
                .int64_value(&[]);
            println!("  v: {denormal} denormals");
            let small = g.abs().lt(1e-19).sum(tch::Kind::Int64).int64_value(&[]);
            let zeros = g.eq(0.0).sum(tch::Kind::Int64).int64_value(&[]);
            println!(
                "  grad: {small} below 1e-19, {zeros} zeros, max {}",
                g.abs().max().double_value(&[])
            );
        }
        let big = Tensor::rand([3136, 128], (Kind::Float, Device::Cpu));
        let mut a = big.copy();
        let b = big.copy();
        let c = big.copy();
        let _g = tch::no_grad_guard();
        time("401k lerp_", &mut || {
            let _ = a.lerp_(&b, 0.1);
        });
        time("401k mul_scalar_", &mut || {
            let _ = a.f_mul_scalar_(0.999).unwrap();
        });
        time("401k mul_scalar_out", &mut || {
            let _ = b.mul_scalar_out(&c, 0.999);
        });
        time("401k addcmul_", &mut || {
            let _ = a.addcmul_(&b, &c);
        });
        time("401k sqrt_out", &mut || {
            let _ = b.sqrt_out(&c);
        });
        time("401k div_scalar_", &mut || {
            let _ = a.f_div_scalar_(1.0001).unwrap();
        });
        time("401k add_scalar_", &mut || {
            let _ = a.f_add_scalar_(1e-8).unwrap();
        });
        time("401k addcdiv_", &mut || {
            let _ = a.addcdiv_(&b, &c);
        });
        time("401k mul_out (tensor)", &mut || {
            let _ = b.f_mul_out(&c, &b).unwrap();
        });
        time("401k mul_scalar (alloc)", &mut || {
            let _ = b.f_mul_scalar(0.999).unwrap();
        });
        time("401k copy_", &mut || {
            a.f_copy_(&b).unwrap();
        });
        time("401k mul_ (tensor)", &mut || {
            let _ = a.f_mul_(&b).unwrap();
        });
        time("401k add_", &mut || {
            let _ = a.f_add_(&b).unwrap();
        });
    }
}

/// `epoch_speed layout [ROUNDS]`: thread-CPU milliseconds per training step (batch 64, 1
/// thread) and per evaluation batch (1000, no grad) of the seed model with contiguous (NCHW)
/// tensors vs channels-last strides (inputs and conv weights), interleaved, medians.
fn layout_ab(rounds: usize) {
    use cnnd_worker::train::optim::{Optim, OptimConfig};
    use tch::nn;
    use tch::{Kind, Tensor};
    tch::set_num_threads(1);
    let p = TrialParams::default();
    let nhwc = |t: &Tensor| t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
    tch::manual_seed(0);
    let xs = Tensor::rand([64, 1, 28, 28], (Kind::Float, Device::Cpu));
    let ys = Tensor::randint(10, [64], (Kind::Int64, Device::Cpu));
    let ev = Tensor::rand([1000, 1, 28, 28], (Kind::Float, Device::Cpu));
    let mut setups = Vec::new();
    for channels_last in [false, true] {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = cnnd_worker::model::build(&vs.root(), &p, 1, 28, 10);
        if channels_last {
            let _g = tch::no_grad_guard();
            for (name, mut v) in vs.variables() {
                if name.ends_with("conv.weight") {
                    let d = nhwc(&v);
                    v.set_data(&d);
                }
            }
        }
        let opt = Optim::new(&vs, OptimConfig::of(&p)).unwrap();
        let x = if channels_last {
            nhwc(&xs)
        } else {
            xs.shallow_clone()
        };
        let e = if channels_last {
            nhwc(&ev)
        } else {
            ev.shallow_clone()
        };
        setups.push((vs, net, opt, x, e));
    }
    let mut step = vec![Vec::new(); 2];
    let mut eval = vec![Vec::new(); 2];
    for round in 0..rounds {
        for k in 0..2 {
            let which = (k + round) % 2;
            let (_, net, opt, x, e) = &mut setups[which];
            let start = thread_cpu_seconds();
            for _ in 0..20 {
                let loss = net
                    .f_forward_t(x, true)
                    .unwrap()
                    .cross_entropy_for_logits(&ys);
                opt.backward_step(&loss).unwrap();
            }
            step[which].push((thread_cpu_seconds() - start) * 1e3 / 20.0);
            let start = thread_cpu_seconds();
            {
                let _g = tch::no_grad_guard();
                let _ = net.f_forward_t(e, false).unwrap();
            }
            eval[which].push((thread_cpu_seconds() - start) * 1e3);
        }
    }
    // Evaluation of the same 1000 images (NCHW) in batches of various sizes.
    let (_, net, _, _, _) = &setups[0];
    let sizes = [1000i64, 500, 250, 125, 50];
    let mut by_size = vec![Vec::new(); sizes.len()];
    for _ in 0..rounds {
        for (i, &b) in sizes.iter().enumerate() {
            let _g = tch::no_grad_guard();
            let start = thread_cpu_seconds();
            for c in 0..1000 / b {
                let _ = net.f_forward_t(&ev.narrow(0, c * b, b), false).unwrap();
            }
            by_size[i].push((thread_cpu_seconds() - start) * 1e3);
        }
    }
    for (i, b) in sizes.iter().enumerate() {
        by_size[i].sort_by(f64::total_cmp);
        println!(
            "{{\"eval_batch\": {b}, \"median_ms_per_1000_images\": {:.1}}}",
            by_size[i][rounds / 2]
        );
    }
    for (i, name) in ["nchw", "channels_last"].iter().enumerate() {
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "{{\"layout\": \"{name}\", \"median_ms_per_train_step_64\": {:.2}, \"median_ms_per_eval_batch_1000\": {:.1}}}",
            med(&mut step[i]),
            med(&mut eval[i])
        );
    }
}
