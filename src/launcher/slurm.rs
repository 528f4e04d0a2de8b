//! The Slurm launcher's backend: one batch job per worker, submitted with `sbatch`, followed
//! with `squeue`, stopped with `scancel` (Slurm's own tools, so any Slurm release and site
//! configuration works; no Slurm library is linked).
//!
//! The batch script `exec`s the worker, so the worker is the batch shell itself and
//! `--signal=B:TERM@120` reaches it two minutes before the time limit (a plain
//! `--signal=TERM@120` would reach job steps only, and the worker is not one). On SIGTERM,
//! preemption's included, the worker gives its trial back, checkpoint kept. The worker
//! token travels in the job's environment (`--export=ALL` from sbatch's environment, which
//! only this process sees), never in the script or on a command line. Job output goes to
//! `STATE_DIR/slurm/worker-JOBID.out`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{JobPhase, JobReport, WorkerJob};
use crate::config::LauncherArgs;
use crate::scheduler::WORKER_TOKEN_ENV;

/// How this backend's jobs are named to workers and in `cnnctl status`.
pub const JOB_PREFIX: &str = "slurm:";

/// How long sbatch, squeue or scancel may take (a controller that does not answer).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Seconds before the time limit the worker is sent SIGTERM.
const SIGNAL_BEFORE_END_SECS: u32 = 120;

pub struct Slurm {
    partition: Option<String>,
    account: Option<String>,
    time: Option<String>,
    extra: Vec<String>,
    setup: Vec<String>,
    job_name: String,
    output_dir: PathBuf,
    token_file: Option<PathBuf>,
}

/// A setting that goes into the batch script must be one line.
fn one_line(name: &str, value: &str) -> Result<String> {
    if value.contains(['\n', '\r']) || value.trim().is_empty() {
        bail!("--{name}: '{value}' must be one non-empty line");
    }
    Ok(value.trim().to_string())
}

