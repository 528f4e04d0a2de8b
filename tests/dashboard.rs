//! The browser dashboard (`--http-listen`): every page fetched over real HTTP (curl) from the
//! real daemon after a real sweep, the token and session rules, confinement of charts, TLS,
//! the Host check without a token, and headless Chromium logging in and rendering the sweep
//! page (tests/browser/login_and_sweep.mjs, driven over the DevTools protocol).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{make_certificates, serial, Daemon};
use serde_json::{json, Value};

/// Two trials, two epochs, a name that must come out escaped.
fn small_sweep() -> Value {
    json!({"name": "<script>alert(1)</script> & co", "dataset": "mnist",
           "space": {"kernelSize": [3, 5]},
           "fixed": {"epochs": 2, "batchSize": 64, "learningRate": 0.002, "baseFilters": 4, "units": 16,
                     "head": "gap", "trainLimit": 1000, "testLimit": 300,
                     "lrSchedule": "exponential", "lrGamma": 0.5},
           "strategy": "grid", "maxParallel": 1, "seed": 3})
}

/// An answer: status, headers (names lower-cased), body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request with curl (`extra`: its options, e.g. `-H`, `-d`, `--cacert`); no redirects
/// followed.
fn http(url: &str, extra: &[&str]) -> Reply {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "120", "--path-as-is"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// The dashboard's base URL, from `STATE_DIR/http.addr`.
fn dashboard_url(d: &Daemon) -> String {
    let file = d.state.path().join("http.addr");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = std::fs::read_to_string(&file) {
            return s.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no {}; log:\n{}",
            file.display(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every `src="..."` of a page.
fn image_links(page: &str) -> Vec<String> {
    page.split("src=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(|s| s.replace("&amp;", "&"))
        .collect()
}

fn assert_png(r: &Reply, what: &str) {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("image/png"), "{what}");
    let img = image::load_from_memory_with_format(&r.body, image::ImageFormat::Png)
        .unwrap_or_else(|e| panic!("{what} does not decode as PNG: {e}"));
    assert!(img.width() >= 300 && img.height() >= 300, "{what}");
}

#[test]
fn pages_charts_login_and_confinement_over_http() {
    let _serial = serial();
    let d = Daemon::start(1, &["--http-listen", "127.0.0.1:0"]);
    let sweep_id = d.submit(&small_sweep());
    let sweep = d.wait_for_sweep(&sweep_id, Duration::from_secs(300));
    let trial_ids: Vec<String> = sweep["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["trialId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(trial_ids.len(), 2);
    let base = dashboard_url(&d);
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let token = d.token();
    let bearer = format!("Authorization: Bearer {token}");
    let get = |path: &str| http(&format!("{base}{path}"), &["-H", &bearer]);

    // Without the token, or with a wrong one: 401 and a way to log in; nothing leaks.
    for extra in [&[][..], &["-H", "Authorization: Bearer nope"][..]] {
        for path in [
            "/",
            &format!("/sweeps/{sweep_id}"),
            &format!("/sweeps/{sweep_id}/charts/learning_curves.png"),
            "/workers",
        ] {
            let r = http(&format!("{base}{path}"), extra);
            assert_eq!(r.status, 401, "{path} {extra:?}");
            assert!(r.text().contains("href=\"/login\""), "{}", r.text());
            assert!(!r.text().contains(&sweep_id), "{path}");
        }
    }

    // The sweeps page.
    let r = get("/");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("text/html; charset=utf-8"),
        "{:?}",
        r.headers
    );
    let csp = r.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    let page = r.text();
    assert!(
        page.contains(&format!("href=\"/sweeps/{sweep_id}\"")),
        "{page}"
    );
    assert!(page.contains("finished") && page.contains("2/2"), "{page}");
    assert!(
        !page.contains("<script>"),
        "the sweep name must be escaped: {page}"
    );
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; co"),
        "{page}"
    );

    // The sweep page: trials, the varied parameter, the summary, and every chart as PNG.
    let r = get(&format!("/sweeps/{sweep_id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.text();
    for id in &trial_ids {
        assert!(
            page.contains(&format!("href=\"/trials/{id}\"")),
            "{id}: {page}"
        );
    }
    assert!(
        page.contains("kernelSize") && page.contains("Which value won"),
        "{page}"
    );
    assert!(!page.contains("<script>"), "{page}");
    let (images, samples): (Vec<String>, Vec<String>) = image_links(&page)
        .into_iter()
        .partition(|src| src.contains("/charts/"));
    assert_eq!(
        images.len(),
        7,
        "the default dashboard's 7 charts: {images:?}"
    );
    // The data set as the first trial's model saw it: digits of every class, 28x28 gray.
    assert!(
        page.contains("Training data as the model sees it"),
        "{page}"
    );
    assert_eq!(samples.len(), 10 * 6, "{samples:?}");
    for src in samples.iter().step_by(7) {
        let r = get(src);
        assert_eq!(r.header("content-type"), Some("image/png"), "{src}");
        let img = image::load_from_memory(&r.body).unwrap();
        assert_eq!((img.width(), img.height()), (28, 28), "{src}");
    }
    assert!(
        images.iter().any(|i| i.ends_with("/accuracy_curves.png")),
        "{images:?}"
    );
    for src in &images {
        assert_png(&get(src), src);
    }
    // Another dashboard by name; an unknown or malformed one is a clear error.
    let r = get(&format!("/sweeps/{sweep_id}?dashboard=compare"));
    assert_eq!(r.status, 200);
    let compare: Vec<String> = image_links(&r.text())
        .into_iter()
        .filter(|src| src.contains("/charts/"))
        .collect();
    assert!(
        compare.iter().all(|s| s.ends_with("?dashboard=compare")),
        "{compare:?}"
    );
    assert_png(&get(&compare[0]), &compare[0]);
    let r = get(&format!("/sweeps/{sweep_id}?dashboard=nope"));
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("no dashboard 'nope'"), "{}", r.text());
    let r = get(&format!("/sweeps/{sweep_id}?dashboard=..%2Fx"));
    assert_eq!(r.status, 400, "{}", r.text());

    // A trial page: status, parameters, epochs, provenance, and its curves.
    let r = get(&format!("/trials/{}", trial_ids[0]));
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.text();
    for needle in [
        "succeeded",
        "kernelSize",
        "Provenance",
        "Epochs",
        "test accuracy",
    ] {
        assert!(page.contains(needle), "{needle}: {page}");
    }
    let images = image_links(&page);
    let charts: Vec<&String> = images.iter().filter(|s| s.contains("/charts/")).collect();
    let wrong: Vec<&String> = images
        .iter()
        .filter(|s| s.contains("/misclassified/"))
        .collect();
    let samples = images.iter().filter(|s| s.contains("/samples/")).count();
    assert_eq!(charts.len(), 2, "{images:?}");
    assert_eq!(
        charts.len() + wrong.len() + samples,
        images.len(),
        "{images:?}"
    );
    for src in &charts {
        assert_png(&get(src), src);
    }

    // The test report: the confusion matrix counts every test example once, its diagonal is
    // the test accuracy, and the misclassified images are wrong answers as the model saw
    // them (28x28 gray).
    let trial = d.cnnctl_json(&["trial", &trial_ids[0]]);
    let report = &trial["testReport"];
    let confusion: Vec<Vec<u64>> = serde_json::from_value(report["confusion"].clone()).unwrap();
    assert_eq!(confusion.len(), 10, "{report}");
    assert!(confusion.iter().all(|row| row.len() == 10));
    let total: u64 = confusion.iter().flatten().sum();
    assert_eq!(total, trial["testExamples"].as_u64().unwrap(), "{report}");
    let right: u64 = (0..10).map(|i| confusion[i][i]).sum();
    let accuracy = trial["testAccuracy"].as_f64().unwrap();
    assert!(
        (right as f64 / total as f64 - accuracy).abs() < 1e-9,
        "{report}"
    );
    assert_eq!(report["classNames"][3], "3");
    let misclassified = report["misclassified"].as_array().unwrap();
    assert_eq!(misclassified.len(), ((total - right) as usize).min(16));
    for m in misclassified {
        assert_ne!(m["truth"], m["predicted"], "{m}");
    }
    for needle in [
        "Confusion matrix",
        "Precision and recall per class",
        "Misclassified test images",
    ] {
        assert!(page.contains(needle), "{needle}");
    }
    assert_eq!(wrong.len(), misclassified.len(), "{images:?}");
    for src in &wrong {
        let r = get(src);
        assert_eq!(r.header("content-type"), Some("image/png"), "{src}");
        let img = image::load_from_memory(&r.body).unwrap();
        assert_eq!((img.width(), img.height()), (28, 28), "{src}");
    }
    let text = String::from_utf8_lossy(&d.cnnctl(&["trial", &trial_ids[0]]).stdout).into_owned();
    assert!(
        text.contains("true \\ predicted") && text.contains("precision"),
        "{text}"
    );

    // Every epoch's learning rate, as the schedule set it: 0.002, then halved.
    let rates: Vec<f64> = trial["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["learningRate"].as_f64().unwrap())
        .collect();
    assert_eq!(rates, [0.002, 0.001], "{trial}");
    assert!(page.contains("<th>lr</th>") && page.contains("1.00e-3"));

    // The model summary: computed by the daemon from the hyperparameters, it adds up to the
    // parameters the worker counted on the model it built, and ends in ten logits.
    let layers = trial["modelSummary"].as_array().unwrap();
    assert_eq!(layers[0]["outputShape"], json!([1, 28, 28]), "{layers:?}");
    let last = layers.last().unwrap();
    assert_eq!(
        (&last["name"], &last["outputShape"]),
        (&json!("out"), &json!([10]))
    );
    let summed: u64 = layers
        .iter()
        .map(|l| l["parameters"].as_u64().unwrap())
        .sum();
    assert_eq!(
        summed,
        trial["parameterCount"].as_u64().unwrap(),
        "{layers:?}"
    );
    // Batch norm's moving statistics: non-trainable, one mean and one variance per channel,
    // as many as its trained scale and shift; Keras's total counts them.
    let non_trainable: u64 = layers
        .iter()
        .map(|l| l["nonTrainableParameters"].as_u64().unwrap())
        .sum();
    let batch_norm: u64 = layers
        .iter()
        .filter(|l| l["kind"] == "BatchNorm2d")
        .map(|l| l["parameters"].as_u64().unwrap())
        .sum();
    assert!(batch_norm > 0 && non_trainable == batch_norm, "{layers:?}");
    assert!(
        text.contains("output shape") && text.contains("block0.conv"),
        "{text}"
    );
    let keras_line = text
        .lines()
        .find(|l| l.contains("Keras total"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        keras_line.contains(&cnnd_client::sweep_view::count(summed + non_trainable)),
        "{keras_line}"
    );
    assert!(page.contains("<h2>Model</h2>") && page.contains("block0.conv"));

    // The data preview: the first training images of every class, of that class; no
    // augmentation in this sweep, so no draws.
    let preview = &trial["dataPreview"];
    let shown: Vec<u64> = preview["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["class"].as_u64().unwrap())
        .collect();
    assert_eq!(shown.len(), samples, "{preview}");
    assert_eq!(shown, (0..10).flat_map(|c| [c; 6]).collect::<Vec<u64>>());
    assert_eq!(preview["augmented"].as_array().unwrap().len(), 0);
    let out = d.state.path().join("trial-images");
    let written = d.cnnctl_json(&["trial", &trial_ids[0], "--images", out.to_str().unwrap()]);
    let files = written["imagesWritten"].as_array().unwrap();
    assert_eq!(files.len(), samples + misclassified.len(), "{written}");
    for f in files {
        let img = image::open(f.as_str().unwrap()).unwrap();
        assert_eq!((img.width(), img.height()), (28, 28), "{f}");
    }

    // Workers and queue.
    let r = get("/workers");
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("cpu-0") && r.text().contains("trials queued"),
        "{}",
        r.text()
    );

    // Unknown things are 404s with a message, not 500s.
    for path in ["/sweeps/sw-nope", "/trials/t-nope", "/nothing-here"] {
        assert_eq!(get(path).status, 404, "{path}");
    }
    // A trial's images are picked by position from a known set, nothing else.
    for file in [
        "nope/0.png",
        "samples/999.png",
        "samples/..%2F0.png",
        "augmented/0.png",
    ] {
        let path = format!("/trials/{}/{file}", trial_ids[0]);
        assert_eq!(get(&path).status, 404, "{path}");
    }

    // Confinement: charts are served by name from what was rendered, never by path.
    for path in [
        format!("/sweeps/{sweep_id}/charts/..%2F..%2Fcnnd.sqlite"),
        format!("/sweeps/{sweep_id}/charts/../../token"),
        format!("/sweeps/{sweep_id}/charts/%2Fetc%2Fpasswd"),
        format!("/sweeps/{sweep_id}/charts/cnnd.sqlite"),
        format!("/trials/{}/charts/..%2F..%2F..%2Ftoken", trial_ids[0]),
        "/static/../token".to_string(),
        "/static/..%2Ftoken".to_string(),
    ] {
        let r = get(&path);
        assert!(r.status == 404 || r.status == 400, "{path}: {}", r.status);
        assert!(!r.text().contains(&token), "{path}");
        assert!(!r.body.starts_with(b"SQLite"), "{path}");
    }

    // Login: the Origin is checked, the token must match, the cookie holds a session id.
    let login = format!("{base}/login");
    let form = format!("token={token}");
    let r = http(&login, &["-d", &form]);
    assert_eq!(r.status, 403, "no Origin: {}", r.text());
    let r = http(&login, &["-d", &form, "-H", "Origin: http://evil.example"]);
    assert_eq!(r.status, 403, "foreign Origin: {}", r.text());
    let origin = format!("Origin: {base}");
    let r = http(&login, &["-d", "token=wrong", "-H", &origin]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.header("set-cookie").is_none());
    let r = http(&login, &["-d", &form, "-H", &origin]);
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("/"));
    let cookie = r
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    for part in ["cnnd_session=", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    assert!(
        !cookie.contains(&token),
        "the cookie must not hold the token: {cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let with_cookie = |path: &str| {
        http(
            &format!("{base}{path}"),
            &["-H", &format!("Cookie: {session}")],
        )
    };
    let r = with_cookie(&format!("/sweeps/{sweep_id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("Log out"));
    assert_eq!(with_cookie("/").status, 200);
    // A made-up session is refused; logging out ends the real one.
    assert_eq!(
        http(&format!("{base}/"), &["-H", "Cookie: cnnd_session=0123"]).status,
        401
    );
    let r = http(
        &format!("{base}/logout"),
        &[
            "-X",
            "POST",
            "-H",
            &format!("Cookie: {session}"),
            "-H",
            &origin,
        ],
    );
    assert_eq!(r.status, 303, "{}", r.text());
    assert!(r
        .header("set-cookie")
        .unwrap_or_default()
        .contains("Max-Age=0"));
    assert_eq!(with_cookie("/").status, 401);

    // Nothing recorded was lost along the way.
    let after = d.cnnctl_json(&["sweep", &sweep_id]);
    assert_eq!(after["trials"].as_array().unwrap().len(), 2);
}

#[test]
fn over_tls_the_cookie_is_secure_and_without_a_token_the_host_is_checked() {
    let _serial = serial();
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let (cert, key, ca) = (
        certs.path().join("server.pem"),
        certs.path().join("server.key"),
        certs.path().join("ca.pem"),
    );
    let d = Daemon::start_tls(
        &common::data_dir(),
        0,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--http-listen",
            "127.0.0.1:0",
        ],
        &ca,
    );
    let base = dashboard_url(&d);
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    let ca_arg = ca.to_str().unwrap();
    let token = d.token();
    let r = http(
        &format!("{base}/workers"),
        &[
            "--cacert",
            ca_arg,
            "-H",
            &format!("Authorization: Bearer {token}"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http(
        &format!("{base}/login"),
        &[
            "--cacert",
            ca_arg,
            "-d",
            &format!("token={token}"),
            "-H",
            &format!("Origin: {base}"),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.text());
    assert!(r
        .header("set-cookie")
        .unwrap_or_default()
        .contains("; Secure"));
    // A client that does not trust the CA refuses the server.
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(certs.path().join("other-ca.pem"))
        .arg(format!("{base}/login"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    drop(d);

    // Without a token (loopback only): answered only when addressed to a loopback name.
    let d = Daemon::start(0, &["--insecure-no-auth", "--http-listen", "127.0.0.1:0"]);
    let base = dashboard_url(&d);
    let port = base.rsplit(':').next().unwrap().to_string();
    let r = http(&format!("{base}/"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http(
        &format!("{base}/"),
        &["-H", &format!("Host: rebound.example:{port}")],
    );
    assert_eq!(r.status, 421, "{}", r.text());
    let r = http(
        &format!("{base}/"),
        &["-H", &format!("Host: localhost:{port}")],
    );
    assert_eq!(r.status, 200);
    drop(d);

    // A dashboard on a non-loopback address needs TLS (or the explicit opt-out).
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cnnd"))
        .args(["--http-listen", "0.0.0.0:0", "--listen", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(state.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cnnd accepted a plaintext dashboard on 0.0.0.0");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--http-listen 0.0.0.0:0 is not a loopback address"),
        "{err}"
    );
}

/// Where Chromium is: `CNND_CHROMIUM`, or Debian's `chromium`.
fn chromium() -> PathBuf {
    let path = std::env::var_os("CNND_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "{} not found: install Debian's chromium (apt-get install chromium; .ci/run does) or set CNND_CHROMIUM",
        path.display()
    );
    path
}

#[test]
fn headless_chromium_logs_in_and_renders_the_sweep_page() {
    let _serial = serial();
    let browser = chromium();
    let d = Daemon::start(1, &["--http-listen", "127.0.0.1:0"]);
    let sweep_id = d.submit(&small_sweep());
    d.wait_for_sweep(&sweep_id, Duration::from_secs(300));
    let base = dashboard_url(&d);
    // The screenshot and DOM are kept as artifacts under target/ (CI keeps that folder).
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&artifacts).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/login_and_sweep.mjs");
    let out = Command::new("node")
        .arg("--experimental-websocket")
        .arg(&script)
        .arg(&browser)
        .arg(&base)
        .arg(d.token())
        .arg(&sweep_id)
        .arg(&artifacts)
        .output()
        .expect("node runs (Node.js 20 or newer)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();

    // The login took the token typed into the form and landed on the sweeps page.
    assert_eq!(seen["afterLogin"]["url"], format!("{base}/"), "{seen}");
    assert_eq!(seen["afterLogin"]["title"], "Sweeps · cnnd", "{seen}");
    let cookies = seen["cookies"].as_array().unwrap();
    let session = cookies
        .iter()
        .find(|c| c["name"] == "cnnd_session")
        .unwrap_or_else(|| panic!("{seen}"));
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["sameSite"], "Strict");
    assert_ne!(session["value"], d.token().as_str());

    // The sweep page as rendered: the escaped name as text, the trials, every chart loaded.
    let text = seen["text"].as_str().unwrap();
    assert!(
        text.contains("Sweep <script>alert(1)</script> & co"),
        "{text}"
    );
    assert!(
        text.contains("Which value won") && text.contains("kernelSize"),
        "{text}"
    );
    let images = seen["images"].as_array().unwrap();
    let (charts, samples): (Vec<&Value>, Vec<&Value>) = images
        .iter()
        .partition(|i| i["src"].as_str().unwrap().contains("/charts/"));
    assert_eq!(charts.len(), 7, "{images:?}");
    for img in charts {
        assert!(img["width"].as_u64().unwrap() >= 300, "not loaded: {img}");
    }
    // The training samples as the model saw them, 28x28 each.
    assert_eq!(samples.len(), 60, "{images:?}");
    for img in samples {
        assert_eq!(img["width"], 28, "not loaded: {img}");
    }
    let shot = std::fs::read(artifacts.join("sweep-page.png")).unwrap();
    let shot = image::load_from_memory(&shot).unwrap();
    assert_eq!(shot.width(), 1280);
}
