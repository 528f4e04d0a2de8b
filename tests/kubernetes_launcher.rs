//! The Kubernetes launcher's backend (src/launcher/kubernetes.rs) through the real `kube`
//! client, against a SCRIPTED API server: `FakeApiServer` below, a small HTTP server on
//! 127.0.0.1 written for these tests. It is a fake, not Kubernetes: it stores the Jobs the
//! backend posts and answers the few calls the backend makes (create, list and delete Jobs;
//! list and watch pods; a pod's log; a Job's events) the way the API server does, in the
//! API's own JSON. There is no scheduler, Job controller or kubelet: each test plays them,
//! setting a pod's status (Pending, Running, OOMKilled ...) and scripting refusals (409,
//! 403). No API server can run on this machine (no container engine, no cluster binaries).
//!
//! Also here: the Job manifests the backend generates, and deploy/k8s/*.yaml, validated
//! against the Kubernetes schema offline with PyPI's kubernetes-validate (installed by
//! scripts/validate-manifests.sh), and a real-cluster test, `e2e_*`, ignored unless run with
//! `--ignored` and CNND_E2E_KUBECONFIG (and CNND_E2E_IMAGE) set.

#![cfg(feature = "kubernetes")]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use cnnd::config::LauncherArgs;
use cnnd::launcher::kubernetes::{JobTemplate, Kubernetes};
use cnnd::launcher::{JobPhase, JobReport, WorkerJob, WorkerKind};
use common::{attempts, epochs_of, wait_for};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::broadcast;

// ---------------------------------------------------------------------------------------
// The scripted API server.

/// What the fake cluster holds.
struct FakeCluster {
    resource_version: u64,
    /// Jobs and pods by namespace/name, as the API would return them.
    jobs: BTreeMap<String, Value>,
    pods: BTreeMap<String, Value>,
    /// Every pod change as a watch event ({"type", "object"}) with its resourceVersion.
    pod_events: Vec<(u64, Value)>,
    pod_feed: broadcast::Sender<(u64, Value)>,
    /// Answers given to the next creates instead of creating: (HTTP code, reason, message).
    create_refusals: VecDeque<(u16, String, String)>,
    /// When set, listing or watching pods is forbidden (a Role without pods).
    pods_forbidden: bool,
    /// Every Job body posted, refused or not, with the namespace in its path.
    posted: Vec<(String, Value)>,
    /// Every delete: (namespace/name, the DeleteOptions body).
    deletes: Vec<(String, Value)>,
    /// Core Events by namespace (a Job controller's FailedCreate warnings).
    events: HashMap<String, Vec<Value>>,
    /// Pod logs by namespace/name.
    logs: HashMap<String, String>,
}

#[derive(Clone)]
struct FakeApiServer {
    url: String,
    cluster: Arc<Mutex<FakeCluster>>,
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn reply(code: u16, body: &Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// `a=b&c=d` (percent-decoded enough for label and field selectors).
fn query_map(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = v
                .replace("%2F", "/")
                .replace("%2f", "/")
                .replace("%3D", "=")
                .replace("%3d", "=")
                .replace("%2C", ",")
                .replace("%2c", ",");
            (k.to_string(), v)
        })
        .collect()
}

/// Equality-based label selectors ("a=b,c=d"), as the API applies them.
fn selected(object: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    selector.split(',').all(|term| {
        let (k, v) = term.split_once('=').expect("equality selector");
        object["metadata"]["labels"][k].as_str() == Some(v)
    })
}

fn list(kind: &str, api_version: &str, rv: u64, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": api_version,
           "metadata": {"resourceVersion": rv.to_string()}, "items": items})
}

