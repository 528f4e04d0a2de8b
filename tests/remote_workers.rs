//! Workers on other machines, with real network separation on this one: each remote worker
//! is a real `cnnd-worker --connect https://…` in its own network namespace (a veth pair to
//! the daemon's namespace, its own /30), with its own cache folder, and with the daemon's
//! state folder and data folders hidden behind empty read-only mounts (a private mount
//! namespace), so it shares nothing with the daemon but the worker protocol over TLS.
//! The daemon runs with `--cpu-workers 0`: every trial here is trained remotely.
//!
//! These tests make namespaces and mounts, so they need root: they are `#[ignore]`d and
//! named `netns_*`; scripts/test.sh runs them as root (as CI does) with
//! `cargo test --test remote_workers -- --ignored netns_`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::datagen::{self, FolderSpec};
use common::netns::{can_make_namespaces, RemoteHost};
use common::{
    assert_resumed_exactly, data_dir, db_rows, epochs_of, free_port, pid_alive, serial, wait_for,
    Daemon,
};
use serde_json::{json, Value};

/// A CA, a server certificate for loopback and every host's daemon-side address, and a
/// client certificate (mutual TLS), all made with rcgen.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new(server_names: &[String]) -> Certs {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "cnnd fleet test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        names.extend_from_slice(server_names);
        let key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca_cert, &ca_key)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let client = CertificateParams::new(vec!["worker".to_string()])
            .unwrap()
            .signed_by(&client_key, &ca_cert, &ca_key)
            .unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", ca_cert.pem());
        write("server.pem", server.pem());
        write("server.key", key.serialize_pem());
        write("client.pem", client.pem());
        write("client.key", client_key.serialize_pem());
        Certs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// One daemon serving only remote workers, plus the hosts they run on.
struct Fleet {
    daemon: Daemon,
    certs: Certs,
    hosts: Vec<RemoteHost>,
    hub_port: u16,
}

impl Fleet {
    /// `hosts` network namespaces and a TLS daemon (mutual TLS on the worker protocol) with
    /// no local workers, listening for workers on every address at a fixed port (so a
    /// restarted daemon is found at the same place).
    fn start(hosts: usize, data: &Path, extra: &[&str]) -> Option<Fleet> {
        if let Err(why) = can_make_namespaces() {
            // These tests are #[ignore]d and run by scripts/test.sh as root only, so being
            // here without the rights is a set-up error, not a reason to pass.
            panic!("these tests need network namespaces (run as root): {why}");
        }
        let hosts: Vec<RemoteHost> = (0..hosts).map(|_| RemoteHost::new().unwrap()).collect();
        let names: Vec<String> = hosts.iter().map(|h| h.host_addr().to_string()).collect();
        let certs = Certs::new(&names);
        let hub_port = free_port();
        // The API on every address too: users on the hosts reach it (cnnctl, the dashboard).
        let daemon = Daemon::start_tls_listening(
            "0.0.0.0",
            data,
            0,
            &Self::flags(&certs, hub_port, extra)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            &certs.path("ca.pem"),
        );
        Some(Fleet {
            daemon,
            certs,
            hosts,
            hub_port,
        })
    }

    fn flags(certs: &Certs, hub_port: u16, extra: &[&str]) -> Vec<String> {
        let mut flags: Vec<String> = vec![
            "--tls-cert".into(),
            certs.path("server.pem").display().to_string(),
            "--tls-key".into(),
            certs.path("server.key").display().to_string(),
            "--worker-client-ca".into(),
            certs.path("ca.pem").display().to_string(),
            "--worker-listen".into(),
            format!("0.0.0.0:{hub_port}"),
        ];
        flags.extend(extra.iter().map(|s| s.to_string()));
        flags
    }

    /// Kills the daemon and starts it again on the same state, data and worker port.
    fn restart_daemon(self, extra: &[&str]) -> Fleet {
        let Fleet {
            daemon,
            certs,
            hosts,
            hub_port,
        } = self;
        let flags = Self::flags(&certs, hub_port, extra);
        let daemon = daemon.restart_same(0, &flags.iter().map(String::as_str).collect::<Vec<_>>());
        Fleet {
            daemon,
            certs,
            hosts,
            hub_port,
        }
    }

