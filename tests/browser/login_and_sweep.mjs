// A real browser through the dashboard: headless Chromium, driven over the DevTools protocol
// (Node's built-in WebSocket; no npm packages), types the API token into the login page and
// presses Enter like a user, then opens a sweep's page, waits for its charts and keeps a
// screenshot. Prints one JSON object for tests/dashboard.rs to check.
//
//   node --experimental-websocket login_and_sweep.mjs CHROMIUM BASE_URL TOKEN SWEEP_ID OUT_DIR

import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync, existsSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [chromium, base, token, sweepId, outDir] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), "cnnd-chromium-"));
const browser = spawn(chromium, [
  "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
  "--disable-extensions", "--remote-debugging-port=0", `--user-data-dir=${profile}`,
  "--window-size=1280,900", "about:blank",
], { stdio: ["ignore", "ignore", "pipe"] });
let browserLog = "";
browser.stderr.on("data", (d) => { browserLog += d; });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Ends Chromium, then removes its profile (it writes there until it exits).
async function cleanUp() {
  const exited = new Promise((resolve) => browser.once("exit", resolve));
  browser.kill("SIGKILL");
  await Promise.race([exited, sleep(5000)]);
  try { rmSync(profile, { recursive: true, force: true }); } catch { /* left in the temp folder */ }
}
async function fail(message) {
  console.log(JSON.stringify({ error: message, browserLog: browserLog.slice(-2000) }));
  await cleanUp();
  process.exit(1);
}
setTimeout(() => fail("timed out after 90 s"), 90_000).unref();

// Chromium writes its DevTools port and path into the profile once it listens.
const portFile = join(profile, "DevToolsActivePort");
for (let i = 0; i < 300 && !existsSync(portFile); i++) await sleep(100);
if (!existsSync(portFile)) await fail("chromium did not open its DevTools port");
const [port, path] = readFileSync(portFile, "utf8").trim().split("\n");

const ws = new WebSocket(`ws://127.0.0.1:${port}${path}`);
await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
let nextId = 1;
const pending = new Map();
const waiters = [];
ws.onmessage = (m) => {
  const msg = JSON.parse(m.data);
  if (msg.id && pending.has(msg.id)) {
    const { resolve, reject } = pending.get(msg.id);
    pending.delete(msg.id);
    msg.error ? reject(new Error(JSON.stringify(msg.error))) : resolve(msg.result);
  } else if (msg.method) {
    for (const w of waiters.splice(0)) w(msg); // one-shot listeners
  }
};
const send = (method, params = {}, sessionId) => new Promise((resolve, reject) => {
  const id = nextId++;
  pending.set(id, { resolve, reject });
  ws.send(JSON.stringify({ id, method, params, sessionId }));
});
const event = (name) => new Promise((resolve) => {
  const listen = (msg) => (msg.method === name ? resolve(msg.params) : waiters.push(listen));
  waiters.push(listen);
});

const { targetId } = await send("Target.createTarget", { url: "about:blank" });
const { sessionId } = await send("Target.attachToTarget", { targetId, flatten: true });
const page = (method, params) => send(method, params, sessionId);
await page("Page.enable");
await page("Network.enable");
const evaluate = async (expression) =>
  (await page("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true })).result.value;
const open = async (url) => {
  const loaded = event("Page.loadEventFired");
  await page("Page.navigate", { url });
  await loaded;
};

// 1. The login page, as a user: focus the field, type the token, press Enter.
await open(`${base}/login`);
await evaluate("document.querySelector('#token').focus()");
await page("Input.insertText", { text: token });
const loggedIn = event("Page.loadEventFired");
for (const type of ["keyDown", "keyUp"]) {
  await page("Input.dispatchKeyEvent", {
    type, key: "Enter", code: "Enter", windowsVirtualKeyCode: 13, text: type === "keyDown" ? "\r" : undefined,
  });
}
await loggedIn;
const afterLogin = { url: await evaluate("location.href"), title: await evaluate("document.title") };
const { cookies } = await page("Network.getCookies", { urls: [base] });

// 2. The sweep's page: wait until every image has loaded (or failed), then look.
await open(`${base}/sweeps/${sweepId}`);
for (let i = 0; i < 200; i++) {
  if (await evaluate("Array.from(document.images).every((i) => i.complete)")) break;
  await sleep(100);
}
const images = await evaluate(
  "Array.from(document.images).map((i) => ({ src: i.getAttribute('src'), width: i.naturalWidth, height: i.naturalHeight }))");
const text = await evaluate("document.body.innerText");
const html = await evaluate("document.documentElement.outerHTML");
const height = await evaluate("Math.ceil(document.documentElement.scrollHeight)");
await page("Emulation.setDeviceMetricsOverride", { width: 1280, height: Math.min(height, 4000), deviceScaleFactor: 1, mobile: false });
const shot = await page("Page.captureScreenshot", { format: "png" });
writeFileSync(join(outDir, "sweep-page.png"), Buffer.from(shot.data, "base64"));
writeFileSync(join(outDir, "sweep-page.html"), html);

console.log(JSON.stringify({
  afterLogin,
  cookies: cookies.map((c) => ({ name: c.name, value: c.value, httpOnly: c.httpOnly, sameSite: c.sameSite, secure: c.secure })),
  images, text,
}));
await send("Browser.close").catch(() => {});
await cleanUp();
process.exit(0);