async fn handle(
    State(cluster): State<Arc<Mutex<FakeCluster>>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let path: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let query = query_map(&uri);
    let mut c = cluster.lock().unwrap();
    match (method, path.as_slice()) {
        (Method::POST, ["apis", "batch", "v1", "namespaces", ns, "jobs"]) => {
            let mut job: Value = serde_json::from_slice(&body).expect("a Job as JSON");
            c.posted.push((ns.to_string(), job.clone()));
            if let Some((code, reason, message)) = c.create_refusals.pop_front() {
                return reply(code, &status(code, &reason, &message));
            }
            let name = job["metadata"]["name"]
                .as_str()
                .expect("a named Job")
                .to_string();
            let key = format!("{ns}/{name}");
            if c.jobs.contains_key(&key) {
                let msg = format!("jobs.batch \"{name}\" already exists");
                return reply(409, &status(409, "AlreadyExists", &msg));
            }
            c.resource_version += 1;
            job["metadata"]["namespace"] = json!(ns);
            job["metadata"]["resourceVersion"] = json!(c.resource_version.to_string());
            job["metadata"]["uid"] = json!(format!("uid-{}", c.resource_version));
            job["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            job["status"] = json!({});
            c.jobs.insert(key, job.clone());
            reply(201, &job)
        }
        (Method::GET, ["apis", "batch", "v1", "namespaces", ns, "jobs"]) => {
            let items = c
                .jobs
                .iter()
                .filter(|(k, j)| {
                    k.starts_with(&format!("{ns}/")) && selected(j, query.get("labelSelector"))
                })
                .map(|(_, j)| j.clone())
                .collect();
            reply(200, &list("JobList", "batch/v1", c.resource_version, items))
        }
        (Method::DELETE, ["apis", "batch", "v1", "namespaces", ns, "jobs", name]) => {
            let options: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let key = format!("{ns}/{name}");
            c.deletes.push((key.clone(), options));
            match c.jobs.remove(&key) {
                Some(_) => reply(
                    200,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Success", "details": {"name": name, "group": "batch", "kind": "jobs"}}),
                ),
                None => {
                    let msg = format!("jobs.batch \"{name}\" not found");
                    reply(404, &status(404, "NotFound", &msg))
                }
            }
        }
        (Method::GET, ["api", "v1", "namespaces", ns, "pods"]) => {
            if c.pods_forbidden {
                let msg = format!("pods is forbidden: User \"system:serviceaccount:{ns}:cnnd\" cannot list resource \"pods\" in API group \"\" in the namespace \"{ns}\"");
                return reply(403, &status(403, "Forbidden", &msg));
            }
            let selector = query.get("labelSelector").cloned();
            let in_scope = {
                let ns = ns.to_string();
                move |pod: &Value| {
                    pod["metadata"]["namespace"].as_str() == Some(ns.as_str())
                        && selected(pod, selector.as_ref())
                }
            };
            if query.get("watch").map(String::as_str) == Some("true") {
                let since: u64 = query
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                // Subscribe before reading the backlog, under the lock: nothing is missed.
                let live = tokio_stream::wrappers::BroadcastStream::new(c.pod_feed.subscribe());
                let backlog: Vec<(u64, Value)> = c
                    .pod_events
                    .iter()
                    .filter(|(rv, _)| *rv > since)
                    .cloned()
                    .collect();
                let last = backlog.last().map(|(rv, _)| *rv).unwrap_or(since);
                let filter = in_scope.clone();
                let events = futures::stream::iter(backlog)
                    .chain(
                        live.filter_map(
                            move |e| async move { e.ok().filter(|(rv, _)| *rv > last) },
                        ),
                    )
                    .filter(move |(_, e)| std::future::ready(filter(&e["object"])))
                    .map(|(_, e)| Ok::<_, std::convert::Infallible>(Bytes::from(format!("{e}\n"))));
                return Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(Body::from_stream(events))
                    .unwrap();
            }
            let items = c.pods.values().filter(|p| in_scope(p)).cloned().collect();
            reply(200, &list("PodList", "v1", c.resource_version, items))
        }
        (Method::GET, ["api", "v1", "namespaces", ns, "pods", name, "log"]) => {
            match c.logs.get(&format!("{ns}/{name}")) {
                Some(log) => Response::builder()
                    .status(200)
                    .body(Body::from(log.clone()))
                    .unwrap(),
                None => reply(
                    404,
                    &status(404, "NotFound", &format!("pods \"{name}\" not found")),
                ),
            }
        }
        (Method::GET, ["api", "v1", "namespaces", ns, "events"]) => {
            let field = query.get("fieldSelector").cloned().unwrap_or_default();
            let items = c
                .events
                .get(*ns)
                .into_iter()
                .flatten()
                .filter(|e| {
                    field.split(',').all(|term| match term.split_once('=') {
                        Some(("involvedObject.kind", v)) => e["involvedObject"]["kind"] == v,
                        Some(("involvedObject.name", v)) => e["involvedObject"]["name"] == v,
                        _ => true,
                    })
                })
                .cloned()
                .collect();
            reply(200, &list("EventList", "v1", c.resource_version, items))
        }
        (method, _) => reply(
            404,
            &status(
                404,
                "NotFound",
                &format!("the fake API server has no {method} {}", uri.path()),
            ),
        ),
    }
}

impl FakeApiServer {
    async fn start() -> FakeApiServer {
        let cluster = Arc::new(Mutex::new(FakeCluster {
            resource_version: 1,
            jobs: BTreeMap::new(),
            pods: BTreeMap::new(),
            pod_events: Vec::new(),
            pod_feed: broadcast::channel(1024).0,
            create_refusals: VecDeque::new(),
            pods_forbidden: false,
            posted: Vec::new(),
            deletes: Vec::new(),
            events: HashMap::new(),
            logs: HashMap::new(),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(cluster.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        FakeApiServer { url, cluster }
    }

    fn client(&self, namespace: &str) -> kube::Client {
        let mut config = kube::Config::new(self.url.parse().unwrap());
        config.default_namespace = namespace.into();
        kube::Client::try_from(config).unwrap()
    }

    fn posted(&self) -> Vec<(String, Value)> {
        self.cluster.lock().unwrap().posted.clone()
    }

    fn refuse_next_create(&self, code: u16, reason: &str, message: &str) {
        self.cluster.lock().unwrap().create_refusals.push_back((
            code,
            reason.into(),
            message.into(),
        ));
    }

    fn add_job(&self, namespace: &str, job: Value) {
        let name = job["metadata"]["name"].as_str().unwrap().to_string();
        self.cluster
            .lock()
            .unwrap()
            .jobs
            .insert(format!("{namespace}/{name}"), job);
    }

    fn set_job_status(&self, namespace: &str, job: &str, status: Value) {
        let mut c = self.cluster.lock().unwrap();
        c.jobs
            .get_mut(&format!("{namespace}/{job}"))
            .expect("a Job the fake holds")["status"] = status;
    }

    fn has_job(&self, namespace: &str, job: &str) -> bool {
        self.cluster
            .lock()
            .unwrap()
            .jobs
            .contains_key(&format!("{namespace}/{job}"))
    }

    /// The Jobs of a namespace: (name, Job).
    fn jobs(&self, namespace: &str) -> Vec<(String, Value)> {
        let prefix = format!("{namespace}/");
        self.cluster
            .lock()
            .unwrap()
            .jobs
            .iter()
            .filter_map(|(k, j)| Some((k.strip_prefix(&prefix)?.to_string(), j.clone())))
            .collect()
    }

    /// `set_pod_status` for a Job that may have been deleted meanwhile (then nothing).
    fn try_set_pod_status(&self, namespace: &str, job: &str, status: Value) {
        if self.has_job(namespace, job) {
            self.put_pod(namespace, job, status, true)
        }
    }

    /// `set_job_status` for a Job that may have been deleted meanwhile (then nothing).
    fn try_set_job_status(&self, namespace: &str, job: &str, status: Value) {
        let mut c = self.cluster.lock().unwrap();
        if let Some(j) = c.jobs.get_mut(&format!("{namespace}/{job}")) {
            j["status"] = status;
        }
    }

    /// `delete_pod` for a pod that may not exist.
    fn try_delete_pod(&self, namespace: &str, job: &str) {
        let exists = self
            .cluster
            .lock()
            .unwrap()
            .pods
            .contains_key(&format!("{namespace}/{job}-x7k2p"));
        if exists {
            self.delete_pod(namespace, job)
        }
    }

    /// Plays the Job controller and the kubelet: creates the Job's pod (its template's labels,
    /// owned by the Job) if it has none, and gives it `status`; the watch sees the change.
    fn set_pod_status(&self, namespace: &str, job: &str, status: Value) {
        self.put_pod(namespace, job, status, true)
    }

    /// As `set_pod_status`, but the watch does not see the change (a watch that lags).
    fn set_pod_status_unwatched(&self, namespace: &str, job: &str, status: Value) {
        self.put_pod(namespace, job, status, false)
    }

    fn put_pod(&self, namespace: &str, job: &str, status: Value, watched: bool) {
        let mut c = self.cluster.lock().unwrap();
        let template = c.jobs[&format!("{namespace}/{job}")]["spec"]["template"].clone();
        let pod_name = format!("{job}-x7k2p");
        let key = format!("{namespace}/{pod_name}");
        c.resource_version += 1;
        let rv = c.resource_version;
        let kind = if c.pods.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let mut pod = c.pods.get(&key).cloned().unwrap_or_else(|| {
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": namespace,
                             "labels": template["metadata"]["labels"],
                             "uid": format!("pod-uid-{rv}"),
                             "creationTimestamp": "2026-01-01T00:00:01Z",
                             "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job,
                                                  "uid": "job-uid", "controller": true}]},
                "spec": template["spec"],
            })
        });
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        pod["status"] = status;
        c.pods.insert(key, pod.clone());
        if !watched {
            return;
        }
        let event = json!({"type": kind, "object": pod});
        c.pod_events.push((rv, event.clone()));
        let _ = c.pod_feed.send((rv, event));
    }

    fn delete_pod(&self, namespace: &str, job: &str) {
        let mut c = self.cluster.lock().unwrap();
        let pod = c
            .pods
            .remove(&format!("{namespace}/{job}-x7k2p"))
            .expect("a pod to delete");
        c.resource_version += 1;
        let rv = c.resource_version;
        let event = json!({"type": "DELETED", "object": pod});
        c.pod_events.push((rv, event.clone()));
        let _ = c.pod_feed.send((rv, event));
    }

    fn set_log(&self, namespace: &str, job: &str, log: &str) {
        self.cluster
            .lock()
            .unwrap()
            .logs
            .insert(format!("{namespace}/{job}-x7k2p"), log.into());
    }

    fn add_event(&self, namespace: &str, event: Value) {
        self.cluster
            .lock()
            .unwrap()
            .events
            .entry(namespace.into())
            .or_default()
            .push(event);
    }
}

