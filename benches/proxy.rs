//! The measuring stick for tokengate's overhead (issue 6). Run it with
//! `bench/run.sh` (full, about 10 minutes) or `bench/run.sh --smoke` (seconds).
//!
//! Scenarios, side by side in one run on this machine, loopback only:
//! - A: load -> fake upstream (a fast OpenAI-compatible server in this process);
//! - O: load -> bare hop -> fake upstream: the least any proxy built on tokengate's
//!   HTTP stack adds, an actix-web server forwarding with reqwest as tokengate does,
//!   with no metering (this harness, started again as a process of its own);
//! - B: load -> tokengate (release binary, full metering) -> fake upstream, on SQLite
//!   and, with `TOKENGATE_BENCH_PG_URL`, on PostgreSQL;
//! - C: load -> LiteLLM -> fake upstream, and D: load -> tokengate -> LiteLLM -> fake
//!   upstream, with `TOKENGATE_BENCH_LITELLM` (the `litellm` executable).
//!
//! Requests look like LibreChat's: a streamed chat carrying a conversation of about
//! 4,000 tokens, and a small non-streamed title request. Every run is bounded in time.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use actix_web::{App, HttpResponse, HttpServer, web};
use bytes::Bytes;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENT_KEY: &str = "tg-bench-client-key-0123456789";
const PROMPT_TOKENS: i64 = 4000;
const COMPLETION_TOKENS: i64 = 20;

// ---------------------------------------------------------------- fake upstream

#[derive(Clone, Copy)]
struct StreamShape {
    chunks: usize,
    gap: Duration,
}

fn fake_upstream(shape: StreamShape) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake upstream");
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    std::thread::spawn(move || {
        let sys = actix_web::rt::System::new();
        sys.block_on(async move {
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(web::PayloadConfig::new(64 << 20))
                    .app_data(web::Data::new(shape))
                    .route("/v1/chat/completions", web::post().to(chat))
                    .route("/v1/models", web::get().to(models))
            })
            .workers(1)
            .backlog(4096)
            .max_connections(100_000)
            .listen(listener)
            .expect("listen")
            .run();
            let _ = server.await;
        });
    });
    port
}

async fn models() -> HttpResponse {
    HttpResponse::Ok()
        .json(json!({"object": "list", "data": [{"id": "bench-model", "object": "model"}]}))
}

async fn chat(shape: web::Data<StreamShape>, body: Bytes) -> HttpResponse {
    // Only `stream` matters; the fake does not parse the conversation.
    let stream = memchr_find(&body, b"\"stream\":true");
    let usage = json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS});
    if !stream {
        return HttpResponse::Ok().json(json!({
            "id": "bench-1", "object": "chat.completion", "created": 1_700_000_000, "model": "bench-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Um título curto"}, "finish_reason": "stop"}],
            "usage": usage,
        }));
    }
    let shape = **shape;
    let events = async_stream(shape, usage);
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(events)
}

fn async_stream(
    shape: StreamShape,
    usage: Value,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(0usize, move |i| {
        let usage = usage.clone();
        async move {
            if i > shape.chunks + 1 {
                return None;
            }
            if i > 0 && !shape.gap.is_zero() && i <= shape.chunks {
                tokio::time::sleep(shape.gap).await;
            }
            let event = if i < shape.chunks {
                format!(
                    "data: {}\n\n",
                    json!({"id": "bench-1", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "bench-model",
                           "choices": [{"index": 0, "delta": {"content": "tok "}}]})
                )
            } else if i == shape.chunks {
                format!(
                    "data: {}\n\n",
                    json!({"id": "bench-1", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "bench-model",
                           "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage})
                )
            } else {
                "data: [DONE]\n\n".to_owned()
            };
            Some((Ok(Bytes::from(event)), i + 1))
        }
    })
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------- bare hop

/// Serves the bare hop on `port` in front of `upstream` (`http://host:port/v1`) until
/// killed: tokengate's HTTP stack and settings (actix-web with its default workers,
/// TCP_NODELAY both ways, one reqwest client per worker) with nothing in between.
fn bare_hop(port: u16, upstream: String) -> std::io::Result<()> {
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            let client = reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(60))
                .tcp_nodelay(true)
                .build()
                .expect("client");
            App::new()
                .app_data(web::PayloadConfig::new(64 << 20))
                .app_data(web::Data::new((client, upstream.clone())))
                .default_service(web::to(forward))
        })
        .on_connect(|conn, _| {
            if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                let _ = tcp.set_nodelay(true);
            }
        })
        .bind(("127.0.0.1", port))?
        .run()
        .await
    })
}

