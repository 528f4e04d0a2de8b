//! `cnnd-worker`: the trainer process. The daemon starts one per slot
//! (`cnnd-worker --daemon URL --worker-id ID ...`); it leases trials over the worker
//! protocol, trains them with libtorch and answers Predict jobs. `cnnd-worker probe` prints
//! the devices libtorch sees, as JSON (the daemon runs it to plan its slots).

use clap::{Parser, Subcommand};
use cnnd_worker::worker;

#[derive(Parser)]
#[command(name = "cnnd-worker", version = long_version(), about = "The cnnd trainer: leases trials from a cnnd daemon and trains them with libtorch")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    worker: Option<worker::WorkerArgs>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Prints the devices libtorch sees, as JSON.
    Probe,
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
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,tower=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match (cli.command, cli.worker) {
        (Some(Command::Probe), _) => {
            let probe = cnnd_worker::probe::probe();
            println!("{}", serde_json::to_string(&probe).unwrap_or_default());
            Ok(())
        }
        (None, Some(args)) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(worker::run(args))),
        (None, None) => Err(anyhow::anyhow!(
            "give --daemon URL --worker-id ID (the daemon starts its workers so), or `probe`"
        )),
    };
    if let Err(e) = result {
        eprintln!("cnnd-worker: {e:#}");
        std::process::exit(1);
    }
}