// ---------------------------------------------------------------------------------------
// Helpers.

fn args(extra: &[&str]) -> LauncherArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: LauncherArgs,
    }
    let mut argv = vec!["cnnd", "--launcher=kubernetes"];
    argv.extend_from_slice(extra);
    Cli::parse_from(argv).a
}

/// A worker job as the sizing loop builds it (`Sizing::job`).
fn worker_job(kind: WorkerKind, cpus: u32, gpus: u32) -> WorkerJob {
    let device = if kind == WorkerKind::Gpu {
        "cuda:0"
    } else {
        "cpu"
    };
    WorkerJob {
        kind,
        command: [
            "cnnd-worker",
            "--connect",
            "http://cnnd.ml.svc:50052",
            "--device",
            device,
            "--threads",
            &cpus.to_string(),
        ]
        .map(String::from)
        .to_vec(),
        cpus,
        gpus,
    }
}

fn job_name(id: &str) -> &str {
    id.strip_prefix("k8s:")
        .unwrap_or_else(|| panic!("{id} does not start with k8s:"))
}

/// Polls `jobs()` until the report of `job` satisfies `want` (the watch delivers pod
/// changes asynchronously); panics with the last reports after 10 s.
async fn wait_for_report(
    k8s: &Kubernetes,
    job: &str,
    want: impl Fn(&JobReport) -> bool,
) -> JobReport {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let reports = k8s.jobs().await.expect("jobs()");
        if let Some(r) = reports.iter().find(|r| r.job == job && want(r)) {
            return r.clone();
        }
        if tokio::time::Instant::now() > deadline {
            panic!("no wanted report for {job}; last: {reports:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn container(job: &Value) -> &Value {
    &job["spec"]["template"]["spec"]["containers"][0]
}

// ---------------------------------------------------------------------------------------
// Creating Jobs.

#[tokio::test]
async fn a_cpu_worker_is_posted_as_a_job_that_never_retries_and_reads_its_token_from_the_secret() {
    let api = FakeApiServer::start().await;
    let k8s = Kubernetes::with_client(
        api.client("default"),
        "ml",
        &args(&["--k8s-ttl-secs=120", "--k8s-memory=6Gi"]),
    )
    .unwrap();
    let id = k8s
        .submit(&worker_job(WorkerKind::Cpu, 2, 0))
        .await
        .unwrap();
    let name = job_name(&id);
    let posted = api.posted();
    assert_eq!(posted.len(), 1);
    let (namespace, job) = &posted[0];
    assert_eq!(
        namespace, "ml",
        "posted to the --k8s-namespace, not the client's default"
    );
    assert_eq!(job["apiVersion"], "batch/v1");
    assert_eq!(job["kind"], "Job");
    assert_eq!(job["metadata"]["name"], name);
    let tail = name
        .strip_prefix("cnnd-worker-")
        .expect("INSTANCE-worker-HEX");
    assert!(
        tail.len() == 8
            && tail
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{name}"
    );
    let labels = json!({"app.kubernetes.io/name": "cnnd-worker", "app.kubernetes.io/instance": "cnnd",
                        "app.kubernetes.io/managed-by": "cnnd", "cnnd.dev/device": "cpu"});
    assert_eq!(job["metadata"]["labels"], labels);
    assert_eq!(job["spec"]["backoffLimit"], 0);
    assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 120);
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["terminationGracePeriodSeconds"], 150);
    assert!(pod.get("tolerations").is_none(), "{pod}");
    let pod_labels = &job["spec"]["template"]["metadata"]["labels"];
    assert_eq!(pod_labels["cnnd.dev/job"], name);
    assert_eq!(pod_labels["app.kubernetes.io/instance"], "cnnd");

    let c = container(job);
    assert_eq!(c["image"], "cnnd-worker:latest");
    assert_eq!(c["command"], json!(["cnnd-worker"]));
    let expected_args: Vec<String> = [
        "--connect",
        "http://cnnd.ml.svc:50052",
        "--device",
        "cpu",
        "--threads",
        "2",
        "--name",
        name,
        "--launcher-job",
        &id,
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(c["args"], json!(expected_args));
    assert_eq!(id, format!("k8s:{name}"));
    assert_eq!(
        c["resources"]["requests"],
        json!({"cpu": "2", "memory": "6Gi"})
    );
    assert_eq!(
        c["resources"]["limits"],
        json!({"memory": "6Gi"}),
        "no GPU and no CPU limit for a CPU worker"
    );
    let token_env: Vec<&Value> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "CNND_WORKER_TOKEN")
        .collect();
    assert_eq!(token_env.len(), 1, "{c}");
    assert_eq!(
        token_env[0]["valueFrom"]["secretKeyRef"],
        json!({"name": "cnnd-worker-token", "key": "token", "optional": false})
    );
    assert!(
        token_env[0].get("value").is_none(),
        "the token never travels in the Job: {c}"
    );
    let text = job.to_string();
    assert!(!text.contains("--token"), "no token flag: {text}");
}

#[tokio::test]
async fn a_gpu_worker_asks_for_its_gpus_in_limits() {
    let api = FakeApiServer::start().await;
    let k8s =
        Kubernetes::with_client(api.client("ml"), "ml", &args(&["--k8s-instance=team-a"])).unwrap();
    let id = k8s
        .submit(&worker_job(WorkerKind::Gpu, 4, 1))
        .await
        .unwrap();
    assert!(job_name(&id).starts_with("team-a-worker-"), "{id}");
    let (_, job) = api.posted().pop().unwrap();
    assert_eq!(job["metadata"]["labels"]["cnnd.dev/device"], "cuda");
    assert_eq!(
        job["metadata"]["labels"]["app.kubernetes.io/instance"],
        "team-a"
    );
    let c = container(&job);
    assert_eq!(
        c["resources"]["limits"],
        json!({"memory": "4Gi", "nvidia.com/gpu": "1"})
    );
    assert_eq!(
        c["resources"]["requests"],
        json!({"cpu": "4", "memory": "4Gi"})
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2).any(|w| w == ["--device", "cuda:0"]),
        "{args:?}"
    );
    assert_eq!(
        job["spec"]["template"]["spec"]["tolerations"][0]["key"],
        "nvidia.com/gpu"
    );
}

#[tokio::test]
async fn a_name_taken_already_is_retried_once_with_a_new_name() {
    let api = FakeApiServer::start().await;
    let k8s = Kubernetes::with_client(api.client("ml"), "ml", &args(&[])).unwrap();
    api.refuse_next_create(
        409,
        "AlreadyExists",
        "jobs.batch \"cnnd-worker-00000000\" already exists",
    );
    let id = k8s
        .submit(&worker_job(WorkerKind::Cpu, 1, 0))
        .await
        .unwrap();
    let posted = api.posted();
    assert_eq!(posted.len(), 2, "one retry");
    let (first, second) = (
        &posted[0].1["metadata"]["name"],
        &posted[1].1["metadata"]["name"],
    );
    assert_ne!(first, second);
    assert_eq!(job_name(&id), second.as_str().unwrap());
    // The retry's worker registers under the new name too.
    assert_eq!(
        container(&posted[1].1)["args"]
            .as_array()
            .unwrap()
            .last()
            .unwrap(),
        &json!(id)
    );
    assert!(api.has_job("ml", job_name(&id)));

    // Twice in a row: the second answer is the error.
    api.refuse_next_create(409, "AlreadyExists", "taken");
    api.refuse_next_create(409, "AlreadyExists", "taken again");
    let e = format!(
        "{:#}",
        k8s.submit(&worker_job(WorkerKind::Cpu, 1, 0))
            .await
            .unwrap_err()
    );
    assert!(e.contains("taken again"), "{e}");
    assert_eq!(api.posted().len(), 4);
}