    /// Starts `cnnd-worker` on host `host` as `name`, with the worker token, the CA and a
    /// client certificate copied into its own folder, and the daemon's folders hidden.
    fn worker(&self, host: usize, name: &str) -> RemoteWorker {
        self.worker_with(host, name, &self.daemon.worker_token(), true)
    }

    fn worker_with(&self, host: usize, name: &str, token: &str, client_cert: bool) -> RemoteWorker {
        let h = &self.hosts[host];
        let home = tempfile::tempdir().unwrap();
        let token_file = home.path().join("worker-token");
        std::fs::write(&token_file, token).unwrap();
        for f in ["ca.pem", "client.pem", "client.key"] {
            std::fs::copy(self.certs.path(f), home.path().join(f)).unwrap();
        }
        let log = home.path().join("worker.log");
        let hidden = self.hidden();
        let hidden: Vec<&Path> = hidden.iter().map(PathBuf::as_path).collect();
        let mut cmd = h.command(&common::sibling_bin("cnnd-worker"), &hidden);
        cmd.arg("--connect")
            .arg(format!("https://{}:{}", h.host_addr(), self.hub_port))
            .arg("--ca-file")
            .arg(home.path().join("ca.pem"))
            .arg("--token-file")
            .arg(&token_file)
            .arg("--cache-dir")
            .arg(home.path().join("cache"))
            .args(["--name", name, "--threads", "1", "--device", "cpu"])
            .args(["--connect-wait-secs", "60"]);
        if client_cert {
            cmd.arg("--cert")
                .arg(home.path().join("client.pem"))
                .arg("--key")
                .arg(home.path().join("client.key"));
        }
        let child = cmd
            .env("CUDA_VISIBLE_DEVICES", "")
            .env_remove("CNND_WORKER_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting cnnd-worker in its namespace");
        RemoteWorker {
            child,
            home,
            name: name.to_string(),
        }
    }

    /// What a remote worker must not see: the daemon's state folder, its data folder and
    /// the real data set folder the test data links to.
    fn hidden(&self) -> Vec<PathBuf> {
        let mut hidden = vec![
            self.daemon.state.path().to_path_buf(),
            self.daemon.data.clone(),
            data_dir(),
        ];
        hidden.dedup();
        hidden
    }

    /// Waits until the daemon lists a connected worker named `name`; returns its entry.
    fn wait_registered(&self, name: &str, worker: &RemoteWorker) -> cnnd_proto::Worker {
        wait_for(
            Duration::from_secs(60),
            &format!("worker {name} to register"),
            || format!("{}\nworker log:\n{}", self.daemon.log(), worker.log()),
            || {
                self.daemon
                    .get_status()
                    .workers
                    .into_iter()
                    .find(|w| w.name == name)
            },
        )
    }

    fn log(&self, workers: &[&RemoteWorker]) -> String {
        let mut out = self.daemon.log();
        for w in workers {
            out.push_str(&format!("\n--- worker {} ---\n{}", w.name, w.log()));
        }
        out
    }
}

/// A `cnnd-worker` running in a namespace; killed when dropped.
struct RemoteWorker {
    child: Child,
    home: tempfile::TempDir,
    name: String,
}

impl RemoteWorker {
    fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("worker.log")).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on a child this test spawned and has not reaped.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        common::wait_child_exit(&mut self.child, limit)
    }

    /// Digests of the files in its blob cache (`CACHE/blobs/<2 hex>/<64 hex>`), each
    /// checked against its content.
    fn cached_digests(&self) -> Vec<String> {
        use sha2::Digest as _;
        let root = self.home.path().join("cache").join("blobs");
        let mut out = Vec::new();
        for prefix in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            if prefix.file_name().len() != 2 {
                continue;
            }
            for blob in std::fs::read_dir(prefix.path()).unwrap().flatten() {
                let name = blob.file_name().to_string_lossy().to_string();
                if name.len() != 64 {
                    continue;
                }
                let actual = sha2::Sha256::digest(std::fs::read(blob.path()).unwrap())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>();
                assert_eq!(actual, name, "cache blob {name} does not hold its digest");
                out.push(name);
            }
        }
        out
    }
}