/// `a;b;c` as its non-empty parts.
fn split_list(value: &Option<String>) -> Vec<String> {
    value
        .iter()
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

impl Slurm {
    pub fn new(
        args: &LauncherArgs,
        state_dir: &Path,
        token_file: Option<PathBuf>,
    ) -> Result<Slurm> {
        let opt =
            |name: &str, v: &Option<String>| v.as_deref().map(|v| one_line(name, v)).transpose();
        let extra = split_list(&args.slurm_extra);
        for option in &extra {
            if !option.starts_with("--") {
                bail!("--slurm-extra: '{option}' is not an sbatch option (each starts with --, e.g. --qos=long)");
            }
            one_line("slurm-extra", option)?;
        }
        let setup = split_list(&args.slurm_setup);
        for line in &setup {
            one_line("slurm-setup", line)?;
        }
        let job_name = one_line("slurm-job-name", &args.slurm_job_name)?;
        if job_name.contains([' ', ',', '\'', '"']) {
            bail!("--slurm-job-name: '{job_name}' must be one word");
        }
        let output_dir = state_dir.join("slurm");
        std::fs::create_dir_all(&output_dir)
            .with_context(|| format!("creating {}", output_dir.display()))?;
        Ok(Slurm {
            partition: opt("slurm-partition", &args.slurm_partition)?,
            account: opt("slurm-account", &args.slurm_account)?,
            time: opt("slurm-time", &args.slurm_time)?,
            extra,
            setup,
            job_name,
            output_dir,
            token_file,
        })
    }

    /// Where a job's output goes (`slurm:1234` -> STATE_DIR/slurm/worker-1234.out).
    pub fn output_path(&self, job: &str) -> PathBuf {
        let id = job.strip_prefix(JOB_PREFIX).unwrap_or(job);
        self.output_dir.join(format!("worker-{id}.out"))
    }

    /// The batch script of one worker job.
    pub fn script(&self, job: &WorkerJob) -> Result<String> {
        let mut s = String::from("#!/bin/bash\n");
        let mut sbatch = |line: String| s.push_str(&format!("#SBATCH {line}\n"));
        sbatch(format!("--job-name={}", self.job_name));
        sbatch(format!(
            "--output={}",
            self.output_dir.join("worker-%j.out").display()
        ));
        sbatch("--ntasks=1".into());
        sbatch(format!("--cpus-per-task={}", job.cpus));
        if job.gpus > 0 {
            sbatch(format!("--gres=gpu:{}", job.gpus));
        }
        if let Some(p) = &self.partition {
            sbatch(format!("--partition={p}"));
        }
        if let Some(a) = &self.account {
            sbatch(format!("--account={a}"));
        }
        if let Some(t) = &self.time {
            sbatch(format!("--time={t}"));
        }
        // To the batch shell (B:), which is the worker after exec.
        sbatch(format!("--signal=B:TERM@{SIGNAL_BEFORE_END_SECS}"));
        // The token is in sbatch's environment only (see the module comment).
        sbatch("--export=ALL".into());
        for option in &self.extra {
            sbatch(option.clone());
        }
        s.push_str(
            "# Written by cnnd: one long-lived worker; it leases trials until the daemon tells it to exit.\n",
        );
        for line in &self.setup {
            s.push_str(line);
            s.push('\n');
        }
        let mut words = Vec::new();
        for word in &job.command {
            words.push(
                shlex::try_quote(word)
                    .with_context(|| format!("worker argument {word:?}"))?
                    .into_owned(),
            );
        }
        s.push_str(&format!(
            "exec {} --name \"slurm-$SLURM_JOB_ID\"\n",
            words.join(" ")
        ));
        Ok(s)
    }

    pub async fn submit(&self, job: &WorkerJob) -> Result<String> {
        let script = self.script(job)?;
        // The last script submitted, for an operator who wants to see or run it.
        let copy = self.output_dir.join("worker.sbatch");
        crate::files::write_whole(&copy, script.as_bytes())?;
        let mut cmd = tokio::process::Command::new("sbatch");
        cmd.arg("--parsable")
            .arg(&copy)
            .stdin(std::process::Stdio::null());
        if let Some(file) = &self.token_file {
            let token = cnnd_client::auth::read_token_file(file)?;
            cmd.env(WORKER_TOKEN_ENV, token);
        }
        let out = run(cmd, "sbatch").await?;
        // "1234" or "1234;cluster".
        let id = out.split(';').next().unwrap_or("").trim();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            bail!("sbatch printed no job id: {out:?}");
        }
        Ok(format!("{JOB_PREFIX}{id}"))
    }

    /// This daemon's jobs, from `squeue` (ended ones while Slurm still lists them).
    pub async fn jobs(&self) -> Result<Vec<JobReport>> {
        let mut cmd = tokio::process::Command::new("squeue");
        cmd.args(["--noheader", "--me", "--states=all"])
            .arg(format!("--name={}", self.job_name))
            .args(["--format=%i|%T|%r"]);
        let out = run(cmd, "squeue").await?;
        Ok(out.lines().filter_map(parse_squeue_line).collect())
    }

    pub async fn cancel(&self, job: &str) -> Result<()> {
        let id = job.strip_prefix(JOB_PREFIX).unwrap_or(job);
        let mut cmd = tokio::process::Command::new("scancel");
        cmd.arg(id);
        run(cmd, "scancel").await.map(|_| ())
    }
}