#[tokio::test]
async fn a_forbidden_create_says_which_service_account_right_is_missing_and_how_to_grant_it() {
    let api = FakeApiServer::start().await;
    let k8s = Kubernetes::with_client(api.client("ml"), "ml", &args(&[])).unwrap();
    let message = "jobs.batch is forbidden: User \"system:serviceaccount:ml:cnnd\" cannot create resource \"jobs\" in API group \"batch\" in the namespace \"ml\"";
    api.refuse_next_create(403, "Forbidden", message);
    let e = format!(
        "{:#}",
        k8s.submit(&worker_job(WorkerKind::Cpu, 1, 0))
            .await
            .unwrap_err()
    );
    assert!(
        e.contains("the daemon's service account may not create Jobs in namespace ml"),
        "{e}"
    );
    assert!(e.contains("deploy/k8s/rbac.yaml"), "{e}");
    assert!(e.contains(message), "the API's own words: {e}");
    assert_eq!(api.posted().len(), 1, "a 403 is not retried");
}

#[tokio::test]
async fn other_refusals_carry_the_apis_reason_and_message() {
    let api = FakeApiServer::start().await;
    let k8s = Kubernetes::with_client(api.client("ml"), "ml", &args(&[])).unwrap();
    api.refuse_next_create(404, "NotFound", "namespaces \"ml\" not found");
    let e = format!(
        "{:#}",
        k8s.submit(&worker_job(WorkerKind::Cpu, 1, 0))
            .await
            .unwrap_err()
    );
    assert!(
        e.contains("NotFound, HTTP 404") && e.contains("namespaces \"ml\" not found"),
        "{e}"
    );
    assert!(
        e.contains("creating the worker Job") && e.contains("namespace ml"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------
// Following Jobs through their pods.

#[tokio::test]
async fn a_pod_going_pending_running_succeeded_is_followed_through_the_watch() {
    let api = FakeApiServer::start().await;
    let k8s = Kubernetes::with_client(api.client("ml"), "ml", &args(&[])).unwrap();
    let id = k8s
        .submit(&worker_job(WorkerKind::Cpu, 1, 0))
        .await
        .unwrap();
    let name = job_name(&id).to_string();

    let r = wait_for_report(&k8s, &id, |_| true).await;
    assert_eq!(
        (r.phase, r.reason.as_str(), r.stuck),
        (JobPhase::Pending, "no pod yet", false)
    );

    api.set_pod_status("ml", &name, json!({"phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "True"}],
        "containerStatuses": [{"name": "worker", "image": "cnnd-worker:latest", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]}));
    let r = wait_for_report(&k8s, &id, |r| r.reason != "no pod yet").await;
    assert_eq!(
        (r.phase, r.reason.as_str(), r.stuck),
        (JobPhase::Pending, "ContainerCreating", false)
    );

    api.set_pod_status("ml", &name, json!({"phase": "Running",
        "containerStatuses": [{"name": "worker", "image": "cnnd-worker:latest", "imageID": "", "ready": true,
            "restartCount": 0, "state": {"running": {"startedAt": "2026-01-01T00:00:05Z"}}}]}));
    let r = wait_for_report(&k8s, &id, |r| r.phase != JobPhase::Pending).await;
    assert_eq!(
        (r.phase, r.reason.as_str(), r.stuck),
        (JobPhase::Running, "", false)
    );

    api.set_pod_status("ml", &name, json!({"phase": "Succeeded",
        "containerStatuses": [{"name": "worker", "image": "cnnd-worker:latest", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"terminated": {"reason": "Completed", "exitCode": 0}}}]}));
    api.set_job_status(
        "ml",
        &name,
        json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}),
    );
    let r = wait_for_report(&k8s, &id, |r| r.phase != JobPhase::Running).await;
    assert_eq!((r.phase, r.reason.as_str()), (JobPhase::Ended, "Completed"));
}

/// The Job controller marks the Job failed before the watch brings the pod's end (here the
/// watch never brings it): the backend reads the pod itself and says how it ended.
#[tokio::test]
async fn an_oom_killed_worker_ends_with_reason_oomkilled_even_before_the_watch_says_so() {
    let api = FakeApiServer::start().await;
    let k8s = Kubernetes::with_client(api.client("ml"), "ml", &args(&[])).unwrap();
    let id = k8s
        .submit(&worker_job(WorkerKind::Cpu, 1, 0))
        .await
        .unwrap();
    let name = job_name(&id).to_string();
    api.set_pod_status("ml", &name, json!({"phase": "Running"}));
    wait_for_report(&k8s, &id, |r| r.phase == JobPhase::Running).await;
    api.set_pod_status_unwatched("ml", &name, json!({"phase": "Failed",
        "containerStatuses": [{"name": "worker", "image": "cnnd-worker:latest", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}));
    api.set_job_status("ml", &name, json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True",
        "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}));
    let r = wait_for_report(&k8s, &id, |r| r.phase == JobPhase::Ended).await;
    assert_eq!(
        (r.reason.as_str(), r.stuck),
        ("OOMKilled", false),
        "the pod's reason, not the Job's backoff limit"
    );
}

#[tokio::test]
async fn a_worker_that_exits_with_an_error_ends_with_its_exit_code_and_last_log_line() {
    let api = FakeApiServer::start().await;
    let k8s = Kubernetes::with_client(api.client("ml"), "ml", &args(&[])).unwrap();
    let id = k8s
        .submit(&worker_job(WorkerKind::Cpu, 1, 0))
        .await
        .unwrap();
    let name = job_name(&id).to_string();
    api.set_log("ml", &name, "INFO connecting\ncnnd-worker: registering with http://cnnd.ml.svc:50052: connection refused\n\n");
    api.set_pod_status("ml", &name, json!({"phase": "Failed",
        "containerStatuses": [{"name": "worker", "image": "cnnd-worker:latest", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"terminated": {"reason": "Error", "exitCode": 1}}}]}));
    let r = wait_for_report(&k8s, &id, |r| r.phase == JobPhase::Ended).await;
    assert_eq!(
        r.reason,
        "Error (exit code 1); its log ends: cnnd-worker: registering with http://cnnd.ml.svc:50052: connection refused"
    );
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_is_pending_and_stuck() {
    let api = FakeApiServer::start().await;
    let k8s = Kubernetes::with_client(
        api.client("ml"),
        "ml",
        &args(&["--k8s-image=registry.example.com/cnnd-worker:nope"]),
    )
    .unwrap();
    let id = k8s
        .submit(&worker_job(WorkerKind::Cpu, 1, 0))
        .await
        .unwrap();
    let message = "Back-off pulling image \"registry.example.com/cnnd-worker:nope\"";
    api.set_pod_status("ml", job_name(&id), json!({"phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "True"}],
        "containerStatuses": [{"name": "worker", "image": "registry.example.com/cnnd-worker:nope", "imageID": "",
            "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": message}}}]}));
    let r = wait_for_report(&k8s, &id, |r| r.reason != "no pod yet").await;
    assert_eq!(r.phase, JobPhase::Pending);
    assert!(r.stuck);
    assert_eq!(r.reason, format!("ImagePullBackOff: {message}"));
}

#[tokio::test]
async fn a_pod_that_fits_no_node_is_pending_and_stuck_with_the_schedulers_message() {
    let api = FakeApiServer::start().await;
    let k8s = Kubernetes::with_client(api.client("ml"), "ml", &args(&[])).unwrap();
    let id = k8s
        .submit(&worker_job(WorkerKind::Gpu, 1, 1))
        .await
        .unwrap();
    let message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.";
    api.set_pod_status("ml", job_name(&id), json!({"phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]}));
    let r = wait_for_report(&k8s, &id, |r| r.reason != "no pod yet").await;
    assert_eq!((r.phase, r.stuck), (JobPhase::Pending, true));
    assert_eq!(r.reason, format!("Unschedulable: {message}"));
}

#[tokio::test]
async fn a_pod_the_job_controller_may_not_create_is_stuck_with_the_events_words() {
    let api = FakeApiServer::start().await;
    let k8s = Kubernetes::with_client(api.client("ml"), "ml", &args(&[])).unwrap();
    let id = k8s
        .submit(&worker_job(WorkerKind::Cpu, 1, 0))
        .await
        .unwrap();
    let name = job_name(&id);
    let message = format!("Error creating: pods \"{name}-abcde\" is forbidden: exceeded quota: compute, requested: requests.memory=4Gi, used: requests.memory=16Gi, limited: requests.memory=16Gi");
    api.add_event("ml", json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{name}.1"), "namespace": "ml", "creationTimestamp": "2026-01-01T00:00:02Z"},
        "involvedObject": {"kind": "Job", "name": name, "namespace": "ml"},
        "type": "Warning", "reason": "FailedCreate", "message": message}));
    // Another Job's warning is not this one's.
    api.add_event(
        "ml",
        json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "other.1", "namespace": "ml"},
        "involvedObject": {"kind": "Job", "name": "other", "namespace": "ml"},
        "type": "Warning", "reason": "FailedCreate", "message": "not this one"}),
    );
    let r = wait_for_report(&k8s, &id, |_| true).await;
    assert_eq!((r.phase, r.stuck), (JobPhase::Pending, true));
    assert_eq!(r.reason, format!("FailedCreate: {message}"));
}

