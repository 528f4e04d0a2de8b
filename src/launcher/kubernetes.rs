//! The Kubernetes launcher's backend: one `batch/v1` Job per worker, created, listed and
//! deleted through the Kubernetes API (`kube`), with the state of their pods kept current by
//! a watch (a `kube::runtime` reflector over this daemon's worker pods).
//!
//! Owns: the worker Job manifest ([`JobTemplate::manifest`]: `restartPolicy: Never`,
//! `backoffLimit: 0` because cnnd's own attempts are the only retry policy, the worker token
//! from a Secret through `secretKeyRef`, never on a command line, the labels naming this
//! daemon), the settings' checks (`--k8s-*`), the pod watch, and the reading of a Job and
//! its pod as a [`JobReport`] (why it waits, why it ended, whether it can start at all).
//!
//! Must not touch: the store, the scheduler or the sizing loop (`super`), and no object of
//! the cluster but the Jobs it created (label `app.kubernetes.io/instance` = `--k8s-instance`,
//! `app.kubernetes.io/managed-by=cnnd`); it only reads their pods, the Jobs' events and the
//! pods' logs. Pods are the Job controller's: they are never deleted here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerState, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    Event as CoreEvent, Pod, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements,
    SeccompProfile, SecretKeySelector, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};

use super::{JobPhase, JobReport, WorkerJob};
use crate::config::LauncherArgs;
use crate::scheduler::WORKER_TOKEN_ENV;

/// How this backend's jobs are named to workers and in `cnnctl status`.
pub const JOB_PREFIX: &str = "k8s:";

/// The labels every worker Job and its pod carry.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_DEVICE: &str = "cnnd.dev/device";
/// On the pod only: the Job it belongs to (what the pod watch groups by).
pub const LABEL_JOB: &str = "cnnd.dev/job";

/// The key of the worker token in `--k8s-token-secret`.
pub const TOKEN_KEY: &str = "token";

/// The worker container's name.
pub const CONTAINER: &str = "worker";

/// Seconds between SIGTERM and SIGKILL: the worker gives its trial back on SIGTERM (its
/// last checkpoint is already uploaded), which takes far less.
const TERMINATION_GRACE_SECS: i64 = 150;

/// Where the worker's file cache lives in the pod (an emptyDir, writable whatever the uid).
const CACHE_MOUNT: &str = "/var/cache/cnnd-worker";

/// How long `jobs` waits for the pod watch's first list before it says why it has none.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(10);

/// How long one call to the Kubernetes API may take (an API server that does not answer).
const API_TIMEOUT: Duration = Duration::from_secs(30);

/// Pod waiting reasons that will not pass by waiting: the pod cannot start as submitted.
const STUCK_WAITING: &[&str] = &[
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
];

/// The settings of the worker Jobs, checked.
#[derive(Debug, Clone)]
pub struct JobTemplate {
    pub namespace: String,
    pub image: String,
    pub token_secret: String,
    pub memory: String,
    pub instance: String,
    pub ttl_secs: u32,
}

/// A DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or
/// digit, at most `max` characters.
fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain (Secret names): labels joined by '.', at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|label| is_dns_label(label, 63))
}

/// A Kubernetes quantity as memory takes it: a positive number with an optional binary
/// (Ki..Ei), decimal (k..E) or exponent suffix, e.g. 4Gi, 512Mi, 1.5G, 2e9.
fn is_memory_quantity(s: &str) -> bool {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let number_ok = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.bytes().any(|b| b.is_ascii_digit() && b != b'0');
    let suffix_ok = matches!(
        suffix,
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "k" | "M" | "G" | "T" | "P" | "E"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix('+').unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()));
    number_ok && suffix_ok
}

/// The random part of a Job name: 8 lowercase hex digits.
fn random_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

