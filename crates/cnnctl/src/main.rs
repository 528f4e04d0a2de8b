//! cnnctl: the command-line client of cnnd. It talks to the daemon's public gRPC API
//! (`cnn.v1.Orchestrator`) only, and owns nothing but presentation: argument parsing, sweep
//! files, tables, JSON output and live progress. It must not touch the store, the scheduler
//! or the training side, and it never links libtorch (a laptop that only submits sweeps
//! needs nothing but this binary).
//!
//! Exit status: 0 success, 1 a refused request / bad input / a broken watch stream, 2 the
//! daemon cannot be reached (and clap's usage errors). Every error is one line on stderr.

mod commands;
mod format;
mod report;
mod sweepfile;
mod watch;

use std::io::{Read, Write};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use cnnd_proto as pb;
use serde_json::Value;

use format::one_line;

/// Default daemon address (DESIGN.md section 4).
const DEFAULT_ADDR: &str = "http://127.0.0.1:50051";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Parser)]
#[command(
    name = "cnnctl",
    version,
    about = "Command-line client of cnnd, the daemon that runs CNN hyperparameter sweeps",
    after_help = "Examples:\n  cnnctl status\n  cnnctl submit sweep.json --watch\n  cnnctl sweeps\n  cnnctl sweep SWEEP\n  cnnctl charts SWEEP"
)]
struct Cli {
    /// Address of the cnnd daemon; several, separated by commas (a leader and its standbys
    /// on PostgreSQL): cnnctl uses the one that leads
    #[arg(long, env = "CNND_ADDR", default_value = DEFAULT_ADDR, global = true)]
    addr: String,
    /// File holding the daemon's API token [default: STATE_DIR/token of the default state
    /// directory]; the environment variable CNND_TOKEN (the token itself) wins over it
    #[arg(long, env = "CNND_TOKEN_FILE", global = true, value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// CA certificate (PEM) for an https:// daemon [default: the system roots]
    #[arg(long, env = "CNND_CA_FILE", global = true, value_name = "FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// Output format: human-readable tables, JSON (one object per line for `watch`), or CSV
    /// (the trial table of `cnnctl sweep`)
    #[arg(short, long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// Options of `cnnctl predict`.
#[derive(Debug, Clone, clap::Args)]
pub struct PredictArgs {
    /// Classes to show per image, best first
    #[arg(long, default_value_t = 3)]
    top: u32,
    /// auto (MNIST-style for digit models, else the trial's resize), mnist, or resize
    #[arg(long, default_value = "auto", value_parser = ["auto", "mnist", "resize"])]
    preprocess: String,
    /// Save each preprocessed model input as PNG in this folder
    #[arg(long, value_name = "DIR")]
    save_preprocessed: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    /// CSV (`cnnctl sweep` only)
    Csv,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the daemon: version, devices, workers, queue and running trials
    Status,
    /// Submit a sweep from a JSON or TOML file
    #[command(after_help = SUBMIT_HELP)]
    Submit {
        /// Sweep file (`.toml` is read as TOML, anything else as JSON); `-` reads stdin
        file: String,
        /// Syntax of the file, overriding the extension (useful with `-`)
        #[arg(long, value_enum)]
        format: Option<sweepfile::Format>,
        /// Follow the sweep after submitting it, like `cnnctl watch`
        #[arg(short, long)]
        watch: bool,
    },
    /// List sweeps with their progress and best test accuracy
    Sweeps,
    /// Show one sweep and a table of its trials
    Sweep {
        /// Sweep id
        id: String,
    },
    /// Show one trial: hyperparameters, per-epoch metrics and test result
    Trial {
        /// Trial id
        id: String,
        /// Write the trial's images into this folder (created when missing): training
        /// samples as the model saw them, the augmentation preview, misclassified test images
        #[arg(long, value_name = "DIR")]
        images: Option<std::path::PathBuf>,
    },
    /// Follow a sweep live until it finishes (replays what already happened first)
    Watch {
        /// Sweep id
        id: String,
    },
    /// Cancel a sweep's queued and running trials
    Cancel {
        /// Sweep id
        id: String,
    },
    /// Hold a sweep's queued trials (running ones finish)
    Pause {
        /// Sweep id
        id: String,
    },
    /// Release a paused sweep's queued trials
    Resume {
        /// Sweep id
        id: String,
    },
    /// Re-derive a sweep's configurations from its request and seed and check they are the
    /// recorded ones, in order (exit 1 when they differ)
    Replay {
        /// Sweep id
        id: String,
    },
    /// Classify image files with a trained trial's best weights
    #[command(after_help = PREDICT_HELP)]
    Predict {
        /// Trial whose weights classify the images
        #[arg(long)]
        trial: String,
        /// Image files (PNG, JPEG, BMP, WebP); their bytes are sent, not their paths
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        #[command(flatten)]
        args: PredictArgs,
    },
    /// Write one self-contained HTML file for a sweep: its trial table, which value of each
    /// hyperparameter won and by how much, and every chart (embedded) to share
    Report {
        /// Sweep id
        id: String,
        /// The file to write
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        file: std::path::PathBuf,
        /// Dashboard from dashboards/ (the daemon's default when omitted)
        #[arg(long)]
        dashboard: Option<String>,
    },
    /// Render a sweep's comparison charts to PNG and print their paths (on the daemon's
    /// machine), or with --out fetch them and write them here
    Charts {
        /// Sweep id
        id: String,
        /// Dashboard from dashboards/ (the daemon's default when omitted)
        #[arg(long)]
        dashboard: Option<String>,
        /// Fetch the PNGs over the connection and write them into this folder (created when
        /// missing): works with a daemon on another machine
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
    },
}

const PREDICT_HELP: &str = r#"For digit models (trained on mnist) the default preprocessing is MNIST-style: grayscale,
invert when the background is light, threshold noise, crop to the ink, fit into 20x20
keeping the aspect ratio, centre by centre of mass in 28x28. Other models see each image
resized the way their training data was.