async fn forward(
    req: actix_web::HttpRequest,
    body: Bytes,
    to: web::Data<(reqwest::Client, String)>,
) -> HttpResponse {
    let (client, upstream) = &**to;
    let path = req.path().strip_prefix("/v1").unwrap_or(req.path());
    // actix-web and reqwest use different majors of the `http` crate.
    let Ok(method) = reqwest::Method::from_bytes(req.method().as_str().as_bytes()) else {
        return HttpResponse::MethodNotAllowed().finish();
    };
    let mut out = client.request(method, format!("{upstream}{path}"));
    if let Some(ct) = req.headers().get("content-type") {
        out = out.header("content-type", ct.as_bytes());
    }
    let Ok(res) = out.body(body).send().await else {
        return HttpResponse::BadGateway().finish();
    };
    let Ok(status) = actix_web::http::StatusCode::from_u16(res.status().as_u16()) else {
        return HttpResponse::BadGateway().finish();
    };
    let mut answer = HttpResponse::build(status);
    if let Some(ct) = res.headers().get("content-type") {
        answer.insert_header(("content-type", ct.as_bytes()));
    }
    answer.streaming(futures_util::TryStreamExt::map_err(
        res.bytes_stream(),
        std::io::Error::other,
    ))
}

async fn start_bare_hop(upstream: &str) -> Proc {
    let port = free_port();
    let child = Command::new(std::env::current_exe().expect("this harness's path"))
        .args(["--bare-hop", &port.to_string(), upstream])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the bare hop");
    let p = Proc {
        child,
        port,
        db_url: None,
        _dir: None,
    };
    wait_ready(&format!("http://127.0.0.1:{port}/v1/models")).await;
    p
}

// ---------------------------------------------------------------- requests

/// A LibreChat-shaped streamed chat: system prompt plus a history of about 4,000 tokens.
fn chat_body() -> String {
    let mut messages = vec![
        json!({"role": "system", "content": "Você é um assistente prestativo da IA SOLARIS. Responda em português do Brasil."}),
    ];
    let turn = "Explique com detalhes como funciona a energia solar fotovoltaica, incluindo painéis, inversores e baterias, e dê exemplos práticos para uma casa em São Paulo. ";
    for i in 0..40 {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(json!({"role": role, "content": turn.repeat(3)}));
    }
    json!({"model": "bench-model", "stream": true, "messages": messages, "user": "65f1c0ffee0000000000beef"}).to_string()
}

/// LibreChat's title request: small and not streamed.
fn title_body() -> String {
    json!({"model": "bench-model", "stream": false, "max_tokens": 16,
           "messages": [{"role": "user", "content": "Escreva um título curto para: energia solar em casa"}]})
    .to_string()
}

// ---------------------------------------------------------------- load

#[derive(Default, Clone)]
struct Stats {
    ok: usize,
    errors: usize,
    latencies: Vec<Duration>,
    ttfb: Vec<Duration>,
    /// tokengate's own phases of each answer, from its `Server-Timing` header.
    phases: Vec<Phases>,
    elapsed: Duration,
    /// CPU time the process in the middle (tokengate, or LiteLLM in C) spent per
    /// successful request, user plus system; None for the direct scenario.
    cpu_per_request: Option<Duration>,
    /// The p50 latency of each round of a fixed rate taken in turns (`take_turns`).
    round_p50s: Vec<Duration>,
}

impl Stats {
    fn add(&mut self, answer: Option<Answer>) {
        let Some(a) = answer else {
            self.errors += 1;
            return;
        };
        self.ok += 1;
        self.latencies.push(a.latency);
        self.ttfb.extend(a.ttfb);
        self.phases.extend(a.phases);
    }
    fn merge(&mut self, other: Stats) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.latencies.extend(other.latencies);
        self.ttfb.extend(other.ttfb);
        self.phases.extend(other.phases);
    }
    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

#[derive(Clone)]
struct Target {
    url: String,
    metered: bool,
    /// Bearer key for an unmetered target (LiteLLM's master key).
    key: Option<&'static str>,
}

/// The fixed rate for scenarios with LiteLLM in the path.
const LITELLM_RATE: u32 = 10;
const LITELLM_KEY: &str = "sk-bench-litellm-master-key-0123456789";

fn client(conns: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(conns)
        .tcp_nodelay(true)
        .build()
        .expect("client")
}

/// tokengate's parse, reserve and upstream times for one answer.
type Phases = [Duration; 3];
const PHASE_NAMES: [&str; 3] = ["parse", "reserve", "upstream"];

struct Answer {
    latency: Duration,
    /// Time to the first `data:` event, for streams.
    ttfb: Option<Duration>,
    phases: Option<Phases>,
}

/// Reads `parse;dur=0.084, reserve;dur=0.173, upstream;dur=0.263` (milliseconds).
fn phases_of(res: &reqwest::Response) -> Option<Phases> {
    let header = res.headers().get("server-timing")?.to_str().ok()?;
    let mut out = [Duration::ZERO; 3];
    for (slot, name) in out.iter_mut().zip(PHASE_NAMES) {
        let ms: f64 = header
            .split(',')
            .find_map(|m| m.trim().strip_prefix(name)?.strip_prefix(";dur="))?
            .parse()
            .ok()?;
        *slot = Duration::from_secs_f64(ms / 1000.0);
    }
    Some(out)
}