#[tokio::test]
async fn a_pod_deleted_while_running_ends_its_job_with_that_reason() {
    let api = FakeApiServer::start().await;
    let k8s = Kubernetes::with_client(api.client("ml"), "ml", &args(&[])).unwrap();
    let id = k8s
        .submit(&worker_job(WorkerKind::Cpu, 1, 0))
        .await
        .unwrap();
    let name = job_name(&id).to_string();
    api.set_pod_status("ml", &name, json!({"phase": "Running"}));
    wait_for_report(&k8s, &id, |r| r.phase == JobPhase::Running).await;
    api.delete_pod("ml", &name);
    // The Job controller counts the lost pod as a failure (backoffLimit 0).
    api.set_job_status("ml", &name, json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True",
        "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}));
    let r = wait_for_report(&k8s, &id, |r| r.phase == JobPhase::Ended).await;
    assert_eq!(r.reason, "pod deleted while Running");
}

#[tokio::test]
async fn only_this_daemons_jobs_are_listed() {
    let api = FakeApiServer::start().await;
    let k8s =
        Kubernetes::with_client(api.client("ml"), "ml", &args(&["--k8s-instance=blue"])).unwrap();
    let ours = k8s
        .submit(&worker_job(WorkerKind::Cpu, 1, 0))
        .await
        .unwrap();
    api.add_job("ml", json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "green-worker-00000001", "namespace": "ml",
                     "labels": {"app.kubernetes.io/instance": "green", "app.kubernetes.io/managed-by": "cnnd"}},
        "spec": {"template": {}}, "status": {}}));
    api.add_job("other", json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "blue-worker-00000002", "namespace": "other",
                     "labels": {"app.kubernetes.io/instance": "blue", "app.kubernetes.io/managed-by": "cnnd"}},
        "spec": {"template": {}}, "status": {}}));
    let jobs: Vec<String> = k8s
        .jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.job)
        .collect();
    assert_eq!(jobs, vec![ours]);
}

#[tokio::test]
async fn pods_the_daemon_may_not_watch_make_jobs_fail_with_the_rbac_hint() {
    let api = FakeApiServer::start().await;
    api.cluster.lock().unwrap().pods_forbidden = true;
    let k8s = Kubernetes::with_client(api.client("ml"), "ml", &args(&[])).unwrap();
    let e = format!("{:#}", k8s.jobs().await.unwrap_err());
    assert!(
        e.contains("may not list and watch pods in namespace ml"),
        "{e}"
    );
    assert!(
        e.contains("deploy/k8s/rbac.yaml") && e.contains("pods is forbidden"),
        "{e}"
    );
}

#[tokio::test]
async fn cancel_deletes_the_job_in_the_background_and_a_missing_job_is_no_error() {
    let api = FakeApiServer::start().await;
    let k8s = Kubernetes::with_client(api.client("ml"), "ml", &args(&[])).unwrap();
    let id = k8s
        .submit(&worker_job(WorkerKind::Cpu, 1, 0))
        .await
        .unwrap();
    let name = job_name(&id).to_string();
    k8s.cancel(&id).await.unwrap();
    assert!(!api.has_job("ml", &name));
    let deletes = api.cluster.lock().unwrap().deletes.clone();
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].0, format!("ml/{name}"));
    assert_eq!(
        deletes[0].1["propagationPolicy"], "Background",
        "{:?}",
        deletes[0].1
    );
    k8s.cancel(&id).await.expect("a Job that is gone already");
    assert!(k8s.jobs().await.unwrap().is_empty());
}

/// `Kubernetes::new` reads KUBECONFIG (this is the only test that sets it) and takes the
/// namespace of its context unless --k8s-namespace says otherwise.
#[tokio::test]
async fn new_takes_the_kubeconfigs_namespace_unless_one_is_given() {
    let api = FakeApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: team-a\n\
             users:\n- name: fake\n  user:\n    token: not-a-real-token\n",
            api.url
        ),
    )
    .unwrap();
    std::env::set_var("KUBECONFIG", &kubeconfig);
    let from_context = Kubernetes::new(&args(&[])).await.unwrap();
    from_context
        .submit(&worker_job(WorkerKind::Cpu, 1, 0))
        .await
        .unwrap();
    let given = Kubernetes::new(&args(&["--k8s-namespace=team-b"]))
        .await
        .unwrap();
    given
        .submit(&worker_job(WorkerKind::Cpu, 1, 0))
        .await
        .unwrap();
    std::env::remove_var("KUBECONFIG");
    let namespaces: Vec<String> = api.posted().into_iter().map(|(ns, _)| ns).collect();
    assert_eq!(namespaces, ["team-a", "team-b"]);
}