impl Drop for RemoteWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A quick MNIST trial (~1-2 s per epoch on one thread).
fn small(epochs: u32) -> Value {
    json!({"epochs": epochs, "batchSize": 16, "learningRate": 0.002, "baseFilters": 8, "units": 32,
           "trainLimit": 3000, "testLimit": 200})
}

fn mnist_sweep(name: &str, fixed: Value, space: Value) -> Value {
    json!({"name": name, "dataset": "mnist", "space": space, "fixed": fixed, "seed": 17})
}

/// A data directory: `mnist/` (the real one, linked) and a small generated image folder.
fn lab() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mnist = data_dir().join("mnist");
    let mnist = mnist.canonicalize().unwrap_or(mnist);
    std::os::unix::fs::symlink(mnist, dir.path().join("mnist")).unwrap();
    datagen::make_image_folder(
        &dir.path().join("shapes"),
        &FolderSpec {
            classes: vec!["circle", "square", "stripes"],
            train_per_class: 30,
            val_per_class: 0,
            test_per_class: 10,
            seed: 5,
        },
    );
    dir
}

/// Waits until `trial` has at least `epochs` recorded epochs.
fn wait_epochs(f: &Fleet, trial: &str, epochs: usize, workers: &[&RemoteWorker]) {
    let db = f.daemon.db_path();
    wait_for(
        Duration::from_secs(180),
        &format!("{trial} to record {epochs} epochs"),
        || f.log(workers),
        || (epochs_of(&db, trial).len() >= epochs).then_some(()),
    );
}

/// A 28x28 gray PNG of a bright vertical bar on black (a "1"), base64.
fn digit_png_base64() -> String {
    common::bright_rectangle_png_base64(12..16, 4..24)
}

// ---------------------------------------------------------------------------------------

