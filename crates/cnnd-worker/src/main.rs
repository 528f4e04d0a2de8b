//! `cnnd-worker`: the trainer process. The daemon starts one per local slot; on any other
//! machine, `cnnd-worker --connect https://DAEMON:PORT --token-file F --ca-file CA` joins
//! the daemon's fleet. It leases trials over the worker protocol, trains them with libtorch
//! and answers Predict jobs. `cnnd-worker probe` prints the devices libtorch sees, as JSON
//! (the daemon runs it to plan its slots).

use clap::Parser;
use cnnd_worker::worker;

/// The worker's command line. `probe` is handled before clap (see `main`): clap's optional
/// flattened arguments beside a subcommand never matched, so every local worker exited.
#[derive(Parser)]
#[command(
    name = "cnnd-worker",
    version = long_version(),
    about = "The cnnd trainer: leases trials from a cnnd daemon and trains them with libtorch",
    after_help = "`cnnd-worker probe` prints the devices libtorch sees, as JSON."
)]
struct Cli {
    #[command(flatten)]
    worker: worker::WorkerArgs,
}

fn long_version() -> &'static str {
    Box::leak(
        format!(
            "{} (libtorch {}, CUDA {})",
            env!("CARGO_PKG_VERSION"),
            cnnd_worker::LIBTORCH_VERSION,
            cnnd_worker::TORCH_CUDA_VERSION
        )
        .into_boxed_str(),
    )
}

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == "probe") {
        let probe = cnnd_worker::probe::probe();
        println!("{}", serde_json::to_string(&probe).unwrap_or_default());
        return;
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,tower=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: under a daemon or a cluster job, stderr is a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(worker::run(cli.worker)));
    if let Err(e) = result {
        eprintln!("cnnd-worker: {e:#}");
        std::process::exit(1);
    }
}