impl JobTemplate {
    /// Checks the `--k8s-*` settings; `namespace` is `--k8s-namespace` or the client's default.
    pub fn from_args(args: &LauncherArgs, namespace: &str) -> Result<JobTemplate> {
        if !is_dns_label(namespace, 63) {
            bail!(
                "--k8s-namespace: '{namespace}' is not a namespace name (lowercase letters, digits and '-', at most 63)"
            );
        }
        // Job names are INSTANCE-worker-XXXXXXXX and must stay a 63-character label (the
        // Job controller puts the name in a label of the pod).
        let instance = args.k8s_instance.trim();
        if !is_dns_label(instance, 63 - "-worker-".len() - 8) {
            bail!(
                "--k8s-instance: '{instance}' must be lowercase letters, digits and '-', starting and ending with a letter or digit, at most 47 characters (it names the Jobs and labels them)"
            );
        }
        let token_secret = args.k8s_token_secret.trim();
        if !is_dns_subdomain(token_secret) {
            bail!(
                "--k8s-token-secret: '{token_secret}' is not a Secret name (lowercase letters, digits, '-' and '.')"
            );
        }
        let image = args.k8s_image.trim();
        if image.is_empty() || image.contains(char::is_whitespace) {
            bail!("--k8s-image: '{image}' is not an image reference (e.g. registry.example.com/cnnd-worker:0.1.0)");
        }
        let memory = args.k8s_memory.trim();
        if !is_memory_quantity(memory) {
            bail!("--k8s-memory: '{memory}' is not a memory quantity (e.g. 4Gi, 512Mi, 8G)");
        }
        Ok(JobTemplate {
            namespace: namespace.to_string(),
            image: image.to_string(),
            token_secret: token_secret.to_string(),
            memory: memory.to_string(),
            instance: instance.to_string(),
            ttl_secs: args.k8s_ttl_secs,
        })
    }

    /// The label selector of this daemon's Jobs and pods.
    pub fn selector(&self) -> String {
        format!("{LABEL_MANAGED_BY}=cnnd,{LABEL_INSTANCE}={}", self.instance)
    }

    /// A fresh Job name: `INSTANCE-worker-XXXXXXXX`.
    pub fn new_job_name(&self) -> String {
        format!("{}-worker-{}", self.instance, random_suffix())
    }