/// Two remote workers, nothing local: an MNIST sweep and an image-folder sweep are trained
/// by them only, each worker fetching the data by digest into its own cache (verified), the
/// results come home (Predict and `cnnctl trial` on a remote-trained trial), and
/// `cnnctl status` lists both with their host, device, threads and version.
#[test]
#[ignore = "needs root: network and mount namespaces (scripts/test.sh runs it)"]
fn netns_remote_workers_alone_train_mnist_and_folder_sweeps_and_their_trials_predict() {
    let _one_at_a_time = serial();
    let data = lab();
    let f = Fleet::start(2, data.path(), &[]).unwrap();
    let a = f.worker(0, "remote-a");
    let b = f.worker(1, "remote-b");
    let entry = f.wait_registered("remote-a", &a);
    f.wait_registered("remote-b", &b);
    assert_eq!(entry.slot, "", "a connected worker has no slot: {entry:?}");
    assert_eq!(entry.device, "cpu");
    assert_eq!(entry.threads, 1);
    assert!(
        !entry.host.is_empty() && !entry.version.is_empty(),
        "{entry:?}"
    );
    assert!(!entry.libtorch_version.is_empty(), "{entry:?}");

    let mnist = f.daemon.submit(&mnist_sweep(
        "remote-mnist",
        small(2),
        json!({"dropout": [0.0, 0.25]}),
    ));
    let folder = f.daemon.submit(&json!({
        "name": "remote-shapes", "dataset": "folder:shapes",
        "space": {"rotationRange": [0, 10]},
        "fixed": {"epochs": 2, "inputSize": 32, "baseFilters": 8, "units": 16, "batchSize": 16,
                  "learningRate": 0.003},
        "seed": 3
    }));
    let remote_ids: Vec<String> = f
        .daemon
        .get_status()
        .workers
        .iter()
        .map(|w| w.worker_id.clone())
        .collect();
    for sweep in [&mnist, &folder] {
        let s = f.daemon.wait_sweep_ended(sweep, Duration::from_secs(300));
        for t in s["trials"].as_array().unwrap() {
            assert_eq!(t["status"], "succeeded", "{t}\n{}", f.log(&[&a, &b]));
            let id = t["trialId"].as_str().unwrap();
            assert_eq!(epochs_of(&f.daemon.db_path(), id), vec![1, 2]);
            let trial = f.daemon.get_trial(id);
            assert!(
                remote_ids.contains(&trial.worker),
                "{id} ran on {}, not on a remote worker ({remote_ids:?})",
                trial.worker
            );
        }
    }
    // The image-folder trials' previews came home with their first epoch: training images
    // of every class as the model saw them (32x32), and only the rotating trial has
    // augmentation draws, which differ from the image as is.
    for t in 0..2 {
        let trial = f.daemon.get_trial(&format!("{folder}-t{t}"));
        let rotation = trial.params.as_ref().unwrap().fields["rotationRange"]
            .kind
            .clone();
        let preview = trial.data_preview.expect("a data preview");
        let classes: std::collections::BTreeSet<u32> =
            preview.samples.iter().map(|s| s.class).collect();
        assert_eq!(classes.len(), 3, "{:?}", preview.class_names);
        assert_eq!(preview.class_names, ["circle", "square", "stripes"]);
        let img = image::load_from_memory(&preview.samples[0].png).unwrap();
        assert_eq!((img.width(), img.height()), (32, 32));
        let rotates = rotation != Some(prost_types::value::Kind::NumberValue(0.0));
        if rotates {
            assert_eq!(preview.augmented.len(), 9, "{}", preview.augmentation);
            assert!(preview.augmented[1..]
                .iter()
                .any(|d| d != &preview.augmented[0]));
            assert!(preview.augmentation.contains("rotation"));
        } else {
            assert!(preview.augmented.is_empty(), "{}", preview.augmentation);
        }
    }

    // The data came over the wire into each worker's own cache, verified by digest; the
    // manifest names MNIST's training images, which at least one worker fetched.
    let manifest = db_rows(
        &f.daemon.db_path(),
        &format!("SELECT manifest_digest FROM sweeps WHERE id = '{mnist}'"),
    );
    let manifest_digest = manifest[0]["manifest_digest"].as_str().unwrap().to_string();
    let cached: Vec<String> = [&a, &b].iter().flat_map(|w| w.cached_digests()).collect();
    assert!(
        cached.contains(&manifest_digest),
        "no worker cached the MNIST manifest {manifest_digest}: {cached:?}"
    );
    assert!(
        cached.len() >= 6,
        "the workers cached only {} files: {cached:?}",
        cached.len()
    );

    // Results came home: Predict on a remote-trained trial, answered by a remote worker.
    let trial = format!("{mnist}-t0");
    let request =
        json!({"trialId": trial, "images": [{"name": "one.png", "data": digit_png_base64()}]});
    let answer = f
        .daemon
        .grpcurl_json("cnn.v1.Orchestrator/Predict", &request.to_string());
    assert_eq!(
        answer["predictions"].as_array().unwrap().len(),
        1,
        "{answer}"
    );
    assert_eq!(
        answer["classNames"].as_array().unwrap().len(),
        10,
        "{answer}"
    );
    let t = f.daemon.cnnctl_json(&["trial", &trial]);
    assert_eq!(t["status"], "succeeded", "{t}");

    // The fleet as cnnctl shows it: one row per worker with its host and heartbeat age.
    let out = f.daemon.cnnctl(&["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    for w in ["remote-a", "remote-b"] {
        let row = table
            .lines()
            .find(|l| l.contains(w))
            .unwrap_or_else(|| panic!("{w} missing from cnnctl status:\n{table}"));
        assert!(row.contains(&entry.host), "{row}");
        assert!(row.contains("cpu"), "{row}");
    }
}

/// A remote worker killed with SIGKILL mid-trial cannot say goodbye: its lease runs out
/// (heartbeats stop), and a worker on another host finishes the trial from the last
/// uploaded checkpoint, with epochs exactly 1..N. Then a network partition (the link of the
/// second host taken down) ends the same way: its lease expires, a third worker resumes,
/// and the cut-off worker stops training that trial by itself.
#[test]
#[ignore = "needs root: network and mount namespaces (scripts/test.sh runs it)"]
fn netns_a_killed_or_cut_off_remote_worker_loses_its_lease_and_another_resumes_exactly() {
    let _one_at_a_time = serial();
    let f = Fleet::start(3, &data_dir(), &["--lease-timeout-secs", "6"]).unwrap();
    let db = f.daemon.db_path();

    // SIGKILL.
    let mut a = f.worker(0, "killed");
    f.wait_registered("killed", &a);
    let sweep = f.daemon.submit(&mnist_sweep("kill", small(4), json!({})));
    let trial = format!("{sweep}-t0");
    wait_epochs(&f, &trial, 1, &[&a]);
    a.signal(libc::SIGKILL);
    let _ = a.wait_exit(Duration::from_secs(10));
    let b = f.worker(1, "survivor");
    let s = f.daemon.wait_sweep_ended(&sweep, Duration::from_secs(240));
    assert_eq!(
        s["trials"][0]["status"],
        "succeeded",
        "{s}\n{}",
        f.log(&[&a, &b])
    );
    assert_resumed_exactly(&db, &trial);
    assert!(
        f.daemon.log().contains("lease expired"),
        "{}",
        f.daemon.log()
    );
    assert_eq!(
        f.daemon.get_trial(&trial).worker,
        f.wait_registered("survivor", &b).worker_id
    );

    // Partition: the survivor's host loses its link mid-trial.
    let sweep = f
        .daemon
        .submit(&mnist_sweep("partition", small(4), json!({})));
    let trial = format!("{sweep}-t0");
    wait_epochs(&f, &trial, 1, &[&b]);
    f.hosts[1].link_down();
    let c = f.worker(2, "after-partition");
    let s = f.daemon.wait_sweep_ended(&sweep, Duration::from_secs(240));
    assert_eq!(
        s["trials"][0]["status"],
        "succeeded",
        "{s}\n{}",
        f.log(&[&b, &c])
    );
    assert_resumed_exactly(&db, &trial);
    // Cut off for longer than the lease timeout, the partitioned worker gave the trial up
    // on its own (it trains nothing it no longer holds).
    wait_for(
        Duration::from_secs(60),
        "the cut-off worker to stop training",
        || b.log(),
        || b.log().contains("trial stopped").then_some(()),
    );
    f.hosts[1].link_up();
    assert!(
        pid_alive(b.pid()),
        "a remote worker keeps trying to reconnect"
    );
}

/// SIGTERM gives the trial back at once (ReleaseTrial; Slurm preemption and Kubernetes
/// eviction send it), without waiting for the lease timeout, and without using up an
/// attempt. And a daemon restart does not take a live trial from a remote worker: the
/// worker reconnects, says which lease it holds, and carries on in the same attempt.
#[test]
#[ignore = "needs root: network and mount namespaces (scripts/test.sh runs it)"]
fn netns_sigterm_gives_the_trial_back_at_once_and_a_daemon_restart_keeps_live_leases() {
    let _one_at_a_time = serial();
    // A lease timeout far longer than the test: only a release can re-queue in time.
    let f = Fleet::start(2, &data_dir(), &["--lease-timeout-secs", "600"]).unwrap();
    let db = f.daemon.db_path();
    let mut a = f.worker(0, "preempted");
    f.wait_registered("preempted", &a);
    let sweep = f
        .daemon
        .submit(&mnist_sweep("sigterm", small(6), json!({})));
    let trial = format!("{sweep}-t0");
    wait_epochs(&f, &trial, 1, &[&a]);
    a.signal(libc::SIGTERM);
    let exit = a
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("still running 30 s after SIGTERM:\n{}", a.log()));
    assert!(exit.success(), "exit {exit}:\n{}", a.log());
    let t = f.daemon.cnnctl_json(&["trial", &trial]);
    assert_eq!(
        t["status"],
        "queued",
        "not given back: {t}\n{}",
        f.log(&[&a])
    );
    assert_eq!(
        t["attempts"], 0,
        "a release must not use up an attempt: {t}"
    );
    let kept = epochs_of(&db, &trial);
    assert!(!kept.is_empty(), "{kept:?}");

    // Another worker takes it; the daemon is killed and restarted under it.
    let b = f.worker(1, "steady");
    wait_for(
        Duration::from_secs(120),
        "the trial to run again and record an epoch",
        || f.log(&[&b]),
        || (epochs_of(&db, &trial).len() > kept.len()).then_some(()),
    );
    let f = f.restart_daemon(&["--lease-timeout-secs", "600"]);
    let s = f.daemon.wait_sweep_ended(&sweep, Duration::from_secs(240));
    assert_eq!(
        s["trials"][0]["status"],
        "succeeded",
        "{s}\n{}",
        f.log(&[&b])
    );
    assert_eq!(epochs_of(&db, &trial), vec![1, 2, 3, 4, 5, 6]);
    let t = f.daemon.cnnctl_json(&["trial", &trial]);
    assert_eq!(t["attempts"], 1, "the restart took the trial away: {t}");
    assert!(
        b.log().contains("registered again") && !b.log().contains("did not keep"),
        "the worker did not keep its lease:\n{}",
        b.log()
    );
}