// ---------------------------------------------------------------------------------------
// Manifests against the Kubernetes schema (offline), and the examples in deploy/k8s.

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The worker Jobs deploy/k8s/examples shows: what the backend submits for these settings.
fn example_manifests() -> Vec<(&'static str, Value)> {
    let a = args(&["--k8s-image=registry.example.com/cnnd-worker:0.1.0"]);
    let template = JobTemplate::from_args(&a, "cnnd").unwrap();
    let mut cpu = worker_job(WorkerKind::Cpu, 2, 0);
    let mut gpu = worker_job(WorkerKind::Gpu, 4, 1);
    for job in [&mut cpu, &mut gpu] {
        job.command[2] = "http://cnnd:50052".into();
    }
    vec![
        (
            "worker-job-cpu.yaml",
            serde_json::to_value(template.manifest(&cpu, "cnnd-worker-0123abcd").unwrap()).unwrap(),
        ),
        (
            "worker-job-gpu.yaml",
            serde_json::to_value(template.manifest(&gpu, "cnnd-worker-4567cdef").unwrap()).unwrap(),
        ),
    ]
}

const EXAMPLE_HEADER: &str =
    "# An example of the worker Job cnnd submits (--launcher kubernetes); cnnd creates these\n\
# itself: do not apply it. Generated from src/launcher/kubernetes.rs by\n\
# tests/kubernetes_launcher.rs (CNND_BLESS=1 rewrites it), which fails when it is out of date;\n\
# scripts/validate-manifests.sh checks it against the Kubernetes schema.\n";

#[test]
fn the_example_jobs_in_deploy_are_what_the_backend_submits() {
    let dir = repo().join("deploy/k8s/examples");
    for (file, manifest) in example_manifests() {
        let path = dir.join(file);
        if std::env::var_os("CNND_BLESS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            let yaml = serde_saphyr::to_string(&manifest).unwrap();
            std::fs::write(&path, format!("{EXAMPLE_HEADER}{yaml}")).unwrap();
        }
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (CNND_BLESS=1 writes it)", path.display()));
        let committed: Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(
            committed,
            manifest,
            "{} is not what the backend submits now; rerun this test with CNND_BLESS=1 and review the diff",
            path.display()
        );
    }
}

/// kubernetes-validate, where scripts/validate-manifests.sh installs it.
fn kubernetes_validate() -> PathBuf {
    let cache = std::env::var_os("CNND_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/cnnd")
        });
    let tool = cache.join("venv-tools/bin/kubernetes-validate");
    assert!(
        tool.exists(),
        "{} is missing: run scripts/validate-manifests.sh (or scripts/setup.sh) once to install it",
        tool.display()
    );
    tool
}

fn validate(files: &[&Path]) -> (bool, String) {
    let out = Command::new("bash")
        .arg(repo().join("scripts/validate-manifests.sh"))
        .args(files)
        .output()
        .expect("running scripts/validate-manifests.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn generated_jobs_and_the_deploy_manifests_pass_the_kubernetes_schema() {
    kubernetes_validate();
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    // Settings other than the examples': another namespace, instance, memory and TTL.
    let a = args(&[
        "--k8s-instance=team-a",
        "--k8s-memory=1.5G",
        "--k8s-ttl-secs=0",
    ]);
    let template = JobTemplate::from_args(&a, "ml").unwrap();
    for (kind, gpus) in [(WorkerKind::Cpu, 0), (WorkerKind::Gpu, 2)] {
        let name = template.new_job_name();
        let manifest = template
            .manifest(&worker_job(kind, 3, gpus), &name)
            .unwrap();
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, serde_saphyr::to_string(&manifest).unwrap()).unwrap();
        files.push(path);
    }
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (ok, out) = validate(&paths);
    assert!(ok, "{out}");
    // It read them all: deploy/k8s's five, the two examples and the two generated here.
    for name in [
        "daemon.yaml",
        "daemon-ha.yaml",
        "rbac.yaml",
        "worker-token-secret.yaml",
        "worker-job-cpu.yaml",
        "worker-job-gpu.yaml",
    ] {
        assert!(out.contains(name), "{name} not validated: {out}");
    }
    for f in &files {
        assert!(
            out.contains(&*f.file_name().unwrap().to_string_lossy()),
            "{out}"
        );
    }

    // And the schema is really applied: a misspelt field and a wrong type are each refused
    // (the tool reports the first error of a resource, so one fault per file).
    let good = serde_json::to_value(
        template
            .manifest(&worker_job(WorkerKind::Cpu, 1, 0), "broken")
            .unwrap(),
    )
    .unwrap();
    let mut misspelt = good.clone();
    misspelt["spec"]["backofLimit"] = json!(0);
    let mut wrong_type = good;
    wrong_type["spec"]["ttlSecondsAfterFinished"] = json!("ten");
    for (file, manifest, fault) in [
        (
            "misspelt-job.yaml",
            misspelt,
            "'backofLimit' was unexpected",
        ),
        (
            "wrong-type-job.yaml",
            wrong_type,
            "ttlSecondsAfterFinished: 'ten' is not of type 'integer'",
        ),
    ] {
        let bad = dir.path().join(file);
        std::fs::write(&bad, serde_saphyr::to_string(&manifest).unwrap()).unwrap();
        let (ok, out) = validate(&[bad.as_path()]);
        assert!(!ok, "a broken Job passed: {out}");
        assert!(out.contains(file) && out.contains(fault), "{out}");
    }
}

// ---------------------------------------------------------------------------------------
// The whole daemon, with the scripted API server as its cluster.

/// Plays the Job controller and the kubelet for a real `cnnd --launcher kubernetes`: each Job
/// the daemon creates gets a pod whose container is a real `cnnd-worker` process on this
/// machine, run with the Job's own arguments and the token its Secret would hold (the daemon's
/// worker-token file: the kubelet resolves the `secretKeyRef`). The pod is Running while the
/// process runs, Succeeded or Failed when it exits; a deleted Job's process gets SIGTERM, as a
/// pod's container does. [`Kubelet::oom_kill`] SIGKILLs a pod's process and reports it
/// `OOMKilled`, as the kubelet does when a container passes its memory limit.
struct Kubelet {
    stop: Arc<AtomicBool>,
    oom: Arc<Mutex<HashSet<String>>>,
    /// Job name -> how its pod ended ("Succeeded", "OOMKilled", "Error (exit 1)", "deleted").
    ended: Arc<Mutex<BTreeMap<String, String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    logs: tempfile::TempDir,
}

fn container_state(state: Value) -> Value {
    json!([{"name": "worker", "image": "cnnd-worker:latest", "imageID": "", "ready": true,
            "restartCount": 0, "state": state}])
}