/// Sends one request and reads the whole answer; None on an error.
async fn one(
    client: &reqwest::Client,
    t: &Target,
    body: &'static str,
    user: &str,
    started: Instant,
) -> Option<Answer> {
    let mut req = client
        .post(&t.url)
        .header("content-type", "application/json")
        .body(body);
    if t.metered {
        req = req
            .bearer_auth(CLIENT_KEY)
            .header("x-librechat-user-id", user);
    } else if let Some(key) = t.key {
        req = req.bearer_auth(key);
    }
    let mut res = req.send().await.ok()?;
    if !res.status().is_success() {
        return None;
    }
    let phases = phases_of(&res);
    let mut ttfb = None;
    while let Some(chunk) = res.chunk().await.ok()? {
        if ttfb.is_none() && memchr_find(&chunk, b"data:") {
            ttfb = Some(started.elapsed());
        }
    }
    Some(Answer {
        latency: started.elapsed(),
        ttfb,
        phases,
    })
}

/// Closed loop: `conns` workers send back to back for `dur`.
async fn saturate(
    t: &Target,
    body: &'static str,
    conns: usize,
    dur: Duration,
    users: usize,
) -> Stats {
    let client = client(conns);
    let deadline = Instant::now() + dur;
    let begin = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..conns {
        let (client, t) = (client.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = Stats::default();
            let mut n = w;
            while Instant::now() < deadline {
                let user = format!("user-{}", n % users);
                n += conns;
                s.add(one(&client, &t, body, &user, Instant::now()).await);
            }
            s
        }));
    }
    let mut total = Stats::default();
    for task in tasks {
        if let Ok(s) = task.await {
            total.merge(s);
        }
    }
    total.elapsed = begin.elapsed();
    total
}

/// Open loop at `rate` requests/s, latency measured from the intended send time (no
/// coordinated omission), over at most `conns` connections.
async fn fixed_rate(
    t: &Target,
    client: &reqwest::Client,
    body: &'static str,
    rate: u32,
    dur: Duration,
    conns: usize,
    users: usize,
) -> Stats {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let begin = Instant::now();
    let total_requests = (dur.as_secs_f64() * f64::from(rate)) as usize;
    let gate = Arc::new(tokio::sync::Semaphore::new(conns));
    let mut tasks = Vec::with_capacity(total_requests);
    for i in 0..total_requests {
        let intended = begin + period * i as u32;
        tokio::time::sleep_until(tokio::time::Instant::from_std(intended)).await;
        let (client, t, gate) = (client.clone(), t.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            one(&client, &t, body, &format!("user-{}", i % users), intended).await
        }));
    }
    let mut s = Stats::default();
    for task in tasks {
        s.add(task.await.ok().flatten());
    }
    s.elapsed = begin.elapsed();
    s
}

/// Rounds each fixed rate is cut into, the scenarios taking turns (A B, B A, A B,
/// B A), so that the shared VM's drift over a minute falls on all of them alike
/// rather than on whichever ran later.
const ROUNDS: u32 = 4;

/// One scenario's share of an interleaved fixed-rate measure.
struct Interleaved<'a> {
    target: &'a Target,
    proc_: Option<&'a Proc>,
    /// Kept across rounds, so its connections are opened once.
    client: reqwest::Client,
    stats: Stats,
    /// CPU time of the process in the middle, over its rounds.
    cpu: Duration,
    /// tokengate's /metrics phase totals before the first round.
    before: Vec<(String, f64, f64)>,
    /// SQLite's write paths before the first round (`sqlite_writes`).
    writes_before: Option<[f64; 4]>,
}

async fn take_turns(runs: &mut [Interleaved<'_>], body: &'static str, rate: u32, st: &Settings) {
    let slot = st.secs / ROUNDS;
    for round in 0..ROUNDS {
        let mut order: Vec<usize> = (0..runs.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let run = &mut runs[i];
            // Connections closed while the others had their turn are opened again
            // before the clock starts, not by the first measured requests.
            warm(run.target, &run.client, st.conns).await;
            let cpu = run.proc_.map(Proc::cpu_time);
            let s = fixed_rate(run.target, &run.client, body, rate, slot, st.conns, 1000).await;
            if let (Some(p), Some(before)) = (run.proc_, cpu) {
                run.cpu += p.cpu_time().saturating_sub(before);
            }
            run.stats.elapsed += s.elapsed;
            run.stats
                .round_p50s
                .push(pct(&mut s.latencies.clone(), 0.5));
            run.stats.merge(s);
        }
    }
}

/// `conns` concurrent requests to a cheap route of the target's server.
async fn warm(t: &Target, client: &reqwest::Client, conns: usize) {
    let base = t.url.split("/v1/").next().unwrap_or(&t.url);
    let url = if t.metered {
        format!("{base}/readyz")
    } else {
        format!("{base}/v1/models")
    };
    let gets = (0..conns).map(|_| client.get(&url).send());
    let _ = futures_util::future::join_all(gets).await;
}

// ---------------------------------------------------------------- processes

struct Proc {
    child: Child,
    port: u16,
    /// tokengate's database, to grant credits from the command line.
    db_url: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process's resident memory, in KiB.
#[derive(Clone, Copy)]
struct Memory {
    rss_kib: u64,
    anon_kib: u64,
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} MiB ({} MiB private)",
            self.rss_kib / 1024,
            self.anon_kib / 1024
        )
    }
}