/// A data file that changes on the daemon's disk without its size or modification time
/// changing (bit rot, a bad copy) is served under its recorded digest: every worker
/// verifies what it receives and refuses it, retries, and trains nothing on it. A corrupt
/// upload to the daemon is refused with DATA_LOSS. And the tokens: the API token does not
/// open the worker protocol for a worker, and a worker without the client certificate the
/// daemon asks for is refused.
#[test]
#[ignore = "needs root: network and mount namespaces (scripts/test.sh runs it)"]
fn netns_corrupt_transfers_are_refused_and_wrong_credentials_keep_workers_out() {
    let _one_at_a_time = serial();
    let data = lab();
    let f = Fleet::start(1, data.path(), &[]).unwrap();

    // Wrong credentials, each refused with a message that says which.
    let mut api_token = f.worker_with(0, "api-token", &f.daemon.token(), true);
    let exit = api_token
        .wait_exit(Duration::from_secs(60))
        .expect("a worker with the API token keeps running");
    assert!(!exit.success());
    assert!(api_token.log().contains("token"), "{}", api_token.log());
    let mut no_cert = f.worker_with(0, "no-cert", &f.daemon.worker_token(), false);
    let exit = no_cert.wait_exit(Duration::from_secs(90));
    assert!(
        exit.is_some_and(|e| !e.success()),
        "a worker without a client certificate was let in:\n{}",
        no_cert.log()
    );
    assert!(f.daemon.get_status().workers.is_empty());

    // Corrupt one image after the manifest recorded it, keeping size and mtime.
    let sweep_body = json!({
        "name": "rot", "dataset": "folder:shapes",
        "fixed": {"epochs": 1, "inputSize": 32, "baseFilters": 4, "units": 8, "batchSize": 16},
        "seed": 3
    });
    let sweep = f.daemon.submit(&sweep_body);
    let victim = std::fs::read_dir(data.path().join("shapes/train/circle"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .min()
        .unwrap();
    let before = std::fs::metadata(&victim).unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_modified(before.modified().unwrap())
        .unwrap();
    assert_eq!(std::fs::metadata(&victim).unwrap().len(), before.len());

    let w = f.worker(0, "verifier");
    let s = f.daemon.wait_sweep_ended(&sweep, Duration::from_secs(180));
    let t = &s["trials"][0];
    assert_eq!(
        t["status"],
        "failed",
        "trained on corrupt data: {t}\n{}",
        f.log(&[&w])
    );
    let error = t["error"].as_str().unwrap();
    assert!(error.contains("corrupt"), "{error}");
    assert!(error.contains("nothing was trained on it"), "{error}");
    assert!(epochs_of(&f.daemon.db_path(), t["trialId"].as_str().unwrap()).is_empty());
    assert!(
        w.log().matches("corrupt").count() >= 2,
        "not retried:\n{}",
        w.log()
    );
    assert!(pid_alive(w.pid()), "the worker died on a corrupt transfer");

    // An upload from a worker that holds no lease on the trial it names (a buggy or
    // malicious worker) is refused, and nothing is kept under the digest it declared. (An
    // upload whose bytes do not hash to its digest is refused with DATA_LOSS: the unit test
    // of src/blobs.rs, which needs a live lease this client cannot hold.)
    let out = upload_mismatched_blob(&f);
    assert!(out.contains("FailedPrecondition"), "{out}");
    assert!(out.contains("does not hold trial"), "{out}");
    assert!(
        !f.daemon
            .state
            .path()
            .join("blobs")
            .join("00")
            .join("00".repeat(32))
            .exists(),
        "a refused upload was kept"
    );
}

/// Uploads 4 bytes that do not hash to the digest they are declared under, over the worker
/// protocol with grpcurl (the worker token, a client certificate, a registered worker's id,
/// but no lease), as a buggy or malicious worker would; returns grpcurl's output.
fn upload_mismatched_blob(f: &Fleet) -> String {
    let status = f.daemon.get_status();
    let worker = &status.workers[0].worker_id;
    let body = json!({
        "workerId": worker,
        "file": {"name": "checkpoint.safetensors", "digest": "00".repeat(32), "size": 4},
        "offset": 0,
        "data": "AAAAAA=="
    });
    let cert = f.certs.path("client.pem").display().to_string();
    let key = f.certs.path("client.key").display().to_string();
    let out: std::process::Output = f.daemon.grpcurl_worker_hub(
        "cnn.v1.WorkerHub/UploadFile",
        &body.to_string(),
        &["-cert", &cert, "-key", &key],
    );
    format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out))
}