impl Kubelet {
    fn start(api: FakeApiServer, namespace: &str, worker_token: String) -> Kubelet {
        let stop = Arc::new(AtomicBool::new(false));
        let oom = Arc::new(Mutex::new(HashSet::new()));
        let ended = Arc::new(Mutex::new(BTreeMap::new()));
        let logs = tempfile::tempdir().unwrap();
        let (s, o, e, dir, ns) = (
            stop.clone(),
            oom.clone(),
            ended.clone(),
            logs.path().to_path_buf(),
            namespace.to_string(),
        );
        let thread = std::thread::spawn(move || {
            let mut pods: BTreeMap<String, std::process::Child> = BTreeMap::new();
            while !s.load(Ordering::SeqCst) {
                let jobs = api.jobs(&ns);
                for (name, job) in &jobs {
                    if pods.contains_key(name) || e.lock().unwrap().contains_key(name) {
                        continue;
                    }
                    let container = container(job);
                    // The kubelet's part: the Secret's value into the variable it names.
                    let token_env = container["env"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|e| e["valueFrom"]["secretKeyRef"]["name"] == "cnnd-worker-token")
                        .and_then(|e| e["name"].as_str())
                        .expect("the token from the Secret")
                        .to_string();
                    let args: Vec<String> = container["args"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|a| a.as_str().unwrap().to_string())
                        .collect();
                    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
                    let child = Command::new(common::sibling_bin("cnnd-worker"))
                        .args(&args)
                        .env(&token_env, &worker_token)
                        .env("XDG_CACHE_HOME", dir.join("cache"))
                        .env("CUDA_VISIBLE_DEVICES", "")
                        .stdout(log.try_clone().unwrap())
                        .stderr(log)
                        .spawn()
                        .expect("starting cnnd-worker as a pod's container");
                    api.try_set_pod_status(&ns, name, json!({"phase": "Running",
                        "conditions": [{"type": "PodScheduled", "status": "True"}],
                        "containerStatuses": container_state(json!({"running": {"startedAt": "2026-01-01T00:00:01Z"}}))}));
                    pods.insert(name.clone(), child);
                }
                let live: HashSet<&String> = jobs.iter().map(|(n, _)| n).collect();
                let names: Vec<String> = pods.keys().cloned().collect();
                for name in names {
                    let child = pods.get_mut(&name).unwrap();
                    let how = if !live.contains(&name) {
                        // The Job was deleted: its pod is terminated (SIGTERM, then the grace).
                        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                        let deadline = std::time::Instant::now() + Duration::from_secs(30);
                        while child.try_wait().unwrap().is_none()
                            && std::time::Instant::now() < deadline
                        {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        let _ = child.kill();
                        let _ = child.wait();
                        api.try_delete_pod(&ns, &name);
                        "deleted".to_string()
                    } else if o.lock().unwrap().remove(&name) {
                        let _ = child.kill();
                        let _ = child.wait();
                        api.try_set_pod_status(&ns, &name, json!({"phase": "Failed",
                            "containerStatuses": container_state(json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}))}));
                        api.try_set_job_status(&ns, &name, json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True",
                            "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}));
                        "OOMKilled".to_string()
                    } else if let Some(exit) = child.try_wait().unwrap() {
                        let code = exit.code().unwrap_or(128);
                        if code == 0 {
                            api.try_set_pod_status(&ns, &name, json!({"phase": "Succeeded",
                                "containerStatuses": container_state(json!({"terminated": {"exitCode": 0, "reason": "Completed"}}))}));
                            api.try_set_job_status(
                                &ns,
                                &name,
                                json!({"succeeded": 1,
                                "conditions": [{"type": "Complete", "status": "True"}]}),
                            );
                            "Succeeded".to_string()
                        } else {
                            api.try_set_pod_status(&ns, &name, json!({"phase": "Failed",
                                "containerStatuses": container_state(json!({"terminated": {"exitCode": code, "reason": "Error"}}))}));
                            api.try_set_job_status(&ns, &name, json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True",
                                "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}));
                            format!("Error (exit {code})")
                        }
                    } else {
                        continue;
                    };
                    pods.remove(&name);
                    e.lock().unwrap().insert(name, how);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            for (_, mut child) in pods {
                let _ = child.kill();
                let _ = child.wait();
            }
        });
        Kubelet {
            stop,
            oom,
            ended,
            thread: Some(thread),
            logs,
        }
    }

    fn oom_kill(&self, job: &str) {
        self.oom.lock().unwrap().insert(job.to_string());
    }

    fn ended(&self) -> BTreeMap<String, String> {
        self.ended.lock().unwrap().clone()
    }

    /// The pods' output, for a failed wait.
    fn logs(&self) -> String {
        let mut s = String::new();
        for f in std::fs::read_dir(self.logs.path()).unwrap().flatten() {
            if f.path().extension().is_some_and(|e| e == "log") {
                s.push_str(&format!(
                    "\n--- pod {}\n{}",
                    f.path().display(),
                    std::fs::read_to_string(f.path()).unwrap_or_default()
                ));
            }
        }
        s
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A small MNIST trial: about a second per epoch on one thread.
fn small_trial(epochs: u32, train_limit: u32) -> Value {
    json!({"epochs": epochs, "batchSize": 16, "learningRate": 0.002, "baseFilters": 8, "units": 32,
           "trainLimit": train_limit, "testLimit": 200})
}

/// The real daemon with `--launcher kubernetes` against the scripted API server, its pods
/// played by [`Kubelet`] as real `cnnd-worker` processes: a sweep is trained by the workers
/// it starts (scaled up to `--max-workers`, each registered with its Job), idle workers
/// retire, and a worker killed for memory (`OOMKilled`) gives its trial to the worker of a
/// new Job, with that reason on record.
#[test]
fn the_daemon_trains_a_sweep_on_workers_it_starts_as_jobs_and_replaces_an_oom_killed_one() {
    let _serial = common::serial();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let api = runtime.block_on(FakeApiServer::start());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: ml\n\
             users:\n- name: fake\n  user:\n    token: not-a-real-token\n",
            api.url
        ),
    )
    .unwrap();
    let worker_port = common::free_port();
    let worker_url = format!("http://127.0.0.1:{worker_port}");
    let d = common::Daemon::start_with_env(
        &[
            "--launcher=kubernetes",
            "--launcher-poll-secs=1",
            "--max-workers=2",
            "--worker-idle-secs=3",
            &format!("--worker-listen=127.0.0.1:{worker_port}"),
            &format!("--launcher-connect-url={worker_url}"),
        ],
        &[("KUBECONFIG", kubeconfig.as_os_str())],
    );
    let kubelet = Kubelet::start(api.clone(), "ml", d.worker_token());
    let log = || {
        format!(
            "{}\n{}\n--- ended pods: {:?}",
            d.log(),
            kubelet.logs(),
            kubelet.ended()
        )
    };
    assert_eq!(d.cnnctl_json(&["status"])["launcher"]["kind"], "kubernetes");

    // 1. Four trials: two Jobs (--max-workers 2), whose workers register their Jobs and
    //    train every trial.
    let id = d.submit(
        &json!({"name": "k8s-sweep", "dataset": "mnist", "fixed": small_trial(1, 1500),
        "space": {"kernelSize": [3, 5], "head": ["gap", "dense"]}, "strategy": "grid", "seed": 3}),
    );
    let mut registered: HashSet<String> = HashSet::new();
    wait_for(
        Duration::from_secs(300),
        "the sweep to finish on the Jobs' workers",
        log,
        || {
            let status = d.cnnctl_json(&["status"]);
            for w in status["workers"].as_array().into_iter().flatten() {
                if let Some(job) = w["launcherJob"].as_str().filter(|j| !j.is_empty()) {
                    registered.insert(job.to_string());
                }
            }
            (d.cnnctl_json(&["sweep", &id])["status"] == "finished").then_some(())
        },
    );
    let posted = api.posted();
    assert_eq!(
        posted.len(),
        2,
        "two Jobs for --max-workers 2; log:\n{}",
        log()
    );
    for (namespace, job) in &posted {
        assert_eq!(namespace, "ml", "the kubeconfig's namespace");
        let c = container(job);
        assert_eq!(c["command"], json!(["cnnd-worker"]), "the image's worker");
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(
            args.windows(2)
                .any(|w| w == ["--connect", worker_url.as_str()]),
            "{args:?}"
        );
        let name = job["metadata"]["name"].as_str().unwrap();
        assert!(
            registered.contains(&format!("k8s:{name}")),
            "the worker of {name} registered its Job: {registered:?}"
        );
    }
    let trials = d.cnnctl_json(&["sweep", &id])["trials"].clone();
    assert_eq!(trials.as_array().unwrap().len(), 4);
    for t in trials.as_array().unwrap() {
        assert_eq!(t["status"], "succeeded", "{t}");
        assert!(
            registered.contains(&format!(
                "k8s:{}",
                d.get_trial(t["trialId"].as_str().unwrap()).worker
            )),
            "{t}"
        );
    }

    // 2. Scale-down: the idle workers are told to exit, their pods end Succeeded, and the
    //    launcher forgets their Jobs.
    wait_for(
        Duration::from_secs(60),
        "idle workers to exit and their Jobs to end",
        log,
        || {
            let l = d.cnnctl_json(&["status"])["launcher"].clone();
            let succeeded = kubelet
                .ended()
                .values()
                .filter(|how| *how == "Succeeded")
                .count();
            (succeeded == 2 && l["jobs"].as_array().is_none_or(|j| j.is_empty())).then_some(())
        },
    );

    // 3. A worker killed for memory mid-trial: its trial is released with the pod's reason
    //    (the attempt counts) and finishes on the worker of a new Job.
    let id = d.submit(
        &json!({"name": "k8s-oom", "dataset": "mnist", "fixed": small_trial(4, 3000),
        "space": {}, "strategy": "grid", "seed": 3}),
    );
    let trial = format!("{id}-t0");
    let db = d.db_path();
    let holder = wait_for(
        Duration::from_secs(120),
        "the trial to record an epoch",
        log,
        || {
            if epochs_of(&db, &trial).is_empty() {
                return None;
            }
            let status = d.cnnctl_json(&["status"]);
            status["workers"]
                .as_array()?
                .iter()
                .find(|w| w["trialId"] == trial.as_str())
                .and_then(|w| w["launcherJob"].as_str().map(String::from))
        },
    );
    kubelet.oom_kill(holder.strip_prefix("k8s:").unwrap());
    let s = d.wait_for_sweep(&id, Duration::from_secs(300));
    assert_eq!(s["trials"][0]["status"], "succeeded", "{s}\n{}", log());
    assert_eq!(
        kubelet
            .ended()
            .get(holder.strip_prefix("k8s:").unwrap())
            .map(String::as_str),
        Some("OOMKilled")
    );
    let runs = attempts(&db, &trial);
    assert_eq!(runs.len(), 2, "{runs:?}\n{}", log());
    // The daemon says why the first attempt ended: the pod's reason, naming the Job.
    assert!(
        d.log()
            .contains(&format!("ended with its cluster job {holder} (OOMKilled)")),
        "{}",
        log()
    );
    let worker = d.get_trial(&trial).worker;
    assert!(
        worker != holder.strip_prefix("k8s:").unwrap(),
        "finished by another Job's worker: {worker}"
    );
    assert_eq!(
        api.posted().len(),
        4,
        "one Job for the trial and one after the kill; log:\n{}",
        log()
    );
}

// ---------------------------------------------------------------------------------------
// A real cluster.

/// One CPU worker Job on the cluster of CNND_E2E_KUBECONFIG (namespace: CNND_E2E_NAMESPACE
/// or the kubeconfig's), image CNND_E2E_IMAGE: it must reach Running or a clear reason why
/// it cannot start, then be cancelled and leave the list. The worker dials an address where
/// no daemon listens, so it never takes a trial. Not run on this project's machines (no
/// cluster): `CNND_E2E_KUBECONFIG=... CNND_E2E_IMAGE=... cargo test --release -p cnnd
/// --features kubernetes --test kubernetes_launcher -- --ignored e2e_`.
#[tokio::test]
#[ignore = "needs a real cluster: set CNND_E2E_KUBECONFIG and CNND_E2E_IMAGE and run with --ignored"]
async fn e2e_one_cpu_worker_job_on_a_real_cluster() {
    let Some(kubeconfig) = std::env::var_os("CNND_E2E_KUBECONFIG") else {
        panic!(
            "CNND_E2E_KUBECONFIG is not set: this test needs a real cluster (see deploy/README.md)"
        );
    };
    let image = std::env::var("CNND_E2E_IMAGE")
        .expect("CNND_E2E_IMAGE: the worker image the cluster can pull");
    let kubeconfig =
        kube::config::Kubeconfig::read_from(&kubeconfig).expect("reading CNND_E2E_KUBECONFIG");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("a usable kubeconfig");
    let namespace =
        std::env::var("CNND_E2E_NAMESPACE").unwrap_or_else(|_| config.default_namespace.clone());
    let client = kube::Client::try_from(config).unwrap();
    let instance = format!("cnnd-e2e-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let k8s = Kubernetes::with_client(
        client,
        &namespace,
        &args(&[
            &format!("--k8s-image={image}"),
            &format!("--k8s-instance={instance}"),
            "--k8s-memory=512Mi",
            "--k8s-ttl-secs=60",
        ]),
    )
    .unwrap();
    let mut job = worker_job(WorkerKind::Cpu, 1, 0);
    job.command[2] = "http://127.0.0.1:9".into();
    let id = k8s.submit(&job).await.expect("submitting a worker Job");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let outcome = loop {
        let reports = k8s.jobs().await;
        let report = reports
            .as_ref()
            .ok()
            .and_then(|rs| rs.iter().find(|r| r.job == id).cloned());
        match report {
            Some(r) if r.phase == JobPhase::Running || r.stuck || r.phase == JobPhase::Ended => {
                break Ok(r)
            }
            _ if tokio::time::Instant::now() > deadline => {
                break Err(format!(
                    "neither running nor stuck after 300 s: {reports:?}"
                ))
            }
            _ => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    };
    k8s.cancel(&id).await.expect("cancelling");
    let report = outcome.unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{id}: {report:?}");
    if report.phase != JobPhase::Running {
        assert!(!report.reason.is_empty(), "no reason given: {report:?}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while k8s.jobs().await.unwrap().iter().any(|r| r.job == id) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} still listed 60 s after cancel"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