impl Proc {
    /// User plus system CPU time of the process, all threads, from /proc/PID/stat
    /// (in USER_HZ ticks, which Linux fixes at 100 per second for user space).
    fn cpu_time(&self) -> Duration {
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .ok()
            .and_then(|s| {
                // The command name may hold spaces; the fields after it are plain.
                let rest = s.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
                Some(Duration::from_millis(ticks * 10))
            })
            .unwrap_or_default()
    }

    /// Resident memory from /proc/PID/status: all of it, and the private part.
    ///
    /// RSS also counts the pages of the binary and its libraries that are mapped from
    /// the page cache (about 20 MiB, shared and dropped first under memory pressure);
    /// `RssAnon` is the memory the process itself allocated.
    fn memory(&self) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Memory {
            rss_kib: field("VmRSS:"),
            anon_kib: field("RssAnon:"),
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

async fn wait_ready(url: &str) {
    let client = reqwest::Client::new();
    // LiteLLM's first start on a cold machine takes a while.
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline {
        if client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not become ready");
}

/// The release binary, or `TOKENGATE_BENCH_BIN` (the smoke run in the test command
/// uses the debug build it already has: its figures only show the harness works).
fn tokengate_bin() -> PathBuf {
    std::env::var_os("TOKENGATE_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/tokengate")
        })
}

async fn start_tokengate(
    db_url: Option<String>,
    upstream: &str,
    upstream_key: Option<&str>,
) -> Proc {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = db_url.unwrap_or_else(|| format!("sqlite://{}/bench.db", dir.path().display()));
    let child = Command::new(tokengate_bin())
        .env("TOKENGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("TOKENGATE_DATABASE_URL", &db)
        .env("TOKENGATE_UPSTREAM_URL", upstream)
        .env("TOKENGATE_UPSTREAM_KEY", upstream_key.unwrap_or(""))
        .env("TOKENGATE_CLIENT_KEYS", CLIENT_KEY)
        .env("TOKENGATE_ADMIN_PASSWORD", "bench-admin-password")
        .env("TOKENGATE_MAIL_DIR", dir.path().join("mail"))
        .env("TOKENGATE_ALERT_THRESHOLDS", "100")
        // tokengate's default level: one line per settlement, as deployed.
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start target/release/tokengate (bench/run.sh builds it)");
    let p = Proc {
        child,
        port,
        db_url: Some(db),
        _dir: Some(dir),
    };
    wait_ready(&format!("http://127.0.0.1:{port}/readyz")).await;
    if std::env::var("TOKENGATE_BENCH_PLAN").as_deref() == Ok("policies")
        && let Some(db) = &p.db_url
    {
        plan_with_every_policy(db);
    }
    p
}

/// `TOKENGATE_BENCH_PLAN=policies`: the default plan lists its models, has all
/// three request limits, input and output allowances and an overage, each too high
/// to refuse, so every reservation checks every policy and pays from pools (the read
/// of the holds' sides, the plan's pools at settlement). Compared with a run without
/// it (a plain plan), this is what the policies cost.
fn plan_with_every_policy(db: &str) {
    let edited = Command::new(tokengate_bin())
        .args([
            "plans",
            "edit",
            "Mensal",
            "--models",
            "bench-model,gpt-4o-mini",
        ])
        .args(["--per-minute", "1000000000", "--per-day", "1000000000"])
        .args(["--per-month", "1000000000"])
        .args(["--input-allowance", "1000000000000"])
        .args(["--output-allowance", "1000000000000"])
        .args(["--overage-cap", "1000000000", "--overage-price", "0,10"])
        .env("TOKENGATE_DATABASE_URL", db)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(edited, "could not give the default plan its policies");
}

async fn start_litellm(bin: &str, upstream_port: u16) -> Proc {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: bench-model\n    litellm_params:\n      model: openai/bench-model\n      api_base: http://127.0.0.1:{upstream_port}/v1\n      api_key: anything\ngeneral_settings:\n  master_key: {LITELLM_KEY}\n"
        ),
    )
    .expect("write config");
    let child = Command::new(bin)
        .args([
            "--config",
            &config.display().to_string(),
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .envs([
            ("LITELLM_LOCAL_MODEL_COST_MAP", "True"),
            ("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True"),
            ("LITELLM_LOCAL_AUTOROUTER_PRESETS", "True"),
            ("LITELLM_LOCAL_BLOG_POSTS", "True"),
            ("LITELLM_LOCAL_POLICY_TEMPLATES", "True"),
            ("LITELLM_DONT_SHOW_FEEDBACK_BOX", "True"),
            ("NO_DOCKER", "1"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start litellm");
    let p = Proc {
        child,
        port,
        db_url: None,
        _dir: Some(dir),
    };
    wait_ready(&format!("http://127.0.0.1:{port}/health/liveliness")).await;
    p
}

/// tokengate's `tokengate_phase_seconds` sums and counts, by phase.
/// tokengate's `/metrics` text; `None` for a process that is not tokengate.
async fn metrics_text(p: Option<&Proc>) -> Option<String> {
    let p = p.filter(|p| p.db_url.is_some())?;
    let res = reqwest::get(format!("http://127.0.0.1:{}/metrics", p.port))
        .await
        .ok()?;
    res.text().await.ok()
}

/// The value on the line that starts with `prefix` (a metric and its labels).
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
}

async fn phase_totals(p: Option<&Proc>) -> Vec<(String, f64, f64)> {
    let Some(text) = metrics_text(p).await else {
        return Vec::new();
    };
    let value = |name: &str, phase: &str| {
        metric(&text, &format!("{name}{{phase=\"{phase}\"}} ")).unwrap_or(0.0)
    };
    ["parse", "reserve", "upstream", "settle"]
        .iter()
        .map(|p| {
            (
                (*p).to_owned(),
                value("tokengate_phase_seconds_sum", p),
                value("tokengate_phase_seconds_count", p),
            )
        })
        .collect()
}

/// SQLite's writes so far by path (inline, queued behind a busy connection, together
/// in a batch of settlements); `None` on PostgreSQL.
/// Writes by path (inline, queued, together) and the log's restarts (NaN from a
/// release that does not count them).
async fn sqlite_writes(p: Option<&Proc>) -> Option<[f64; 4]> {
    let text = metrics_text(p).await?;
    let path = |path: &str| {
        metric(
            &text,
            &format!("tokengate_sqlite_writes_total{{path=\"{path}\"}} "),
        )
    };
    let restarts = metric(&text, "tokengate_sqlite_log_restarts_total ").unwrap_or(f64::NAN);
    Some([
        path("inline")?,
        path("queued")?,
        path("together")?,
        restarts,
    ])
}

fn phase_means(before: &[(String, f64, f64)], after: &[(String, f64, f64)]) -> Option<String> {
    let parts: Vec<String> = before
        .iter()
        .zip(after)
        .filter(|(b, a)| a.2 > b.2)
        .map(|(b, a)| format!("{} {:.0} µs", a.0, (a.1 - b.1) / (a.2 - b.2) * 1e6))
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

// ---------------------------------------------------------------- the run

struct Settings {
    smoke: bool,
    /// `--quick`: saturation and 1,000/s only, no user-count rows, no memory measure;
    /// for trying a change, not for BENCHMARKS.md.
    quick: bool,
    secs: Duration,
    rates: Vec<u32>,
    conns: usize,
    out: Option<PathBuf>,
    /// `--only B`: scenarios A and O (the references) plus those whose name starts with B;
    /// `--only rss`: the memory measure alone.
    only: Option<String>,
}

fn settings() -> Settings {
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    Settings {
        smoke,
        quick,
        secs: if smoke {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        },
        rates: if smoke {
            vec![100]
        } else if quick {
            vec![1000]
        } else {
            vec![500, 1000, 2000]
        },
        conns: 64,
        out,
        only: args
            .iter()
            .position(|a| a == "--only")
            .and_then(|i| args.get(i + 1))
            .cloned(),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

struct Row {
    scenario: String,
    load: String,
    stats: Stats,
}

async fn run(st: &Settings) -> (Vec<Row>, Vec<String>) {
    let chat: &'static str = Box::leak(chat_body().into_boxed_str());
    let title: &'static str = Box::leak(title_body().into_boxed_str());
    let shape = StreamShape {
        chunks: 20,
        gap: Duration::ZERO,
    };
    let fake = fake_upstream(shape);
    let fake_url = format!("http://127.0.0.1:{fake}/v1");
    wait_ready(&format!("{fake_url}/models")).await;

    let mut targets: Vec<(String, Target, Option<Proc>)> = vec![(
        "A direct".into(),
        Target {
            url: format!("{fake_url}/chat/completions"),
            metered: false,
            key: None,
        },
        None,
    )];
    let hop = start_bare_hop(&fake_url).await;
    targets.push((
        "O bare hop".into(),
        Target {
            url: format!("http://127.0.0.1:{}/v1/chat/completions", hop.port),
            metered: false,
            key: None,
        },
        Some(hop),
    ));
    let tg = start_tokengate(None, &fake_url, None).await;
    targets.push((
        "B tokengate (SQLite)".into(),
        Target {
            url: format!("http://127.0.0.1:{}/v1/chat/completions", tg.port),
            metered: true,
            key: None,
        },
        Some(tg),
    ));
    let external = |var: &str| std::env::var(var).ok().filter(|_| !st.quick);
    if let Some(pg) = external("TOKENGATE_BENCH_PG_URL") {
        let tg = start_tokengate(Some(pg), &fake_url, None).await;
        targets.push((
            "B tokengate (PostgreSQL)".into(),
            Target {
                url: format!("http://127.0.0.1:{}/v1/chat/completions", tg.port),
                metered: true,
                key: None,
            },
            Some(tg),
        ));
    }
    let mut notes = Vec::new();
    if let Some(bin) = external("TOKENGATE_BENCH_LITELLM") {
        let litellm = start_litellm(&bin, fake).await;
        let litellm_url = format!("http://127.0.0.1:{}/v1", litellm.port);
        let tg = start_tokengate(None, &litellm_url, Some(LITELLM_KEY)).await;
        targets.push((
            "C LiteLLM".into(),
            Target {
                url: format!("{litellm_url}/chat/completions"),
                metered: false,
                key: Some(LITELLM_KEY),
            },
            Some(litellm),
        ));
        targets.push((
            "D tokengate -> LiteLLM".into(),
            Target {
                url: format!("http://127.0.0.1:{}/v1/chat/completions", tg.port),
                metered: true,
                key: None,
            },
            Some(tg),
        ));
    } else {
        notes.push(
            "LiteLLM scenarios skipped: --quick, or TOKENGATE_BENCH_LITELLM is not set.".into(),
        );
    }

    let selected = |name: &str| match &st.only {
        Some(only) => {
            only != "rss"
                && (name.starts_with('A')
                    || name.starts_with('O')
                    || name.starts_with(only.as_str()))
        }
        None => true,
    };
    // LiteLLM serves a few dozen of these requests a second here: a fixed rate it can
    // sustain, or its queue, not its latency, is what gets measured.
    let slow_litellm = |name: &str| name.starts_with('C') || name.starts_with('D');
    let mut rows = Vec::new();
    let mut idle = Vec::new();
    for (name, t, proc_) in targets.iter().filter(|(name, ..)| selected(name)) {
        if let Some(p) = proc_ {
            idle.push((name.clone(), p.memory()));
        }
        // Warm up connections and caches.
        let _ = saturate(t, chat, 8, Duration::from_millis(300), 1000).await;
        let p = proc_.as_ref();
        let s = with_cpu(p, saturate(t, chat, st.conns, st.secs, 1000)).await;
        rows.push(Row {
            scenario: name.clone(),
            load: format!("stream, saturation, {} conns", st.conns),
            stats: s,
        });
        let s = with_cpu(p, saturate(t, title, st.conns, st.secs, 1000)).await;
        rows.push(Row {
            scenario: name.clone(),
            load: format!("title, saturation, {} conns", st.conns),
            stats: s,
        });
        if slow_litellm(name) {
            let s = with_cpu(
                p,
                fixed_rate(
                    t,
                    &client(st.conns),
                    chat,
                    LITELLM_RATE,
                    st.secs,
                    st.conns,
                    1000,
                ),
            )
            .await;
            rows.push(Row {
                scenario: name.clone(),
                load: format!("stream, {LITELLM_RATE}/s"),
                stats: s,
            });
        }
    }
    // The fixed rates, where the budgets compare B with A, take turns.
    let interleaved: Vec<_> = targets
        .iter()
        .filter(|(name, ..)| selected(name) && !slow_litellm(name))
        .collect();
    for rate in &st.rates {
        let mut runs = Vec::new();
        for (_, t, p) in &interleaved {
            runs.push(Interleaved {
                target: t,
                proc_: p.as_ref(),
                client: client(st.conns),
                stats: Stats::default(),
                cpu: Duration::ZERO,
                before: phase_totals(p.as_ref()).await,
                writes_before: sqlite_writes(p.as_ref()).await,
            });
        }
        take_turns(&mut runs, chat, *rate, st).await;
        for ((name, ..), run) in interleaved.iter().zip(runs) {
            let after = phase_totals(run.proc_).await;
            if let Some(phases) = phase_means(&run.before, &after) {
                notes.push(format!("{name}, stream {rate}/s, tokengate's own mean time per request (/metrics): {phases}"));
            }
            if let (Some(before), Some(after)) = (run.writes_before, sqlite_writes(run.proc_).await)
            {
                let [inline, queued, together, restarts] =
                    [0, 1, 2, 3].map(|i| after[i] - before[i]);
                let all = inline + queued + together;
                if all > 0.0 {
                    let restarts = if restarts.is_nan() {
                        String::new()
                    } else {
                        format!("; the log was started over {restarts:.0} times")
                    };
                    notes.push(format!(
                        "{name}, stream {rate}/s: of {all:.0} SQLite writes, {queued:.0} ({:.1}%) found the write connection busy and were queued, {together:.0} ({:.1}%) were settlements written together{restarts}",
                        queued / all * 100.0,
                        together / all * 100.0
                    ));
                }
            }
            let mut stats = run.stats;
            if let (Some(_), Ok(n @ 1..)) = (run.proc_, u32::try_from(stats.ok)) {
                stats.cpu_per_request = Some(run.cpu / n);
            }
            rows.push(Row {
                scenario: name.clone(),
                load: format!("stream, {rate}/s"),
                stats,
            });
        }
    }
    for (name, t, proc_) in targets.iter().filter(|(name, ..)| selected(name)) {
        let p = proc_.as_ref();
        if !st.smoke && !st.quick && name.starts_with('B') {
            // One user gets everything: enough credits that no request is refused.
            if let Some(db) = proc_.as_ref().and_then(|p| p.db_url.clone()) {
                let granted = Command::new(tokengate_bin())
                    .args(["credits", "grant", "user-0", "1000000000000"])
                    .env("TOKENGATE_DATABASE_URL", db)
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(granted, "could not grant credits to the hot user");
            }
            let s = with_cpu(
                p,
                fixed_rate(t, &client(st.conns), chat, 1000, st.secs, st.conns, 1),
            )
            .await;
            rows.push(Row {
                scenario: name.clone(),
                load: "stream, 1000/s, one hot user".into(),
                stats: s,
            });
            // 100,000 users in the database, the traffic spread over all of them.
            let began = Instant::now();
            provision(t, title, 100_000, st.conns).await;
            notes.push(format!(
                "{name}: 100,000 users provisioned through the proxy (one title request each) in {:.0} s",
                began.elapsed().as_secs_f64()
            ));
            let s = with_cpu(
                p,
                fixed_rate(t, &client(st.conns), chat, 1000, st.secs, st.conns, 100_000),
            )
            .await;
            rows.push(Row {
                scenario: name.clone(),
                load: "stream, 1000/s, 100,000 users".into(),
                stats: s,
            });
        }
        if let (Some(p), Some((_, idle))) = (p, idle.iter().find(|(n, _)| n == name)) {
            notes.push(format!(
                "{name}: RSS {idle} at idle, {} after the runs",
                p.memory()
            ));
        }
    }
    // The table lists each scenario's rows together, in the order of `targets`.
    rows.sort_by_key(|r| targets.iter().position(|(name, ..)| *name == r.scenario));
    // Memory with many streams open at once: a slow upstream (one chunk every 200 ms)
    // keeps every stream open while the count of streams that got their first event
    // climbs to the target; RSS is read at that moment.
    if st.quick {
        return (rows, notes);
    }
    let open = if st.smoke { 100 } else { 1000 };
    let slow = fake_upstream(StreamShape {
        chunks: 20,
        gap: Duration::from_millis(200),
    });
    let slow_url = format!("http://127.0.0.1:{slow}/v1");
    wait_ready(&format!("{slow_url}/models")).await;
    let small: &'static str = Box::leak(
        json!({"model": "bench-model", "stream": true,
               "messages": [{"role": "user", "content": "Olá! Tudo bem?"}]})
        .to_string()
        .into_boxed_str(),
    );
    // Each measure in a fresh process. The one-line chat shows how much of the memory
    // per stream follows the size of the request; the bare hop, how much of it is the
    // HTTP stack's own.
    for (name, bare) in [("B tokengate (SQLite)", false), ("O bare hop", true)] {
        for (body, what) in [(chat, "the 4,000-token chat"), (small, "a one-line chat")] {
            let p = if bare {
                start_bare_hop(&slow_url).await
            } else {
                start_tokengate(None, &slow_url, None).await
            };
            let idle = p.memory();
            let target = Target {
                url: format!("http://127.0.0.1:{}/v1/chat/completions", p.port),
                metered: !bare,
                key: None,
            };
            let (peak, ok) = concurrent_streams(&target, body, open, &p).await;
            notes.push(format!(
                "{name}: RSS {idle} at idle, {peak} with {open} streams of {what} open at once ({ok} of {open} completed)"
            ));
        }
    }
    (rows, notes)
}

/// Runs one load and adds the CPU time the process in the middle spent per request.
async fn with_cpu(p: Option<&Proc>, load: impl std::future::Future<Output = Stats>) -> Stats {
    let before = p.map(Proc::cpu_time);
    let mut s = load.await;
    if let (Some(p), Some(before), Ok(n @ 1..)) = (p, before, u32::try_from(s.ok)) {
        s.cpu_per_request = Some(p.cpu_time().saturating_sub(before) / n);
    }
    s
}

/// One title request for each of `users` users, `conns` at a time.
async fn provision(t: &Target, body: &'static str, users: usize, conns: usize) {
    let client = client(conns);
    let mut tasks = Vec::new();
    for w in 0..conns {
        let (client, t) = (client.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            for n in (w..users).step_by(conns) {
                let _ = one(&client, &t, body, &format!("user-{n}"), Instant::now()).await;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// Opens `n` streams at once and returns tokengate's resident memory once all of them
/// have received their first event, and how many completed.
async fn concurrent_streams(t: &Target, body: &'static str, n: usize, p: &Proc) -> (Memory, usize) {
    let client = client(n);
    let started = Arc::new(tokio::sync::Semaphore::new(0));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (client, t, started) = (client.clone(), t.clone(), started.clone());
        tasks.push(tokio::spawn(async move {
            let res = client
                .post(&t.url)
                .header("content-type", "application/json")
                .bearer_auth(CLIENT_KEY)
                .header("x-librechat-user-id", format!("user-{}", i % 1000))
                .body(body)
                .send()
                .await;
            let Ok(mut res) = res else {
                started.add_permits(1);
                return false;
            };
            let mut first = true;
            let mut ok = res.status().is_success();
            loop {
                match res.chunk().await {
                    Ok(Some(_)) => {
                        if first {
                            first = false;
                            started.add_permits(1);
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            if first {
                started.add_permits(1);
            }
            ok
        }));
    }
    // Every stream has had its first event (or failed) when all permits are in.
    let all = u32::try_from(n).unwrap_or(u32::MAX);
    let _ = started.acquire_many(all).await;
    let peak = p.memory();
    let mut ok = 0;
    for task in tasks {
        if task.await.unwrap_or(false) {
            ok += 1;
        }
    }
    (peak, ok)
}

fn report(st: &Settings, rows: &mut [Row], notes: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | load | ok | errors | req/s | p50 ms | p99 ms | TTFB p50 ms | TTFB p99 ms | CPU µs/req |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows.iter_mut() {
        let s = &mut r.stats;
        let (p50, p99) = (pct(&mut s.latencies, 0.5), pct(&mut s.latencies, 0.99));
        let (t50, t99) = (pct(&mut s.ttfb, 0.5), pct(&mut s.ttfb, 0.99));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.load,
            s.ok,
            s.errors,
            s.rps(),
            ms(p50),
            ms(p99),
            ms(t50),
            ms(t99),
            s.cpu_per_request
                .map_or_else(|| "".to_owned(), |d| d.as_micros().to_string())
        );
    }
    // Added latency of B over A at each fixed rate.
    let _ = writeln!(out);
    for rate in &st.rates {
        let load = format!("stream, {rate}/s");
        let find = |prefix: &str| {
            rows.iter()
                .find(|r| r.scenario.starts_with(prefix) && r.load == load)
        };
        let added = |over: &Row, by: &Row| {
            let (mut la, mut lb) = (over.stats.latencies.clone(), by.stats.latencies.clone());
            let (mut ta, mut tb) = (over.stats.ttfb.clone(), by.stats.ttfb.clone());
            let diff = |b: Duration, a: Duration| b.as_micros() as i128 - a.as_micros() as i128;
            // Each round's two measures ran one after the other, so their difference
            // is spared most of the VM's drift: the spread of these says how far the
            // whole run's figure can be trusted.
            let by_round: Vec<String> = over
                .stats
                .round_p50s
                .iter()
                .zip(&by.stats.round_p50s)
                .map(|(a, b)| format!("{:+}", diff(*b, *a)))
                .collect();
            format!(
                "adds {} µs at p50 (by round: {}) and {} µs at p99; time to first byte {:+} µs at p99",
                diff(pct(&mut lb, 0.5), pct(&mut la, 0.5)),
                by_round.join(", "),
                diff(pct(&mut lb, 0.99), pct(&mut la, 0.99)),
                diff(pct(&mut tb, 0.99), pct(&mut ta, 0.99)),
            )
        };
        if let (Some(a), Some(o)) = (find("A"), find("O")) {
            let _ = writeln!(
                out,
                "- {load}: the bare hop {} (the stack's floor).",
                added(a, o)
            );
        }
        for backend in ["SQLite", "PostgreSQL"] {
            let Some(b) = find(&format!("B tokengate ({backend})")) else {
                continue;
            };
            if let Some(a) = find("A") {
                let _ = writeln!(out, "- {load}: tokengate ({backend}) {}.", added(a, b));
            }
            if let Some(o) = find("O") {
                let _ = writeln!(
                    out,
                    "- {load}: over the bare hop, tokengate's metering ({backend}) {}.",
                    added(o, b)
                );
            }
        }
    }
    // Where tokengate's tail comes from, at fixed rates.
    for r in rows.iter().filter(|r| !r.load.contains("saturation")) {
        if r.stats.phases.is_empty() {
            continue;
        }
        let parts: Vec<String> = (0..PHASE_NAMES.len())
            .map(|i| {
                let mut v: Vec<Duration> = r.stats.phases.iter().map(|p| p[i]).collect();
                format!(
                    "{} {} / {} µs",
                    PHASE_NAMES[i],
                    pct(&mut v, 0.5).as_micros(),
                    pct(&mut v, 0.99).as_micros()
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "- {}, {}: tokengate's own time per request at p50 / p99 (Server-Timing): {}",
            r.scenario,
            r.load,
            parts.join(", ")
        );
    }
    for n in notes {
        let _ = writeln!(out, "- {n}");
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, port, upstream] = &args[..]
        && flag == "--bare-hop"
    {
        let port = port.parse().expect("--bare-hop PORT UPSTREAM");
        if let Err(e) = bare_hop(port, upstream.clone()) {
            eprintln!("bare hop: {e}");
            std::process::exit(1);
        }
        return;
    }
    // `cargo bench` passes --bench; ignore what is not ours.
    let st = settings();
    if !tokengate_bin().exists() {
        eprintln!(
            "{} is missing: run bench/run.sh, which builds it",
            tokengate_bin().display()
        );
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (mut rows, notes) = rt.block_on(run(&st));
    let table = report(&st, &mut rows, &notes);
    println!("{table}");
    let failed = rows.iter().any(|r| r.stats.ok == 0);
    if let Some(path) = &st.out {
        let doc = format!(
            "{}\n\n## Figures\n\nGenerated by `bench/run.sh` on {} ({}).\n\n{table}",
            include_str!("../bench/BENCHMARKS.head.md").trim_end(),
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
            machine()
        );
        if let Err(e) = std::fs::write(path, doc) {
            eprintln!("cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    if failed {
        eprintln!("a scenario completed no request");
        std::process::exit(1);
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} CPUs, {model}")
}