/// Issue 19's "from anywhere": a user on another host (its own network namespace, the
/// daemon's state and data folders hidden) with only `cnnctl`, the CA and the API token gets
/// every chart of a sweep into a local folder, byte for byte, and reads the dashboard over
/// HTTPS (curl), its sweep page and a chart.
#[test]
#[ignore = "needs root: network namespaces (scripts/test.sh runs it as root)"]
fn netns_a_user_on_another_host_fetches_every_chart_and_opens_the_dashboard() {
    let _one_at_a_time = serial();
    let f = Fleet::start(1, &data_dir(), &["--http-listen", "0.0.0.0:0"]).unwrap();
    let worker = f.worker(0, "trainer");
    f.wait_registered("trainer", &worker);
    let (d, host) = (&f.daemon, &f.hosts[0]);
    let ca = f.certs.path("ca.pem");
    let sweep = d.submit(&mnist_sweep(
        "seen-from-afar",
        small(1),
        json!({"kernelSize": [3, 5]}),
    ));
    let s = d.wait_for_sweep(&sweep, Duration::from_secs(300));
    let trials: Vec<String> = s["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["trialId"].as_str().unwrap().to_string())
        .collect();
    let hidden = [d.state.path(), d.data.as_path()];
    let token = d.token();

    // Every chart, over gRPC, into a folder on the other host.
    let out = tempfile::tempdir().unwrap();
    let api = format!("https://{}:{}", host.host_addr(), d.port);
    let run = host
        .command(&common::cnnctl_bin(), &hidden)
        .args(["charts", &sweep, "--addr", &api, "--ca-file"])
        .arg(&ca)
        .arg("--out")
        .arg(out.path())
        .env("CNND_TOKEN", &token)
        .env_remove("CNND_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let on_daemon = d.state.path().join("charts").join(&sweep).join("default");
    let mut names: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 7, "{names:?}");
    for name in &names {
        assert_eq!(
            std::fs::read(out.path().join(name)).unwrap(),
            std::fs::read(on_daemon.join(name)).unwrap(),
            "{name}"
        );
    }

    // The dashboard over HTTPS from the same host.
    let http_addr = std::fs::read_to_string(d.state.path().join("http.addr")).unwrap();
    let http_port = http_addr.trim().rsplit(':').next().unwrap().to_string();
    let base = format!("https://{}:{http_port}", host.host_addr());
    let curl = |path: &str, file: &Path| {
        let run = host
            .command(Path::new("/usr/bin/curl"), &hidden)
            .args(["-sS", "--fail", "--cacert"])
            .arg(&ca)
            .args(["-H", &format!("Authorization: Bearer {token}"), "-o"])
            .arg(file)
            .arg(format!("{base}{path}"))
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        std::fs::read(file).unwrap()
    };
    let page = String::from_utf8(curl(
        &format!("/sweeps/{sweep}"),
        &out.path().join("page.html"),
    ))
    .unwrap();
    for t in &trials {
        assert!(page.contains(t.as_str()), "{t}: {page}");
    }
    let chart = curl(
        &format!("/sweeps/{sweep}/charts/accuracy_curves.png"),
        &out.path().join("chart.png"),
    );
    assert!(chart.starts_with(b"\x89PNG"));
}