    fn labels(&self, job: &WorkerJob) -> std::collections::BTreeMap<String, String> {
        [
            (LABEL_NAME, "cnnd-worker"),
            (LABEL_INSTANCE, self.instance.as_str()),
            (LABEL_MANAGED_BY, "cnnd"),
            (LABEL_DEVICE, job.kind.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// The Job that runs one worker, named `name`. The container runs `job.command` (its
    /// first word is the worker program inside the image) with `--name NAME --launcher-job
    /// k8s:NAME`, so the worker registers as this Job's.
    pub fn manifest(&self, job: &WorkerJob, name: &str) -> Result<Job> {
        let Some((program, args)) = job.command.split_first() else {
            bail!("the worker command is empty");
        };
        let mut args = args.to_vec();
        args.extend([
            "--name".to_string(),
            name.to_string(),
            "--launcher-job".to_string(),
            format!("{JOB_PREFIX}{name}"),
        ]);
        let labels = self.labels(job);
        let mut pod_labels = labels.clone();
        pod_labels.insert(LABEL_JOB.into(), name.into());

        let memory = Quantity(self.memory.clone());
        let requests = std::collections::BTreeMap::from([
            ("cpu".to_string(), Quantity(job.cpus.max(1).to_string())),
            ("memory".to_string(), memory.clone()),
        ]);
        let mut limits = std::collections::BTreeMap::from([("memory".to_string(), memory)]);
        let mut tolerations = None;
        if job.gpus > 0 {
            // Extended resources are requested through limits (requests default to them).
            limits.insert("nvidia.com/gpu".into(), Quantity(job.gpus.to_string()));
            // GPU nodes are commonly tainted nvidia.com/gpu:NoSchedule.
            tolerations = Some(vec![Toleration {
                key: Some("nvidia.com/gpu".into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }]);
        }

        let container = Container {
            name: CONTAINER.into(),
            image: Some(self.image.clone()),
            command: Some(vec![program.clone()]),
            args: Some(args),
            env: Some(vec![
                EnvVar {
                    name: WORKER_TOKEN_ENV.into(),
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: self.token_secret.clone(),
                            key: TOKEN_KEY.into(),
                            optional: Some(false),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                // The worker's default cache (~/.cache/cnnd-worker) goes to the emptyDir.
                EnvVar {
                    name: "XDG_CACHE_HOME".into(),
                    value: Some(CACHE_MOUNT.into()),
                    ..Default::default()
                },
            ]),
            resources: Some(ResourceRequirements {
                requests: Some(requests),
                limits: Some(limits),
                ..Default::default()
            }),
            volume_mounts: Some(vec![VolumeMount {
                name: "cache".into(),
                mount_path: CACHE_MOUNT.into(),
                ..Default::default()
            }]),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };

        Ok(Job {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            spec: Some(JobSpec {
                // cnnd's --max-attempts is the only retry policy: a failed pod ends the Job.
                backoff_limit: Some(0),
                ttl_seconds_after_finished: Some(self.ttl_secs as i32),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(pod_labels),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        restart_policy: Some("Never".into()),
                        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECS),
                        // Workers need no Kubernetes API access.
                        automount_service_account_token: Some(false),
                        // The Pod Security "restricted" profile: the image runs as a numeric
                        // non-root user (deploy/Dockerfile: USER 10001).
                        security_context: Some(PodSecurityContext {
                            run_as_non_root: Some(true),
                            seccomp_profile: Some(SeccompProfile {
                                type_: "RuntimeDefault".into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        containers: vec![container],
                        tolerations,
                        volumes: Some(vec![Volume {
                            name: "cache".into(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            ..Default::default()
        })
    }
}

/// What the pod watch has learnt besides the pods themselves.
#[derive(Default)]
struct WatchNotes {
    /// The watch's last error, until it lists or sees a pod again.
    last_error: Option<String>,
    /// Job name -> what its pod was doing when it was deleted (a pod deleted before it
    /// ended: `kubectl delete pod`, a node drained). Forgotten when the Job is.
    deleted_pods: HashMap<String, String>,
}

pub struct Kubernetes {
    client: kube::Client,
    template: JobTemplate,
    jobs_api: Api<Job>,
    pods: reflector::Store<Pod>,
    notes: Arc<Mutex<WatchNotes>>,
    /// Pod name -> the last lines of its log, read once when it failed.
    log_tails: Mutex<HashMap<String, String>>,
    watch_task: tokio::task::JoinHandle<()>,
}

impl Drop for Kubernetes {
    fn drop(&mut self) {
        self.watch_task.abort();
    }
}

/// The words of an API error (the Status message the API server sent).
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

/// An error of the Kubernetes API, said plainly: `doing` is what was attempted ("creating
/// the worker Job x"), `may_not` what a 403 means the service account may not do
/// ("create Jobs").
fn explain(e: kube::Error, doing: &str, may_not: &str, namespace: &str) -> anyhow::Error {
    match &e {
        kube::Error::Api(status) if status.code == 403 => anyhow!(
            "{doing}: forbidden: the daemon's service account may not {may_not} in namespace {namespace}; apply deploy/k8s/rbac.yaml (kubectl apply -n {namespace} -f deploy/k8s/rbac.yaml). The API said: {}",
            api_message(&e)
        ),
        kube::Error::Api(status) if status.code == 401 => anyhow!(
            "{doing}: the Kubernetes API did not accept the daemon's credentials (its kubeconfig, or the pod's service account token): {}",
            api_message(&e)
        ),
        kube::Error::Api(status) => anyhow!(
            "{doing}: the Kubernetes API refused it ({}, HTTP {}): {}",
            if status.reason.is_empty() { "no reason" } else { status.reason.as_str() },
            status.code,
            api_message(&e)
        ),
        other => anyhow!("{doing}: the Kubernetes API could not be reached: {other}"),
    }
}

/// A watch error as one line, with the RBAC hint when the API forbade it.
fn watch_error_text(e: &watcher::Error, namespace: &str) -> String {
    let api_error = match e {
        watcher::Error::InitialListFailed(k)
        | watcher::Error::WatchStartFailed(k)
        | watcher::Error::WatchFailed(k) => Some(k),
        _ => None,
    };
    let forbidden = match e {
        watcher::Error::WatchError(status) => status.code == 403,
        _ => matches!(api_error, Some(kube::Error::Api(s)) if s.code == 403),
    };
    if forbidden {
        format!(
            "forbidden: the daemon's service account may not list and watch pods in namespace {namespace}; apply deploy/k8s/rbac.yaml. The API said: {}",
            api_error.map(api_message).unwrap_or_else(|| e.to_string())
        )
    } else {
        e.to_string()
    }
}

/// Runs one Kubernetes API call within [`API_TIMEOUT`].
async fn timed<T>(
    call: impl std::future::Future<Output = kube::Result<T>>,
    doing: &str,
) -> Result<kube::Result<T>> {
    tokio::time::timeout(API_TIMEOUT, call).await.map_err(|_| {
        anyhow!(
            "{doing}: the Kubernetes API did not answer in {}s",
            API_TIMEOUT.as_secs()
        )
    })
}

impl Kubernetes {
    /// Connects with the kubeconfig (`KUBECONFIG`, `~/.kube/config`) or, inside a pod, its
    /// service account; the namespace is `--k8s-namespace`, else the configuration's.
    pub async fn new(args: &LauncherArgs) -> Result<Kubernetes> {
        let client = kube::Client::try_default().await.map_err(|e| {
            anyhow!(
                "--launcher kubernetes: no usable Kubernetes configuration (KUBECONFIG, ~/.kube/config, or the service account of the pod cnnd runs in): {e}"
            )
        })?;
        let namespace = args
            .k8s_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        Kubernetes::with_client(client, &namespace, args)
    }

    /// The backend on a given client (`new` infers one; tests and tools bring their own).
    /// Starts the pod watch, so it must be called inside a Tokio runtime.
    pub fn with_client(
        client: kube::Client,
        namespace: &str,
        args: &LauncherArgs,
    ) -> Result<Kubernetes> {
        let template = JobTemplate::from_args(args, namespace)?;
        let jobs_api = Api::namespaced(client.clone(), &template.namespace);
        let pods_api: Api<Pod> = Api::namespaced(client.clone(), &template.namespace);
        let (pods, writer) = reflector::store::<Pod>();
        let notes = Arc::new(Mutex::new(WatchNotes::default()));
        let watch_config = watcher::Config::default().labels(&template.selector());
        let stream = reflector(writer, watcher(pods_api, watch_config).default_backoff());
        let watch_task = tokio::spawn(follow_pods(
            stream,
            notes.clone(),
            template.namespace.clone(),
        ));
        Ok(Kubernetes {
            client,
            template,
            jobs_api,
            pods,
            notes,
            log_tails: Mutex::new(HashMap::new()),
            watch_task,
        })
    }

    pub fn template(&self) -> &JobTemplate {
        &self.template
    }

    /// Creates one worker Job; "k8s:NAME". A name that exists already (409) is tried once
    /// more with a new one.
    pub async fn submit(&self, job: &WorkerJob) -> Result<String> {
        let mut name = self.template.new_job_name();
        for attempt in 0..2 {
            let manifest = self.template.manifest(job, &name)?;
            let doing = format!(
                "creating the worker Job {name} in namespace {}",
                self.template.namespace
            );
            match timed(
                self.jobs_api.create(&PostParams::default(), &manifest),
                &doing,
            )
            .await?
            {
                Ok(_) => return Ok(format!("{JOB_PREFIX}{name}")),
                Err(kube::Error::Api(status)) if status.code == 409 && attempt == 0 => {
                    tracing::info!(job = name, "a Job of that name exists; trying another name");
                    name = self.template.new_job_name();
                }
                Err(e) => return Err(explain(e, &doing, "create Jobs", &self.template.namespace)),
            }
        }
        bail!("creating a worker Job: two random names in a row were taken ({name} last)")
    }

    /// Waits (a little, the first time) for the pod watch's first list.
    async fn pods_listed(&self) -> Result<()> {
        if tokio::time::timeout(FIRST_LIST_WAIT, self.pods.wait_until_ready())
            .await
            .is_ok_and(|r| r.is_ok())
        {
            return Ok(());
        }
        let why = self
            .notes
            .lock()
            .unwrap()
            .last_error
            .clone()
            .unwrap_or_else(|| format!("no answer in {}s", FIRST_LIST_WAIT.as_secs()));
        bail!(
            "watching the worker pods in namespace {}: not listed yet: {why}",
            self.template.namespace
        )
    }

    /// Every worker Job of this daemon, with its pod's state (from the watch).
    pub async fn jobs(&self) -> Result<Vec<JobReport>> {
        self.pods_listed().await?;
        let doing = format!(
            "listing the worker Jobs in namespace {}",
            self.template.namespace
        );
        let list = timed(
            self.jobs_api
                .list(&ListParams::default().labels(&self.template.selector())),
            &doing,
        )
        .await?
        .map_err(|e| explain(e, &doing, "list Jobs", &self.template.namespace))?;

        // The newest pod of each Job (backoffLimit 0: there is only one, normally).
        let mut pod_of: HashMap<String, Arc<Pod>> = HashMap::new();
        for pod in self.pods.state() {
            let Some(job) = pod.metadata.labels.as_ref().and_then(|l| l.get(LABEL_JOB)) else {
                continue;
            };
            let newer = pod_of.get(job).is_none_or(|seen| {
                pod.metadata.creation_timestamp > seen.metadata.creation_timestamp
            });
            if newer {
                pod_of.insert(job.clone(), pod.clone());
            }
        }
        let deleted = {
            let mut notes = self.notes.lock().unwrap();
            notes.deleted_pods.retain(|job, _| {
                list.items
                    .iter()
                    .any(|j| j.metadata.name.as_deref() == Some(job))
            });
            notes.deleted_pods.clone()
        };

        let mut reports = Vec::new();
        for job in &list.items {
            let Some(name) = job.metadata.name.clone() else {
                continue;
            };
            let mut pod = pod_of.get(&name).cloned();
            // The Job controller saw the pod end before the watch told us: read the pod
            // itself, so the report says how it ended (OOMKilled), not just that it did.
            if job_finished(job) && !pod.as_deref().is_some_and(pod_ended) {
                if let Some(fresh) = self.pod_of_job(&name).await {
                    pod = Some(Arc::new(fresh));
                }
            }
            let pod = pod.as_deref();
            let mut report = job_report(job, pod, deleted.get(&name).map(String::as_str));
            if report.phase == JobPhase::Pending && pod.is_none() {
                if let Some(refusal) = self.pod_creation_refused(&name).await {
                    report.reason = refusal;
                    report.stuck = true;
                }
            }
            if let Some(pod) = pod {
                if report.phase == JobPhase::Ended && report.reason.starts_with("Error") {
                    if let Some(tail) = self.log_tail(pod).await {
                        report.reason = format!("{}; its log ends: {tail}", report.reason);
                    }
                }
            }
            reports.push(report);
        }
        let live: std::collections::HashSet<&str> = pod_of
            .values()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect();
        self.log_tails
            .lock()
            .unwrap()
            .retain(|pod, _| live.contains(pod.as_str()));
        Ok(reports)
    }

    /// The newest pod of a Job, read from the API (not the watch's cache); None when it
    /// has none or the API does not answer.
    async fn pod_of_job(&self, job: &str) -> Option<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.template.namespace);
        let params = ListParams::default().labels(&format!("{LABEL_JOB}={job}"));
        match timed(pods.list(&params), "reading a worker's pod").await {
            Ok(Ok(list)) => list.items.into_iter().max_by(|a, b| {
                a.metadata
                    .creation_timestamp
                    .cmp(&b.metadata.creation_timestamp)
            }),
            Ok(Err(e)) => {
                tracing::debug!(job, "cannot read the Job's pod: {}", api_message(&e));
                None
            }
            Err(_) => None,
        }
    }

    /// Why the Job controller could not create the pod, when it said so in a Warning event
    /// (`FailedCreate`: a ResourceQuota exceeded, a Pod Security or admission refusal).
    /// None when there is no such event, or the events cannot be read.
    async fn pod_creation_refused(&self, job: &str) -> Option<String> {
        let events: Api<CoreEvent> = Api::namespaced(self.client.clone(), &self.template.namespace);
        let params = ListParams::default().fields(&format!(
            "involvedObject.kind=Job,involvedObject.name={job}"
        ));
        let list = match timed(events.list(&params), "listing a Job's events").await {
            Ok(Ok(list)) => list,
            Ok(Err(e)) => {
                tracing::debug!(job, "cannot read the Job's events: {}", api_message(&e));
                return None;
            }
            Err(e) => {
                tracing::debug!(job, "{e:#}");
                return None;
            }
        };
        list.items
            .iter()
            .filter(|e| {
                e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("FailedCreate")
            })
            .max_by_key(|e| e.metadata.creation_timestamp.clone())
            .map(|e| {
                format!(
                    "FailedCreate: {}",
                    e.message.clone().unwrap_or_default().trim()
                )
            })
    }

    /// The last non-empty line of a failed pod's log (the worker prints its fatal error
    /// last), read once per pod. None when the log cannot be read.
    async fn log_tail(&self, pod: &Pod) -> Option<String> {
        let name = pod.metadata.name.clone()?;
        if let Some(tail) = self.log_tails.lock().unwrap().get(&name) {
            return Some(tail.clone()).filter(|t| !t.is_empty());
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.template.namespace);
        let params = LogParams {
            container: Some(CONTAINER.into()),
            tail_lines: Some(5),
            ..Default::default()
        };
        let tail: String = match timed(pods.logs(&name, &params), "reading a worker's log").await {
            Ok(Ok(log)) => log
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(|l| l.chars().take(300).collect())
                .unwrap_or_default(),
            // Not cached: the log may be readable on the next look.
            Ok(Err(e)) => {
                tracing::debug!(pod = name, "cannot read the log: {}", api_message(&e));
                return None;
            }
            Err(_) => return None,
        };
        self.log_tails.lock().unwrap().insert(name, tail.clone());
        Some(tail).filter(|t| !t.is_empty())
    }

    /// Deletes a worker Job ("k8s:NAME") and, in the background, its pod: the worker gets
    /// SIGTERM and gives its trial back. A Job that is gone already is not an error.
    pub async fn cancel(&self, job: &str) -> Result<()> {
        let name = job.strip_prefix(JOB_PREFIX).unwrap_or(job);
        let doing = format!(
            "deleting the worker Job {name} in namespace {}",
            self.template.namespace
        );
        match timed(
            self.jobs_api.delete(name, &DeleteParams::background()),
            &doing,
        )
        .await?
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(explain(e, &doing, "delete Jobs", &self.template.namespace)),
        }
    }
}

/// Consumes the reflector's stream (which keeps the store current) and notes what the store
/// cannot say: the watch's errors, and pods deleted before they ended.
async fn follow_pods<S>(stream: S, notes: Arc<Mutex<WatchNotes>>, namespace: String)
where
    S: futures::Stream<Item = std::result::Result<watcher::Event<Pod>, watcher::Error>>,
{
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let mut notes = notes.lock().unwrap();
        match event {
            Ok(event) => {
                notes.last_error = None;
                if let watcher::Event::Delete(pod) = event {
                    let job = pod.metadata.labels.as_ref().and_then(|l| l.get(LABEL_JOB));
                    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                    if let (Some(job), Some(phase @ ("Pending" | "Running" | "Unknown"))) =
                        (job, phase)
                    {
                        notes
                            .deleted_pods
                            .insert(job.clone(), format!("pod deleted while {phase}"));
                    }
                }
            }
            Err(e) => {
                let text = watch_error_text(&e, &namespace);
                if notes.last_error.as_ref() != Some(&text) {
                    tracing::warn!("watching the worker pods in namespace {namespace}: {text}");
                }
                notes.last_error = Some(text);
            }
        }
    }
}

/// "Reason: message", or the reason alone.
fn reason_with_message(reason: &str, message: Option<&str>) -> String {
    match message.map(str::trim).filter(|m| !m.is_empty()) {
        Some(m) => format!("{reason}: {m}"),
        None => reason.to_string(),
    }
}

/// Where a pod is: its phase, the reason, and whether it cannot start as submitted.
pub fn pod_state(pod: &Pod) -> (JobPhase, String, bool) {
    let Some(status) = pod.status.as_ref() else {
        return (JobPhase::Pending, "pod created".into(), false);
    };
    let container_state = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == CONTAINER)
        .or_else(|| status.container_statuses.iter().flatten().next())
        .and_then(|c| c.state.as_ref());
    match status.phase.as_deref().unwrap_or("Pending") {
        "Pending" => {
            // The scheduler's word first: a pod that fits no node.
            if let Some(unschedulable) = status.conditions.iter().flatten().find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            }) {
                return (
                    JobPhase::Pending,
                    reason_with_message("Unschedulable", unschedulable.message.as_deref()),
                    true,
                );
            }
            let waiting = status
                .init_container_statuses
                .iter()
                .flatten()
                .chain(status.container_statuses.iter().flatten())
                .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
                .find(|w| w.reason.is_some());
            if let Some(w) = waiting {
                let reason = w.reason.as_deref().unwrap_or_default();
                let stuck = STUCK_WAITING.contains(&reason);
                return (
                    JobPhase::Pending,
                    reason_with_message(reason, w.message.as_deref()),
                    stuck,
                );
            }
            let scheduled = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "PodScheduled" && c.status == "True");
            let reason = if scheduled {
                "scheduled, starting"
            } else {
                "waiting to be scheduled"
            };
            (JobPhase::Pending, reason.into(), false)
        }
        "Running" => {
            if pod.metadata.deletion_timestamp.is_some() {
                (JobPhase::Running, "terminating".into(), false)
            } else {
                (JobPhase::Running, String::new(), false)
            }
        }
        "Succeeded" => (JobPhase::Ended, "Completed".into(), false),
        "Failed" => {
            // The kubelet's reason for the whole pod (Evicted, DeadlineExceeded, ...) says
            // more than its container's.
            if let Some(reason) = status.reason.as_deref().filter(|r| !r.is_empty()) {
                return (
                    JobPhase::Ended,
                    reason_with_message(reason, status.message.as_deref()),
                    false,
                );
            }
            (JobPhase::Ended, terminated_reason(container_state), false)
        }
        other => (
            JobPhase::Pending,
            format!("pod phase {other} (its node may be unreachable)"),
            false,
        ),
    }
}

/// Why a failed pod's container ended: "OOMKilled", "Error (exit code 1)", ...
fn terminated_reason(state: Option<&ContainerState>) -> String {
    let Some(t) = state.and_then(|s| s.terminated.as_ref()) else {
        return "Failed".into();
    };
    match t.reason.as_deref() {
        Some("OOMKilled") => "OOMKilled".into(),
        Some("Completed") if t.exit_code == 0 => "Completed".into(),
        reason => {
            let reason = reason.unwrap_or("Error");
            let text = format!("{reason} (exit code {})", t.exit_code);
            reason_with_message(&text, t.message.as_deref())
        }
    }
}

/// Whether the Job controller has given the Job its end (Complete or Failed).
fn job_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

/// Whether a pod has ended (Succeeded or Failed).
fn pod_ended(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// A Job and its newest pod as a report. `deleted_pod` is what the pod watch saw of a pod
/// deleted before it ended.
pub fn job_report(job: &Job, pod: Option<&Pod>, deleted_pod: Option<&str>) -> JobReport {
    let name = job.metadata.name.clone().unwrap_or_default();
    let report = |phase, reason: String, stuck| JobReport {
        job: format!("{JOB_PREFIX}{name}"),
        phase,
        reason,
        stuck,
    };
    if job.metadata.deletion_timestamp.is_some() {
        return report(JobPhase::Ended, "Job deleted".into(), false);
    }
    let status = job.status.as_ref();
    let condition = |kind: &str| {
        status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == kind && c.status == "True"))
    };
    let failed = condition("Failed");
    if let Some(pod) = pod {
        let (phase, reason, stuck) = pod_state(pod);
        // A Job failed while its pod still runs (its deadline passed): the pod is being
        // stopped, and the Job's reason is the one that counts.
        if let (Some(c), JobPhase::Pending | JobPhase::Running) = (failed, &phase) {
            return report(
                JobPhase::Ended,
                reason_with_message(
                    c.reason.as_deref().unwrap_or("Failed"),
                    c.message.as_deref(),
                ),
                false,
            );
        }
        return report(phase, reason, stuck);
    }
    if let Some(c) = failed {
        let reason = match deleted_pod {
            Some(deleted) => deleted.to_string(),
            None => reason_with_message(
                c.reason.as_deref().unwrap_or("Failed"),
                c.message.as_deref(),
            ),
        };
        return report(JobPhase::Ended, reason, false);
    }
    if condition("Complete").is_some() {
        return report(JobPhase::Ended, "Completed".into(), false);
    }
    if let Some(deleted) = deleted_pod {
        return report(
            JobPhase::Pending,
            format!("{deleted}; waiting for the Job controller"),
            false,
        );
    }
    if condition("Suspended").is_some() || job.spec.as_ref().and_then(|s| s.suspend) == Some(true) {
        return report(JobPhase::Pending, "suspended".into(), false);
    }
    report(JobPhase::Pending, "no pod yet".into(), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launcher::WorkerKind;

    fn args() -> LauncherArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            a: LauncherArgs,
        }
        Cli::parse_from(["cnnd", "--launcher=kubernetes"]).a
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "cnnd-worker-1-abcde", "labels": {LABEL_JOB: "cnnd-worker-1"}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn settings_that_would_make_invalid_objects_are_refused_naming_the_setting() {
        let mut a = args();
        a.k8s_memory = "4 GB".into();
        let e = JobTemplate::from_args(&a, "default")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--k8s-memory: '4 GB'"), "{e}");
        let mut a = args();
        a.k8s_instance = "Team_A".into();
        let e = JobTemplate::from_args(&a, "default")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--k8s-instance: 'Team_A'"), "{e}");
        let mut a = args();
        a.k8s_instance = "a".repeat(48);
        assert!(JobTemplate::from_args(&a, "default").is_err());
        a.k8s_instance = "a".repeat(47);
        let t = JobTemplate::from_args(&a, "default").unwrap();
        assert_eq!(t.new_job_name().len(), 63);
        let e = JobTemplate::from_args(&args(), "Bad Namespace")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--k8s-namespace"), "{e}");
        let mut a = args();
        a.k8s_image = "two words".into();
        assert!(JobTemplate::from_args(&a, "default")
            .unwrap_err()
            .to_string()
            .starts_with("--k8s-image"));
    }

    #[test]
    fn memory_quantities_are_checked_like_the_api_server_does() {
        for ok in ["4Gi", "512Mi", "1.5G", "2e9", "1E+3", "100", "0.5Gi"] {
            assert!(is_memory_quantity(ok), "{ok}");
        }
        for bad in ["", "Gi", "4GB", "4 Gi", "-1Gi", "0", "1.2.3Gi", "4gi", "."] {
            assert!(!is_memory_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn job_names_are_labels_with_a_random_hex_tail() {
        let t = JobTemplate::from_args(&args(), "default").unwrap();
        let (a, b) = (t.new_job_name(), t.new_job_name());
        assert_ne!(a, b);
        let tail = a.strip_prefix("cnnd-worker-").unwrap();
        assert!(
            tail.len() == 8
                && tail
                    .bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
            "{a}"
        );
    }

    #[test]
    fn the_manifest_has_no_cpu_limit_and_gpu_only_for_gpu_jobs() {
        let t = JobTemplate::from_args(&args(), "default").unwrap();
        let job = |kind, gpus| WorkerJob {
            kind,
            command: vec![
                "cnnd-worker".into(),
                "--connect".into(),
                "http://cnnd:50052".into(),
            ],
            cpus: 2,
            gpus,
        };
        let cpu = t
            .manifest(&job(WorkerKind::Cpu, 0), "cnnd-worker-0000000a")
            .unwrap();
        let c = &cpu
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        let r = c.resources.as_ref().unwrap();
        assert_eq!(r.requests.as_ref().unwrap()["cpu"].0, "2");
        assert!(!r.limits.as_ref().unwrap().contains_key("cpu"));
        assert!(!r.limits.as_ref().unwrap().contains_key("nvidia.com/gpu"));
        let gpu = t
            .manifest(&job(WorkerKind::Gpu, 2), "cnnd-worker-0000000b")
            .unwrap();
        let spec = gpu.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let limits = spec.containers[0]
            .resources
            .as_ref()
            .unwrap()
            .limits
            .clone()
            .unwrap();
        assert_eq!(limits["nvidia.com/gpu"].0, "2");
        assert_eq!(
            spec.tolerations.as_ref().unwrap()[0].key.as_deref(),
            Some("nvidia.com/gpu")
        );
        let empty = WorkerJob {
            command: vec![],
            ..job(WorkerKind::Cpu, 0)
        };
        assert!(t.manifest(&empty, "x").is_err());
    }

    #[test]
    fn pending_pods_say_why_and_whether_they_can_ever_start() {
        let (phase, reason, stuck) = pod_state(&pod(serde_json::json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}],
        })));
        assert_eq!(phase, JobPhase::Pending);
        assert_eq!(
            reason,
            "Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
        );
        assert!(stuck);

        let (_, reason, stuck) = pod_state(&pod(serde_json::json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "worker", "image": "x", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"waiting": {"reason": "CreateContainerConfigError",
                "message": "secret \"cnnd-worker-token\" not found"}}}],
        })));
        assert_eq!(
            reason,
            "CreateContainerConfigError: secret \"cnnd-worker-token\" not found"
        );
        assert!(stuck);