  cnnctl predict --trial sw-1a2b3c4d-t3 photo-of-a-7.jpg another.png
  cnnctl predict --trial sw-1a2b3c4d-t3 *.jpg --save-preprocessed /tmp/seen --top 2"#;

const SUBMIT_HELP: &str = r#"The file holds a SubmitSweep request in proto3 JSON names: name, dataset, space, fixed,
strategy, numTrials, maxParallel, seed, priority, earlyStopping, objective, repeats, device.

Example (sweep.json):
  {"name": "mnist-heads", "dataset": "mnist",
   "space": {"kernelSize": [3, 5], "dropout": [0, 0.25, 0.5], "head": ["gap", "dense"]},
   "fixed": {"epochs": 3, "batchSize": 64, "learningRate": 0.001},
   "strategy": "grid", "maxParallel": 2, "seed": 7}

The same as TOML (sweep.toml):
  name = "mnist-heads"
  dataset = "mnist"
  strategy = "grid"
  maxParallel = 2
  seed = 7
  [space]
  kernelSize = [3, 5]
  dropout = [0, 0.25, 0.5]
  head = ["gap", "dense"]
  [fixed]
  epochs = 3
  batchSize = 64
  learningRate = 0.001

  cnnctl submit sweep.toml --watch"#;

/// Why cnnctl stops. `Display` is the one line printed after "cnnctl: ".
#[derive(Debug)]
pub enum CliError {
    /// The daemon does not answer at this address.
    Unreachable(String),
    /// The daemon answered with a gRPC error.
    Rpc { what: String, status: tonic::Status },
    /// Anything else: bad input, a broken stream.
    Other(String),
}

impl CliError {
    fn exit_code(&self) -> i32 {
        match self {
            CliError::Unreachable(_) => 2,
            CliError::Rpc { .. } | CliError::Other(_) => 1,
        }
    }

