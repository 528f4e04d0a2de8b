//! Two daemons, one store (issue 18): the real `cnnd` twice on one PostgreSQL database (a
//! throw-away server, tests/common/postgres.rs) and one shared state folder, a real
//! `cnnd-worker --connect LEADER,STANDBY`, cnnctl and grpcurl as clients. The standby says
//! NOT_SERVING and names the leader; when the leader is killed (SIGKILL) or cut off from the
//! database (its lock session ended), the standby takes over, the worker moves to it keeping
//! its lease, and every trial ends with epochs exactly 1..N. On SQLite a second daemon on the
//! same state folder is refused.
//!
//! Tests that train hold `common::serial()`; the sweeps are two small trials on 6,000 MNIST
//! images.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{data_dir, free_port, grpcurl_bin, serial, sibling_bin, Daemon};
use serde_json::json;

/// Polls `done` until it holds; panics naming `what` after `limit`.
fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One `cnnd` of the pair: its process, API port and worker-protocol port.
struct Node {
    name: &'static str,
    child: Child,
    api: String,
    hub: String,
    state: PathBuf,
}

impl Node {
    /// Starts `cnnd` on `state` and the database `url`, without local workers; returns once
    /// it printed that it listens (it leads) or stands by.
    fn start(name: &'static str, state: &Path, url: &str) -> Node {
        let (api, hub) = (free_port(), free_port());
        let log = std::fs::File::create(state.join(format!("cnnd-{name}.log"))).unwrap();
        let out = state.join(format!("cnnd-{name}.out"));
        let child = Command::new(env!("CARGO_BIN_EXE_cnnd"))
            .env_remove("CNND_CONFIG")
            .args(["--listen", &format!("127.0.0.1:{api}")])
            .args(["--worker-listen", &format!("127.0.0.1:{hub}")])
            .arg("--state-dir")
            .arg(state)
            .arg("--data-dir")
            .arg(data_dir())
            .args([
                "--db",
                url,
                "--cpu-workers",
                "0",
                "--leader-lease-secs",
                "4",
            ])
            .env("CUDA_VISIBLE_DEVICES", "")
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(log)
            .spawn()
            .expect("starting cnnd");
        let mut node = Node {
            name,
            child,
            api: format!("127.0.0.1:{api}"),
            hub: format!("http://127.0.0.1:{hub}"),
            state: state.to_path_buf(),
        };
        wait_for(Duration::from_secs(60), "cnnd to start", || {
            if let Ok(Some(exit)) = node.child.try_wait() {
                panic!("cnnd {name} exited at start ({exit}):\n{}", node.log());
            }
            let printed = std::fs::read_to_string(&out).unwrap_or_default();
            printed.contains("standing by on") || printed.contains("listening on")
        });
        node
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.state.join(format!("cnnd-{}.log", self.name)))
            .unwrap_or_default()
    }

    /// What grpc.health.v1 says for the whole server: SERVING or NOT_SERVING.
    fn health(&self) -> String {
        let out = Command::new(grpcurl_bin())
            .args(["-plaintext", "-max-time", "5", "-d", r#"{"service": ""}"#])
            .arg(&self.api)
            .arg("grpc.health.v1.Health/Check")
            .output()
            .expect("running grpcurl");
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["status"].as_str().map(String::from))
            .unwrap_or_else(|| format!("no answer: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// cnnctl against `addrs` (one address, or several separated by commas).
fn cnnctl(state: &Path, addrs: &str, args: &[&str]) -> Output {
    Command::new(sibling_bin("cnnctl"))
        .args(["--addr", addrs, "--token-file"])
        .arg(state.join("token"))
        .args(args)
        .env_remove("CNND_TOKEN")
        .output()
        .expect("running cnnctl")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A worker that knows both daemons, killed when dropped.
struct Worker(Child);

impl Worker {
    fn start(state: &Path, connect: &str, cache: &Path) -> Worker {
        let log = std::fs::File::create(state.join("worker.log")).unwrap();
        Worker(
            Command::new(sibling_bin("cnnd-worker"))
                .args([
                    "--connect",
                    connect,
                    "--threads",
                    "1",
                    "--connect-wait-secs",
                    "60",
                ])
                .arg("--token-file")
                .arg(state.join("worker-token"))
                .arg("--data-dir")
                .arg(data_dir())
                .arg("--cache-dir")
                .arg(cache)
                .env("CUDA_VISIBLE_DEVICES", "")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starting cnnd-worker"),
        )
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const EPOCHS: u32 = 6;

/// Two trials of [`EPOCHS`] epochs, about a second each.
fn sweep_file(dir: &Path) -> PathBuf {
    let path = dir.join("sweep.json");
    let body = json!({"name": "failover", "dataset": "mnist", "seed": 3,
        "space": {"dropout": [0.0, 0.1]},
        "fixed": {"epochs": EPOCHS, "batchSize": 8, "learningRate": 0.002, "baseFilters": 8,
                  "units": 32, "trainLimit": 6000, "testLimit": 200}});
    std::fs::write(&path, body.to_string()).unwrap();
    path
}

/// Every trial's recorded epochs, straight from the database.
fn epochs_by_trial(url: &str) -> Vec<(String, String)> {
    common::postgres::psql(
        url,
        "SELECT t.id, t.status || ' attempts=' || t.attempts || ' epochs=' || \
         COALESCE((SELECT string_agg(e.epoch::text, ',' ORDER BY e.epoch) FROM epochs e WHERE e.trial_id = t.id), '') \
         FROM trials t ORDER BY t.id",
    )
    .into_iter()
    .map(|row| {
        let (id, rest) = row.split_once('\t').unwrap();
        (id.to_string(), rest.to_string())
    })
    .collect()
}

fn epochs_recorded(url: &str) -> usize {
    common::postgres::psql(url, "SELECT COUNT(*) FROM epochs")[0]
        .parse()
        .unwrap()
}

/// The set-up both failover tests share: leader `a`, standby `b`, a worker knowing both,
/// and a sweep submitted through the address list (standby first: cnnctl must pick the
/// leader) whose first epoch is recorded.
struct Pair {
    a: Node,
    b: Node,
    _worker: Worker,
    watch: Child,
    url: String,
    state: tempfile::TempDir,
    sweep: String,
}

fn pair_mid_sweep() -> Pair {
    let url = common::postgres::fresh_database();
    let state = tempfile::tempdir().unwrap();
    let a = Node::start("a", state.path(), &url);
    assert_eq!(a.health(), "SERVING", "{}", a.log());
    let b = Node::start("b", state.path(), &url);

    // The standby: NOT_SERVING, and every API call refused naming the leader.
    assert_eq!(b.health(), "NOT_SERVING", "{}", b.log());
    let refused = cnnctl(state.path(), &b.api, &["status"]);
    assert!(!refused.status.success());
    let said = text(&refused);
    assert!(
        said.contains("UNAVAILABLE") && said.contains("standby") && said.contains(&a.api),
        "{said}"
    );

    let worker = Worker::start(
        state.path(),
        &format!("{},{}", a.hub, b.hub),
        &state.path().join("worker-cache"),
    );
    let both = format!("{},{}", b.api, a.api);
    let submitted = cnnctl(
        state.path(),
        &both,
        &["submit", sweep_file(state.path()).to_str().unwrap()],
    );
    assert!(submitted.status.success(), "{}", text(&submitted));
    let sweep = String::from_utf8_lossy(&submitted.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_string();
    let watch = Command::new(sibling_bin("cnnctl"))
        .args(["--addr", &both, "--output", "json", "--token-file"])
        .arg(state.path().join("token"))
        .args(["watch", &sweep])
        .stdout(std::fs::File::create(state.path().join("watch.out")).unwrap())
        .stderr(std::fs::File::create(state.path().join("watch.err")).unwrap())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(120), "a first epoch", || {
        epochs_recorded(&url) >= 1
    });
    Pair {
        a,
        b,
        _worker: worker,
        watch,
        url,
        state,
        sweep,
    }
}

impl Pair {
    /// Waits (up to 60 s) for the standby to say SERVING; the time it took.
    fn wait_takeover(&self, since: Instant) -> Duration {
        wait_for(Duration::from_secs(60), "the standby to serve", || {
            self.b.health() == "SERVING"
        });
        since.elapsed()
    }

    /// The sweep ends under the new leader: every trial succeeded in one attempt (the
    /// worker kept its lease), with epochs exactly 1..N, and the watch that followed it
    /// across the failover saw each epoch once.
    fn check_sweep_finished_exactly(&mut self) {
        self.check_sweep_finished(true)
    }

    /// [`Pair::check_sweep_finished_exactly`]; `one_attempt`: whether every trial must have
    /// kept its first lease (a worker cut off from its leader for longer than the lease
    /// timeout resumes its trial from the checkpoint, as attempt 2).
    fn check_sweep_finished(&mut self, one_attempt: bool) {
        let both = format!("{},{}", self.a.api, self.b.api);
        wait_for(Duration::from_secs(180), "the sweep to finish", || {
            let out = cnnctl(
                self.state.path(),
                &both,
                &["-o", "json", "sweep", &self.sweep],
            );
            let sweep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            sweep["status"] == "finished"
        });
        let all: Vec<String> = (1..=EPOCHS).map(|e| e.to_string()).collect();
        let expected = format!("succeeded attempts=1 epochs={}", all.join(","));
        let trials = epochs_by_trial(&self.url);
        assert_eq!(trials.len(), 2);
        for (trial, recorded) in &trials {
            if one_attempt {
                assert_eq!(recorded, &expected, "{trial}\n{}", self.b.log());
            } else {
                let epochs = expected.split_once(" epochs=").unwrap().1;
                assert!(
                    recorded.starts_with("succeeded attempts=")
                        && recorded.ends_with(&format!(" epochs={epochs}")),
                    "{trial}: {recorded}\n{}",
                    self.b.log()
                );
            }
        }
        let watched = common::wait_child_exit(&mut self.watch, Duration::from_secs(30));
        let err = std::fs::read_to_string(self.state.path().join("watch.err")).unwrap();
        assert!(watched.is_some_and(|s| s.success()), "cnnctl watch: {err}");
        let out = std::fs::read_to_string(self.state.path().join("watch.out")).unwrap();
        let mut seen: Vec<(String, u64)> = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|e| {
                let epoch = e.get("epochFinished")?;
                Some((
                    epoch["trialId"].as_str()?.to_string(),
                    epoch["metrics"]["epoch"].as_u64()?,
                ))
            })
            .collect();
        let shown = seen.len();
        seen.sort();
        seen.dedup();
        assert_eq!(shown, seen.len(), "the watch showed an epoch twice:\n{out}");
        assert_eq!(shown, 2 * EPOCHS as usize, "watch output:\n{out}\n{err}");
    }
}

#[test]
fn the_standby_takes_over_when_the_leader_is_killed_and_no_epoch_is_lost_or_doubled() {
    let _one_at_a_time = serial();
    let mut pair = pair_mid_sweep();
    let killed = Instant::now();
    let _ = pair.a.child.kill();
    let _ = pair.a.child.wait();
    let took = pair.wait_takeover(killed);
    println!(
        "takeover after SIGKILL of the leader: {} ms",
        took.as_millis()
    );
    let term = common::postgres::psql(&pair.url, "SELECT term, holder FROM leadership");
    assert!(
        term[0].starts_with("2\t") && term[0].contains(&pair.b.api),
        "{term:?}"
    );
    let state = pair.state.path().to_path_buf();
    pair.check_sweep_finished_exactly();
    // The worker moved to the new leader and declared its lease there.
    let worker_log = std::fs::read_to_string(state.join("worker.log")).unwrap();
    assert!(worker_log.contains("registered again"), "{worker_log}");
}

#[test]
fn a_leader_cut_off_from_the_database_steps_down_and_the_standby_takes_over() {
    let _one_at_a_time = serial();
    let mut pair = pair_mid_sweep();
    // End the leader's lock session, as a network split or an operator would.
    let cut = Instant::now();
    let ended = common::postgres::psql(
        &pair.url,
        "SELECT pg_terminate_backend(lock_pid) FROM leader_heartbeat",
    );
    assert_eq!(ended, ["t"]);
    // The leader notices at its next heartbeat and exits with status 3 (a supervisor
    // restarts it as a standby); its writes were fenced from the moment the standby took
    // the next term (tests/store_state_machine.rs proves the order on the store itself).
    let exit = common::wait_child_exit(&mut pair.a.child, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the cut-off leader kept running:\n{}", pair.a.log()));
    assert_eq!(exit.code(), Some(3), "{}", pair.a.log());
    assert!(pair.a.log().contains("leadership lost"), "{}", pair.a.log());
    let took = pair.wait_takeover(cut);
    println!(
        "takeover after the leader's lock session ended: {} ms",
        took.as_millis()
    );
    pair.check_sweep_finished_exactly();
}

#[test]
fn a_paused_leader_is_deposed_after_its_lease_and_steps_down_when_it_wakes() {
    let _one_at_a_time = serial();
    let mut pair = pair_mid_sweep();
    // A paused process keeps its connections open: the server would hold its lock for ever.
    let paused = Instant::now();
    signal(&pair.a.child, libc::SIGSTOP);
    // The standby sees the heartbeat silent for the lease (4 s here), ends the leader's lock
    // session and takes the next term.
    let took = pair.wait_takeover(paused);
    assert!(took >= Duration::from_secs(4), "took over after {took:?}");
    println!("takeover from a paused leader: {} ms", took.as_millis());
    assert!(
        pair.b.log().contains("silent for longer than the lease"),
        "{}",
        pair.b.log()
    );
    // Woken up, the old leader finds its session gone, steps down and exits.
    signal(&pair.a.child, libc::SIGCONT);
    let exit = common::wait_child_exit(&mut pair.a.child, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the woken leader kept running:\n{}", pair.a.log()));
    assert_eq!(exit.code(), Some(3), "{}", pair.a.log());
    pair.check_sweep_finished(false);
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on a child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

#[test]
fn a_second_daemon_on_a_sqlite_state_folder_is_refused() {
    let d = Daemon::start(0, &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_cnnd"))
        .env_remove("CNND_CONFIG")
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--state-dir")
        .arg(d.state.path())
        .args(["--cpu-workers", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("already serves from the state directory")
            && said.contains(&format!("pid {}", d.pid()))
            && said.contains("PostgreSQL"),
        "{said}"
    );
    // The first daemon is untouched.
    assert!(d.cnnctl(&["status"]).status.success());
}