        let (_, reason, stuck) = pod_state(&pod(serde_json::json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "worker", "image": "x", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}],
        })));
        assert_eq!((reason.as_str(), stuck), ("ContainerCreating", false));

        let (_, reason, stuck) = pod_state(&pod(serde_json::json!({"phase": "Pending"})));
        assert_eq!((reason.as_str(), stuck), ("waiting to be scheduled", false));
    }

    #[test]
    fn failed_pods_say_how_they_ended() {
        let terminated = |reason: &str, code: i32| {
            pod(serde_json::json!({
                "phase": "Failed",
                "containerStatuses": [{"name": "worker", "image": "x", "imageID": "", "ready": false,
                    "restartCount": 0, "state": {"terminated": {"reason": reason, "exitCode": code}}}],
            }))
        };
        assert_eq!(pod_state(&terminated("OOMKilled", 137)).1, "OOMKilled");
        assert_eq!(pod_state(&terminated("Error", 1)).1, "Error (exit code 1)");
        let (phase, reason, _) = pod_state(&pod(serde_json::json!({
            "phase": "Failed", "reason": "Evicted",
            "message": "The node was low on resource: memory.",
        })));
        assert_eq!(phase, JobPhase::Ended);
        assert_eq!(reason, "Evicted: The node was low on resource: memory.");
        let (phase, reason, _) = pod_state(&pod(serde_json::json!({"phase": "Succeeded"})));
        assert_eq!((phase, reason.as_str()), (JobPhase::Ended, "Completed"));
    }

    fn job(status: serde_json::Value) -> Job {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "cnnd-worker-1"},
            "spec": {"template": {}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn jobs_without_a_pod_say_why_from_the_job() {
        let r = job_report(&job(serde_json::json!({})), None, None);
        assert_eq!(
            (r.job.as_str(), r.phase, r.reason.as_str(), r.stuck),
            ("k8s:cnnd-worker-1", JobPhase::Pending, "no pod yet", false)
        );
        let failed = job(
            serde_json::json!({"conditions": [{"type": "Failed", "status": "True",
            "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]}),
        );
        let r = job_report(&failed, None, None);
        assert_eq!(r.phase, JobPhase::Ended);
        assert_eq!(
            r.reason,
            "DeadlineExceeded: Job was active longer than specified deadline"
        );
        let r = job_report(&failed, None, Some("pod deleted while Running"));
        assert_eq!(r.reason, "pod deleted while Running");
        // A running pod of a Job that failed is being stopped: the Job has ended.
        let running = pod(serde_json::json!({"phase": "Running"}));
        assert_eq!(
            job_report(&failed, Some(&running), None).phase,
            JobPhase::Ended
        );
        let done = job(serde_json::json!({"conditions": [{"type": "Complete", "status": "True"}]}));
        assert_eq!(job_report(&done, None, None).reason, "Completed");
    }
}