    /// The error of an RPC; a transport failure (the daemon went away) counts as unreachable.
    pub fn rpc(what: impl Into<String>, addr: &str, status: tonic::Status) -> CliError {
        if is_transport_failure(&status) {
            CliError::Unreachable(addr.to_string())
        } else {
            CliError::Rpc {
                what: what.into(),
                status,
            }
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Unreachable(addr) => write!(
                f,
                "cannot reach cnnd at {addr} (is the daemon running? start it with: cnnd)"
            ),
            CliError::Rpc { what, status } if status.code() == tonic::Code::Unauthenticated => {
                write!(
                    f,
                    "{what}: UNAUTHENTICATED: {} (cnnctl sends the token from CNND_TOKEN, \
                     --token-file, or the default state directory's token file)",
                    one_line(status.message())
                )
            }
            CliError::Rpc { what, status } => write!(
                f,
                "{what}: {}: {}",
                code_name(status.code()),
                one_line(status.message())
            ),
            CliError::Other(msg) => write!(f, "{}", one_line(msg)),
        }
    }
}

/// A status tonic made up locally because the connection failed (it carries the transport
/// error as its source), as opposed to one the daemon sent.
fn is_transport_failure(status: &tonic::Status) -> bool {
    use std::error::Error;
    status.code() == tonic::Code::Unavailable && status.source().is_some()
}

/// The canonical gRPC name of a status code, as grpcurl prints it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Writes one line to stdout; a closed pipe (`cnnctl sweeps | head`) ends the program
/// quietly instead of panicking.
pub fn out(line: impl AsRef<str>) {
    let mut stdout = std::io::stdout().lock();
    let result = writeln!(stdout, "{}", line.as_ref()).and_then(|_| stdout.flush());
    if let Err(e) = result {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("cnnctl: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

pub fn out_json(v: &Value) {
    out(serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

/// A connected client plus the address, for error messages.
pub struct Daemon {
    pub client: cnnd_client::Client,
    pub addr: String,
    /// How it was reached: to reconnect (to a new leader, when `--addr` lists several).
    pub options: cnnd_client::ClientOptions,
}

impl Daemon {
    /// Whether `--addr` lists several daemons (a leader and its standbys).
    pub fn has_standbys(&self) -> bool {
        self.options.addr.contains(',')
    }

    /// Connects again, to whichever of the daemons leads now.
    pub async fn reconnect(&mut self) -> Result<(), CliError> {
        match cnnd_client::connect(&self.options).await {
            Ok(client) => {
                self.client = client;
                Ok(())
            }
            Err(cnnd_client::ConnectError::Unreachable(addr, why)) => {
                Err(CliError::Unreachable(format!("{addr}{why}")))
            }
            Err(e) => Err(CliError::Other(e.to_string())),
        }
    }
}

async fn connect(cli: &Cli) -> Result<Daemon, CliError> {
    let options = cnnd_client::ClientOptions {
        addr: cli.addr.clone(),
        token: std::env::var("CNND_TOKEN").ok(),
        token_file: cli.token_file.clone(),
        ca_file: cli.ca_file.clone(),
        connect_timeout: Some(CONNECT_TIMEOUT),
        local_address: None,
    };
    match cnnd_client::connect(&options).await {
        Ok(client) => Ok(Daemon {
            client,
            addr: cnnd_client::normalize_addr(&cli.addr),
            options,
        }),
        Err(cnnd_client::ConnectError::Unreachable(addr, why)) => {
            Err(CliError::Unreachable(format!("{addr}{why}")))
        }
        Err(e) => Err(CliError::Other(e.to_string())),
    }
}

fn main() {
    // Panics are bugs; show them as one line, never a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_string());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("cnnctl: internal error: {}{at}", one_line(&msg));
    }));
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cnnctl: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("cnnctl: {e}");
        std::process::exit(e.exit_code());
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let output = cli.output;
    // Read and check the sweep file before connecting: bad input is reported even without
    // a daemon.
    if let Command::Submit {
        file,
        format,
        watch,
    } = &cli.command
    {
        let request = read_sweep_file(file, *format)?;
        let mut d = connect(&cli).await?;
        return commands::submit(&mut d, request, *watch, output).await;
    }
    if output == Output::Csv && !matches!(cli.command, Command::Sweep { .. }) {
        return Err(CliError::Other(
            "--output csv is available for `cnnctl sweep` only (its trial table); use json here"
                .into(),
        ));
    }
    let mut d = connect(&cli).await?;
    match cli.command {
        Command::Status => commands::status(&mut d, output).await,
        Command::Submit { .. } => unreachable!("handled above"),
        Command::Sweeps => commands::sweeps(&mut d, output).await,
        Command::Sweep { id } => commands::sweep(&mut d, &id, output).await,
        Command::Trial { id, images } => {
            commands::trial(&mut d, &id, images.as_deref(), output).await
        }
        Command::Watch { id } => watch::watch(&mut d, &id, output == Output::Json).await,
        Command::Cancel { id } => commands::cancel(&mut d, &id, output).await,
        Command::Pause { id } => commands::pause(&mut d, &id, true, output).await,
        Command::Resume { id } => commands::pause(&mut d, &id, false, output).await,
        Command::Report {
            id,
            file,
            dashboard,
        } => report::report(&mut d, &id, dashboard, &file).await,
        Command::Charts {
            id,
            dashboard,
            out: dir,
        } => commands::charts(&mut d, &id, dashboard, dir.as_deref(), output).await,
        Command::Replay { id } => commands::replay(&mut d, &id, output).await,
        Command::Predict { trial, files, args } => {
            commands::predict(&mut d, &trial, &files, &args, output).await
        }
    }
}

/// Reads a sweep file (or stdin for `-`) into the request; errors name the file.
fn read_sweep_file(
    file: &str,
    format: Option<sweepfile::Format>,
) -> Result<pb::SubmitSweepRequest, CliError> {
    let format = format.unwrap_or_else(|| sweepfile::Format::from_path(file));
    let (name, text) = if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::Other(format!("cannot read stdin: {e}")))?;
        ("<stdin>".to_string(), text)
    } else {
        let text = std::fs::read_to_string(file)
            .map_err(|e| CliError::Other(format!("cannot read {file}: {e}")))?;
        (file.to_string(), text)
    };
    sweepfile::parse_sweep(&text, format).map_err(|e| CliError::Other(format!("{name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from(["cnnctl", "sweeps", "--output", "json"]).unwrap();
        assert_eq!(cli.output, Output::Json);
        assert!(matches!(cli.command, Command::Sweeps));
        let cli = Cli::try_parse_from(["cnnctl", "--addr", "10.0.0.1:1", "-o", "json", "status"])
            .unwrap();
        assert_eq!(cli.addr, "10.0.0.1:1");
        assert_eq!(cli.output, Output::Json);
        let cli =
            Cli::try_parse_from(["cnnctl", "submit", "-", "--format", "toml", "--watch"]).unwrap();
        match cli.command {
            Command::Submit {
                file,
                format,
                watch,
            } => {
                assert_eq!(file, "-");
                assert_eq!(format, Some(sweepfile::Format::Toml));
                assert!(watch);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["cnnctl", "charts", "s1", "--dashboard", "heads"]).unwrap();
        assert!(
            matches!(cli.command, Command::Charts { id, dashboard, .. } if id == "s1" && dashboard.as_deref() == Some("heads"))
        );
        assert!(Cli::try_parse_from(["cnnctl", "status", "--output", "yaml"]).is_err());
    }

    #[test]
    fn addresses_get_a_scheme() {
        assert_eq!(
            cnnd_client::normalize_addr("127.0.0.1:50051"),
            "http://127.0.0.1:50051"
        );
        assert_eq!(cnnd_client::normalize_addr("http://h:1/"), "http://h:1");
        assert_eq!(cnnd_client::normalize_addr("https://h:1"), "https://h:1");
    }

    #[test]
    fn errors_are_one_line() {
        let e = CliError::Unreachable(DEFAULT_ADDR.into());
        assert_eq!(
            e.to_string(),
            "cannot reach cnnd at http://127.0.0.1:50051 (is the daemon running? start it with: cnnd)"
        );
        assert_eq!(e.exit_code(), 2);
        let e = CliError::rpc(
            "get sweep x",
            DEFAULT_ADDR,
            tonic::Status::not_found("no sweep 'x'\nsee cnnctl sweeps"),
        );
        assert_eq!(
            e.to_string(),
            "get sweep x: NOT_FOUND: no sweep 'x' see cnnctl sweeps"
        );
        assert_eq!(e.exit_code(), 1);
        // A daemon that says UNAVAILABLE itself is a refusal, not an unreachable daemon.
        let e = CliError::rpc("x", DEFAULT_ADDR, tonic::Status::unavailable("no cuda"));
        assert_eq!(e.exit_code(), 1);
    }
}