/// Runs a Slurm command; its stdout, or its own error message.
async fn run(mut cmd: tokio::process::Command, name: &str) -> Result<String> {
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(COMMAND_TIMEOUT, cmd.output())
        .await
        .with_context(|| format!("{name} did not answer in {}s", COMMAND_TIMEOUT.as_secs()))?
        .with_context(|| format!("running {name} (is Slurm installed here, and on PATH?)"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{}",
            if err.trim().is_empty() {
                format!("{name} failed ({})", out.status)
            } else {
                // One line: Slurm's tools often say it twice ("error: ...", "failed: ...").
                err.trim()
                    .lines()
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Pending reasons that will not pass by waiting: the job cannot start as submitted.
fn cannot_start(reason: &str) -> bool {
    reason.starts_with("Partition")
        || reason.starts_with("ReqNodeNotAvail")
        || reason.starts_with("Invalid")
        || reason.ends_with("NotAllowed")
        || reason.starts_with("JobHeld")
        || reason == "BadConstraints"
        || reason == "QOSMaxWallDurationPerJobLimit"
}

/// One line of `squeue --format=%i|%T|%r`.
pub fn parse_squeue_line(line: &str) -> Option<JobReport> {
    let mut parts = line.trim().split('|');
    let (id, state, reason) = (parts.next()?, parts.next()?, parts.next().unwrap_or(""));
    if id.is_empty() {
        return None;
    }
    let reason = reason.trim();
    let said = |r: &str| {
        if r == "None" {
            String::new()
        } else {
            r.to_string()
        }
    };
    let (phase, reason) = match state {
        "PENDING" | "CONFIGURING" | "SUSPENDED" | "REQUEUED" | "REQUEUE_HOLD" | "RESV_DEL_HOLD" => {
            (JobPhase::Pending, said(reason))
        }
        "RUNNING" | "COMPLETING" | "STAGE_OUT" | "SIGNALING" | "RESIZING" => {
            (JobPhase::Running, said(reason))
        }
        ended => (
            JobPhase::Ended,
            match said(reason) {
                r if r.is_empty() => ended.to_string(),
                r => format!("{ended}: {r}"),
            },
        ),
    };
    Some(JobReport {
        job: format!("{JOB_PREFIX}{id}"),
        stuck: phase == JobPhase::Pending && cannot_start(&reason),
        phase,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launcher::WorkerKind;

    #[test]
    fn squeue_lines_become_phases_with_slurms_reasons() {
        let p = parse_squeue_line("12|PENDING|Resources").unwrap();
        assert_eq!(
            (p.job.as_str(), &p.phase, p.reason.as_str(), p.stuck),
            ("slurm:12", &JobPhase::Pending, "Resources", false)
        );
        let down = parse_squeue_line("13|PENDING|PartitionDown").unwrap();
        assert!(down.stuck);
        let r = parse_squeue_line("14|RUNNING|None").unwrap();
        assert_eq!((r.phase, r.reason.as_str()), (JobPhase::Running, ""));
        let c = parse_squeue_line("15|CANCELLED|None").unwrap();
        assert_eq!((c.phase, c.reason.as_str()), (JobPhase::Ended, "CANCELLED"));
        let t = parse_squeue_line("16|TIMEOUT|TimeLimit").unwrap();
        assert_eq!(t.reason, "TIMEOUT: TimeLimit");
        assert!(parse_squeue_line("").is_none());
    }

    fn args() -> LauncherArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            a: LauncherArgs,
        }
        Cli::parse_from([
            "cnnd",
            "--launcher=slurm",
            "--slurm-partition=gpu",
            "--slurm-time=2:00:00",
            "--slurm-extra=--qos=long; --constraint=a100",
            "--slurm-setup=module load cuda",
        ])
        .a
    }

    #[test]
    fn the_script_execs_the_worker_with_the_requested_resources_and_no_token() {
        let dir = tempfile::tempdir().unwrap();
        let slurm = Slurm::new(&args(), dir.path(), None).unwrap();
        let job = WorkerJob {
            kind: WorkerKind::Gpu,
            command: vec![
                "/opt/cnnd worker/cnnd-worker".into(),
                "--connect".into(),
                "http://head:7000".into(),
            ],
            cpus: 4,
            gpus: 1,
        };
        let s = slurm.script(&job).unwrap();
        for line in [
            "#SBATCH --partition=gpu",
            "#SBATCH --time=2:00:00",
            "#SBATCH --gres=gpu:1",
            "#SBATCH --cpus-per-task=4",
            "#SBATCH --signal=B:TERM@120",
            "#SBATCH --qos=long",
            "#SBATCH --constraint=a100",
            "module load cuda",
            "exec '/opt/cnnd worker/cnnd-worker' --connect http://head:7000 --name \"slurm-$SLURM_JOB_ID\"",
        ] {
            assert!(s.lines().any(|l| l == line), "missing {line:?} in\n{s}");
        }
        assert!(!s.contains("TOKEN"), "{s}");
    }

    #[test]
    fn options_that_would_break_the_script_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args();
        a.slurm_extra = Some("qos=long".into());
        let e = Slurm::new(&a, dir.path(), None).err().unwrap().to_string();
        assert!(e.contains("--slurm-extra") && e.contains("qos=long"), "{e}");
        let mut a = args();
        a.slurm_partition = Some("gpu\n#SBATCH --x".into());
        let e = Slurm::new(&a, dir.path(), None).err().unwrap().to_string();
        assert!(e.contains("--slurm-partition"), "{e}");
    }
}
