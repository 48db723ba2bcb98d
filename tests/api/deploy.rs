//! The deployment pack, checked with LibreChat's own code: `librechat.yaml` against
//! LibreChat's schema (librechat-data-provider), the Compose file with a Compose
//! implementation and a shape check, and LibreChat's chat client (@librechat/agents)
//! streaming through tokengate and meeting the block. `scripts/test.sh` installs the
//! pinned npm packages and Debian's docker-compose.

use crate::helpers::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A folder with the Node scripts next to the installed packages (ES modules resolve
/// `node_modules` from the script's folder).
fn node_dir() -> tempfile::TempDir {
    let modules = std::env::var("TOKENGATE_TEST_NODE_MODULES").expect(
        "TOKENGATE_TEST_NODE_MODULES is not set: run the suite with scripts/test.sh, which installs LibreChat's npm packages",
    );
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&modules, dir.path().join("node_modules")).unwrap();
    for entry in std::fs::read_dir(repo("tests/deploy")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

/// Runs a command off the test thread (the app under test serves on it).
async fn run(mut cmd: Command) -> Output {
    actix_web::rt::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn node(dir: &Path, script: &str, args: &[&str]) -> Command {
    let mut cmd =
        Command::new(std::env::var("TOKENGATE_TEST_NODE").unwrap_or_else(|_| "node".into()));
    cmd.arg(dir.join(script)).args(args);
    cmd
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[actix_web::test]
async fn librechat_yaml_passes_librechats_own_schema() {
    let dir = node_dir();
    let file = repo("librechat-config/librechat.yaml");
    let out = run(node(
        dir.path(),
        "validate_librechat_yaml.mjs",
        &[file.to_str().unwrap()],
    ))
    .await;
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout).trim(), "valid");

    // The validator is not a rubber stamp: a typo in a field's type is refused.
    let broken = dir.path().join("broken.yaml");
    let yaml = std::fs::read_to_string(&file)
        .unwrap()
        .replace("fetch: true", "fetch: \"sim\"");
    std::fs::write(&broken, yaml).unwrap();
    let out = run(node(
        dir.path(),
        "validate_librechat_yaml.mjs",
        &[broken.to_str().unwrap()],
    ))
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("models.fetch"),
        "{}",
        text(&out.stderr)
    );
}

/// `docker-compose config` on a copy of the stack with `.env.example` as its `.env`.
async fn compose_config(compose_yaml: &str) -> (Output, tempfile::TempDir) {
    let dir = node_dir();
    std::fs::write(dir.path().join("docker-compose.yml"), compose_yaml).unwrap();
    std::fs::copy(repo(".env.example"), dir.path().join(".env")).unwrap();
    let mut cmd = Command::new(
        std::env::var("TOKENGATE_TEST_COMPOSE").unwrap_or_else(|_| "docker-compose".into()),
    );
    cmd.current_dir(dir.path())
        .args(["-f", "docker-compose.yml", "config"]);
    let out = run(cmd).await;
    (out, dir)
}

async fn shape_check(compose_yaml: &str) -> Output {
    let (out, dir) = compose_config(compose_yaml).await;
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        text(&out.stderr)
    );
    let resolved = dir.path().join("resolved.yml");
    std::fs::write(&resolved, &out.stdout).unwrap();
    let librechat = repo("librechat-config/librechat.yaml");
    let env = repo(".env.example");
    run(node(
        dir.path(),
        "check_compose.mjs",
        &[
            resolved.to_str().unwrap(),
            librechat.to_str().unwrap(),
            env.to_str().unwrap(),
        ],
    ))
    .await
}

#[actix_web::test]
async fn the_compose_stack_is_valid_and_wired_by_service_names() {
    let compose = std::fs::read_to_string(repo("docker-compose.yml")).unwrap();
    let out = shape_check(&compose).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("ok: 9 services"),
        "{}",
        text(&out.stdout)
    );

    // The check is not a rubber stamp: an unpinned image, a published tokengate and
    // an upstream that names no service are each reported.
    let broken = compose
        .replace("image: mongo:8.0.20", "image: mongo")
        .replace("http://litellm:4000/v1", "http://lite-llm:4000/v1")
        .replace(
            "    # No ports: only LibreChat (on this network) reaches it.\n",
            "    ports:\n      - \"8080:8080\"\n",
        )
        .replace(
            "      TOKENGATE_LOG_FORMAT: json\n",
            "      TOKENGATE_LOG_FORMAT: json\n      TOKENGATE_INSTANCE_ID: tokengate-1\n",
        )
        .replace("    stop_grace_period: 45s\n", "")
        // A way around the meter: the provider key in LibreChat (its built-in
        // endpoint), LibreChat beside LiteLLM, tokengate's database open to
        // LibreChat, and the whole .env handed to the RAG API.
        .replace(
            "      ENDPOINTS: custom\n",
            "      OPENAI_API_KEY: ${OPENAI_API_KEY}\n",
        )
        .replace(
            "    networks: [web, librechat-data, rag, metered]\n",
            "    networks: [web, librechat-data, rag, metered, provider]\n",
        )
        .replace(
            "    networks: [tokengate-data]\n",
            "    networks: [tokengate-data, metered]\n",
        )
        .replace(
            "    networks: [rag, rag-data, metered]\n",
            "    networks: [rag, rag-data, metered]\n    env_file: [.env]\n",
        )
        // LibreChat's own compose file mounts .env, which LibreChat reads; a
        // published LiteLLM is reachable through the host; a secret in a command.
        .replace(
            "      - librechat-logs:/app/api/logs\n",
            "      - librechat-logs:/app/api/logs\n      - ./.env:/app/.env:ro\n",
        )
        .replace(
            "    # Only tokengate reaches it; it reaches the providers.\n",
            "    ports: [\"4000:4000\"]\n",
        )
        // The footer's link names another address than tokengate's own.
        .replace(
            "(${TOKENGATE_PUBLIC_URL:-http://127.0.0.1:8080}/me)",
            "(https://elsewhere.example/me)",
        )
        .replace(
            "    command: mongod --noauth\n",
            "    command: mongod --noauth --setParameter k=${OPENAI_API_KEY}\n",
        );
    let out = shape_check(&broken).await;
    assert!(!out.status.success());
    let errors = text(&out.stderr);
    for e in [
        "mongodb: image mongo is not pinned",
        "tokengate: must not publish ports",
        "upstream host lite-llm",
        "a fixed TOKENGATE_INSTANCE_ID",
        "stop_grace_period must be over 40s",
        "api: holds OPENAI_API_KEY, which it does not use",
        "api: holds a provider key (OPENAI_API_KEY)",
        "api: ENDPOINTS must be \"custom\"",
        "api: LibreChat shares a network with LiteLLM",
        "tokengate-db: shares a network with api",
        "rag_api: holds LITELLM_MASTER_KEY, which it does not use",
        "/.env, which hands it every secret of the stack",
        "litellm: publishes a port",
        "mongodb: holds OPENAI_API_KEY, which it does not use",
        "api: CUSTOM_FOOTER must link to the users' page",
    ] {
        assert!(errors.contains(e), "{e:?} not reported: {errors}");
    }
    // And a file Compose itself rejects fails the validation.
    let (out, _dir) =
        compose_config(&compose.replace("condition: service_healthy", "condition: when_ready"))
            .await;
    assert!(
        !out.status.success(),
        "an invalid condition must be refused"
    );
}

/// The block status the shipped stack sets for the LibreChat it pins.
fn stack_block_status() -> String {
    let compose = std::fs::read_to_string(repo("docker-compose.yml")).unwrap();
    let line = compose
        .lines()
        .find(|l| l.trim_start().starts_with("TOKENGATE_BLOCK_STATUS:"))
        .expect("docker-compose.yml sets TOKENGATE_BLOCK_STATUS for the LibreChat it pins");
    let value = line.split_once(':').unwrap().1.trim();
    // `${TOKENGATE_BLOCK_STATUS:-402}`: the default the stack ships.
    value
        .rsplit_once(":-")
        .map_or(value, |(_, d)| d.trim_end_matches('}'))
        .to_owned()
}

/// LibreChat's chat client streams a chat through tokengate, then meets the block:
/// `status` is tokengate's block status; returns what LibreChat's client raised.
async fn librechat_meets_the_block(status: &str) -> serde_json::Value {
    let app = spawn_app(TestOptions {
        env: vec![("TOKENGATE_BLOCK_STATUS", status.to_owned())],
        ..TestOptions::default()
    })
    .await;
    let dir = node_dir();
    let base = format!("{}/v1", app.address);
    let user = "65f1c0ffee00000000001234";
    let chat = |dir: &Path| {
        node(
            dir,
            "librechat_client.mjs",
            &[&base, CLIENT_KEY, user, "jose@example.com", "Jose Silva"],
        )
    };
    let out = run(chat(dir.path())).await;
    let result: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}{}", text(&out.stdout), text(&out.stderr)));
    let expected = "tok ".repeat(crate::fake_provider::NATURAL_COMPLETION as usize);
    assert_eq!(result["text"], expected.as_str(), "{result}");
    assert_eq!(result["attempts"], 1);
    // LibreChat's headers named the user; the usage was charged to them.
    let summary = app.summary(user);
    assert_eq!(summary.email.as_deref(), Some("jose@example.com"));
    assert_eq!(summary.name.as_deref(), Some("Jose Silva"));
    assert!(summary.used_this_cycle > 0);
    assert_eq!(app.charged(user), summary.used_this_cycle);
    assert_eq!(
        app.fake.last_request()["user"],
        user,
        "the `user` field reaches upstream"
    );

    // Out of tokens: one attempt, whatever the status, and nothing reaches upstream.
    let tiny = app
        .ledger()
        .create_plan(
            &crate::helpers::plan_spec("Vazio", 1),
            false,
            &tokengate::ledger::Actor::Cli,
        )
        .unwrap();
    app.ledger()
        .change_plan(app.user_id(user), tiny, &tokengate::ledger::Actor::Cli)
        .unwrap();
    assert!(app.summary(user).remaining <= 0);
    let before = app.fake.request_count();
    let out = run(chat(dir.path())).await;
    let result: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}{}", text(&out.stdout), text(&out.stderr)));
    assert_eq!(result["attempts"], 1, "the block is not retried: {result}");
    assert_eq!(result["status"].to_string(), status, "{result}");
    assert_eq!(app.fake.request_count(), before, "nothing reached upstream");
    app.assert_invariant(user);
    result
}

/// The stack's setting with LibreChat v0.8.8-rc2 and later (the stack pins
/// v0.8.8-rc4): the error is not classified as a rate limit, so LibreChat keeps its
/// text, and the user reads tokengate's block whole, in the bubble.
#[actix_web::test]
async fn librechat_shows_the_block_text_with_the_stacks_block_status() {
    let status = stack_block_status();
    assert_ne!(status, "429", "LibreChat v0.8.8-rc2+ hides a 429's text");
    let result = librechat_meets_the_block(&status).await;
    assert_eq!(result["lc_error_code"], serde_json::Value::Null, "{result}");
    let shows = result["librechat_shows"].as_str().unwrap();
    let block = "Seus tokens acabaram: você usou todo o seu plano Vazio. Para continuar, peça mais créditos a suporte@iasolaris.com.br.";
    assert_eq!(
        shows,
        format!("An error occurred while processing the request: {status} {block}")
    );
    assert_eq!(result["inline"], true, "folded away: {shows}");
    // v0.8.8-rc4 and later: a headline naming the status, the block text under it,
    // inline.
    let terminal = &result["terminal"];
    assert_eq!(
        terminal["headline"],
        format!("The model provider could not complete this request (status {status}).").as_str(),
        "{result}"
    );
    assert_eq!(
        terminal["detail"],
        format!("{status} {block}").as_str(),
        "{result}"
    );
    assert_eq!(terminal["inline"], true, "{result}");
    // With content protection on, or no provider text allowed, the headline alone:
    // the README warns operators.
    for withheld in ["terminal_protected", "terminal_no_text"] {
        assert_eq!(
            result[withheld]["detail"],
            serde_json::Value::Null,
            "{withheld}: {result}"
        );
        assert!(
            result[withheld]["headline"]
                .as_str()
                .unwrap()
                .contains(&status)
        );
    }
}

/// A 429 (the default, the OpenAI convention): LibreChat up to v0.8.8-rc1 shows the
/// error's message, which carries the block text; from v0.8.8-rc2 on, LangChain's
/// MODEL_RATE_LIMIT stamp makes LibreChat show its own "rate limit" sentence instead,
/// which is why the stack sets another status (README, "Which LibreChat").
#[actix_web::test]
async fn a_429_block_reaches_older_librechat_and_is_a_rate_limit_to_newer() {
    let result = librechat_meets_the_block("429").await;
    let message = result["error"].as_str().unwrap_or_default();
    assert!(message.contains("Seus tokens acabaram"), "{message}");
    assert_eq!(result["lc_error_code"], "MODEL_RATE_LIMIT", "{result}");
    assert_eq!(
        result["librechat_shows"], r#"{"type":"model_rate_limit"}"#,
        "{result}"
    );
    assert_eq!(result["terminal"]["type"], "model_rate_limit", "{result}");
}

/// LibreChat's client asks for a model outside the user's plan (one LiteLLM serves,
/// picked from a list fetched before the plan changed): one attempt, nothing reaches
/// upstream, and the user reads which models the plan includes, inline.
#[actix_web::test]
async fn librechat_shows_a_model_outside_the_plan() {
    let app = spawn_app(TestOptions::default()).await;
    app.ledger()
        .create_plan(
            &tokengate::domain::PlanSpec {
                models: tokengate::domain::PlanModels::parse("fake-model").unwrap(),
                ..crate::helpers::plan_spec("Básico", 100_000)
            },
            true,
            &tokengate::ledger::Actor::Cli,
        )
        .unwrap();
    let dir = node_dir();
    let base = format!("{}/v1", app.address);
    let user = "65f1c0ffee00000000009abc";
    let mut chat = node(
        dir.path(),
        "librechat_client.mjs",
        &[&base, CLIENT_KEY, user, "ana@example.com", "Ana"],
    );
    chat.env("LIBRECHAT_TEST_MODEL", "gpt-4o");
    let before = app.fake.request_count();
    let out = run(chat).await;
    let result: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}{}", text(&out.stdout), text(&out.stderr)));
    assert_eq!(result["attempts"], 1, "not retried: {result}");
    assert_eq!(result["status"], 403, "{result}");
    assert_eq!(app.fake.request_count(), before, "nothing reached upstream");
    let refusal = "403 O modelo gpt-4o não faz parte do seu plano. Seu plano inclui: fake-model.";
    // Not classified by LangChain: LibreChat keeps the text, in the bubble.
    assert_eq!(result["lc_error_code"], serde_json::Value::Null, "{result}");
    assert_eq!(
        result["librechat_shows"],
        format!("An error occurred while processing the request: {refusal}").as_str()
    );
    assert_eq!(result["inline"], true, "{result}");
    assert_eq!(result["terminal"]["detail"], refusal, "{result}");
    assert_eq!(result["terminal"]["inline"], true, "{result}");
    assert_eq!(app.summary(user).used_this_cycle, 0);
}

/// LibreChat's client meets the plan's request limits, with the stack's block
/// status: the day's limit is one attempt and its own text, whole and inline; the
/// minute's 429 (with `Retry-After`) is one attempt too, not a retry loop (its code
/// says not to retry), which newer LibreChat shows as its own rate-limit sentence.
#[actix_web::test]
async fn librechat_meets_the_day_and_minute_limits_once() {
    let status = stack_block_status();
    let app = spawn_app(TestOptions {
        env: vec![("TOKENGATE_BLOCK_STATUS", status.clone())],
        ..TestOptions::default()
    })
    .await;
    app.set_clock(chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 12, 9, 15, 0, 0).unwrap());
    let limits = |per_minute, per_day| tokengate::domain::RequestLimits {
        per_minute: tokengate::domain::RequestLimit::new(per_minute),
        per_day: tokengate::domain::RequestLimit::new(per_day),
        per_month: None,
    };
    for (plan, user, per_minute, per_day) in [
        ("Diário", "65f1c0ffee0000000000d1a1", 10, 1),
        ("Ritmo", "65f1c0ffee0000000000a1a1", 1, 100),
    ] {
        app.ledger()
            .create_plan(
                &tokengate::domain::PlanSpec {
                    limits: limits(per_minute, per_day),
                    ..crate::helpers::plan_spec(plan, 1_000_000)
                },
                true,
                &tokengate::ledger::Actor::Cli,
            )
            .unwrap();
        let dir = node_dir();
        let base = format!("{}/v1", app.address);
        let chat = || {
            node(
                dir.path(),
                "librechat_client.mjs",
                &[&base, CLIENT_KEY, user, "ana@example.com", "Ana"],
            )
        };
        let first = run(chat()).await;
        let first: serde_json::Value = serde_json::from_slice(&first.stdout)
            .unwrap_or_else(|_| panic!("{}{}", text(&first.stdout), text(&first.stderr)));
        assert!(first["text"].is_string(), "{first}");
        let before = app.fake.request_count();
        let out = run(chat()).await;
        let result: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}{}", text(&out.stdout), text(&out.stderr)));
        assert_eq!(result["attempts"], 1, "{plan}: not retried: {result}");
        assert_eq!(app.fake.request_count(), before, "nothing reached upstream");
        if plan == "Diário" {
            let refusal = format!(
                "{status} Você atingiu o limite de 1 mensagem por dia do seu plano; volta amanhã."
            );
            assert_eq!(result["status"].to_string(), status, "{result}");
            assert_eq!(result["lc_error_code"], serde_json::Value::Null, "{result}");
            assert_eq!(
                result["librechat_shows"],
                format!("An error occurred while processing the request: {refusal}").as_str()
            );
            assert_eq!(result["inline"], true, "{result}");
            assert_eq!(result["terminal"]["detail"], refusal.as_str(), "{result}");
        } else {
            assert_eq!(result["status"], 429, "{result}");
            let message = result["error"].as_str().unwrap_or_default();
            assert!(
                message.contains("Tente de novo em 60 segundos"),
                "older LibreChat shows the text: {message}"
            );
            assert_eq!(result["lc_error_code"], "MODEL_RATE_LIMIT", "{result}");
        }
    }
}

/// LibreChat with the endpoint's "Use Responses API" switch on posts to
/// `{baseURL}/responses`: metered, streamed back, and charged the usage of
/// `response.completed` (it used to get a 404, and the chat broke).
#[actix_web::test]
async fn librechats_responses_api_client_is_metered() {
    let app = spawn_app(TestOptions::default()).await;
    let dir = node_dir();
    let base = format!("{}/v1", app.address);
    let user = "65f1c0ffee00000000005678";
    let out = run(node(
        dir.path(),
        "librechat_client.mjs",
        &[
            &base,
            CLIENT_KEY,
            user,
            "ana@example.com",
            "Ana",
            "responses",
        ],
    ))
    .await;
    let result: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}{}", text(&out.stdout), text(&out.stderr)));
    assert_eq!(
        result["paths"],
        serde_json::json!(["/v1/responses"]),
        "{result}"
    );
    let expected = "tok ".repeat(crate::fake_provider::NATURAL_COMPLETION as usize);
    assert_eq!(result["text"], expected.as_str(), "{result}");
    let records = app.ledger().usage_records(app.user_id(user)).unwrap();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(
        (
            r.endpoint.as_str(),
            r.outcome.as_str(),
            r.estimated,
            r.stream
        ),
        ("responses", "completed", 0, 1)
    );
    assert_eq!(
        r.completion_tokens,
        crate::fake_provider::NATURAL_COMPLETION
    );
    assert_eq!(app.fake.last_request()["user"], user);
    app.assert_invariant(user);
}

#[actix_web::test]
async fn healthcheck_command_reports_readiness_for_containers() {
    let app = spawn_app(TestOptions::default()).await;
    let port = app.address.rsplit(':').next().unwrap().to_owned();
    let probe = |listen: String| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokengate"));
        cmd.arg("healthcheck")
            .env_clear()
            .env("TOKENGATE_LISTEN", listen)
            .env("TOKENGATE_DATABASE_URL", "sqlite:///nonexistent/unused.db");
        cmd
    };
    let out = run(probe(format!("0.0.0.0:{port}"))).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "ready");
    let out = run(probe(format!("127.0.0.1:{}", free_port()))).await;
    assert!(!out.status.success(), "nothing listens there");
}

/// The binary alone is the product: started from a folder without the repository's
/// `static/`, it still serves the dashboard's stylesheet (it used to log "Specified
/// path is not a directory" and serve the pages unstyled).
#[actix_web::test]
async fn the_binary_serves_its_stylesheet_from_any_folder() {
    let db = TestDb::new();
    let port = free_port();
    let elsewhere = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokengate"));
    cmd.current_dir(elsewhere.path())
        .env("TOKENGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("TOKENGATE_DATABASE_URL", &db.url)
        .env(
            "TOKENGATE_UPSTREAM_URL",
            format!("http://127.0.0.1:{}/v1", free_port()),
        )
        .env("TOKENGATE_CLIENT_KEYS", CLIENT_KEY)
        .env("TOKENGATE_ADMIN_PASSWORD", "test-admin-password")
        .env("TOKENGATE_DATA_DIR", elsewhere.path().join("data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _server = TokengateProcess::adopt(cmd.spawn().unwrap());
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&client, &base).await;
    let css = client
        .get(format!("{base}/static/admin.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.status(), 200);
    assert_eq!(
        css.text().await.unwrap(),
        std::fs::read_to_string(repo("static/admin.css")).unwrap()
    );
    let login = client
        .get(format!("{base}/admin/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(login.contains("/static/admin.css"), "{login}");
}

/// Podman, with the configuration scripts/test.sh writes (`CONTAINERS_CONF`).
fn podman(args: &[&str]) -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(args);
    cmd
}

/// Runs podman off the test thread; panics with its output if it fails.
async fn podman_ok(args: &[&str]) -> String {
    let out = run(podman(args)).await;
    assert!(
        out.status.success(),
        "podman {}: {}{}",
        args.join(" "),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_owned()
}

/// Removes the test's containers, volume and image (and the untagged stage its
/// build left, none other), pass or fail. One test with Podman at a time (`alone`):
/// the untagged images a test's cleanup sees appear include another's build in
/// progress, and removing them failed that build ("identifier is not a container").
struct PodmanCleanup {
    containers: Vec<String>,
    volume: String,
    image: String,
    untagged_before: Vec<String>,
    /// A lock on a file shared by the test processes, released after the cleanup.
    _alone: std::fs::File,
}

impl PodmanCleanup {
    /// Waits for any other test using Podman to finish, then starts this one's.
    fn new(volume: String, image: String) -> Self {
        let lock = std::env::temp_dir().join("tokengate-test-podman.lock");
        let alone = std::fs::File::create(lock).unwrap();
        alone.lock().unwrap();
        Self {
            containers: Vec::new(),
            volume,
            image,
            untagged_before: untagged_images(),
            _alone: alone,
        }
    }
}

fn untagged_images() -> Vec<String> {
    podman(&["images", "--quiet", "--filter", "dangling=true"])
        .output()
        .map(|o| text(&o.stdout).lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

impl Drop for PodmanCleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = podman(&["rm", "-f", "-t", "0", c]).output();
        }
        let _ = podman(&["volume", "rm", "-f", &self.volume]).output();
        let _ = podman(&["rmi", "-f", &self.image]).output();
        for id in untagged_images() {
            if !self.untagged_before.contains(&id) {
                let _ = podman(&["rmi", &id]).output();
            }
        }
    }
}

/// The Dockerfile, built and run with a real engine (Podman): its final stage on a
/// Debian bookworm base made from Debian's packages (no registry can be reached
/// here) and the tokengate under test as its binary. The container runs as a
/// non-root user, answers /readyz, meters a chat, and after it is removed and started
/// again on the same volume (and database) still has the user's usage. On the
/// PostgreSQL run of the suite it uses the throwaway cluster; on the SQLite run, the
/// image's default, a database in its volume.
#[actix_web::test]
async fn the_image_runs_unprivileged_meters_a_chat_and_keeps_its_data() {
    let base = std::env::var("TOKENGATE_TEST_PODMAN_BASE").expect(
        "TOKENGATE_TEST_PODMAN_BASE is not set: run the suite with scripts/test.sh, which installs Podman and makes a Debian base image",
    );
    let id = uuid::Uuid::new_v4().simple().to_string();
    let image = format!("localhost/tokengate-test:{}", &id[..12]);
    let volume = format!("tokengate-test-{}", &id[..12]);
    let mut cleanup = PodmanCleanup::new(volume.clone(), image.clone());
    // The binary under test, where the Dockerfile's `prebuilt` target takes it from.
    let staged = repo("target/image/tokengate");
    std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_tokengate"), &staged).unwrap();
    let context = repo(".");
    podman_ok(&[
        "build",
        "--quiet",
        "--format",
        "docker",
        "--network",
        "host",
        "--build-arg",
        &format!("BASE_IMAGE={base}"),
        "--target",
        "prebuilt",
        "-t",
        &image,
        context.to_str().unwrap(),
    ])
    .await;
    let user_of_image =
        podman_ok(&["image", "inspect", "--format", "{{.Config.User}}", &image]).await;
    assert_eq!(user_of_image, "tokengate");

    let fake = crate::fake_provider::FakeProvider::start();
    let db = TestDb::new();
    let database = match backend() {
        Backend::Postgres => db.url.clone(),
        Backend::Sqlite => "sqlite:///app/data/tokengate.db".to_owned(),
    };
    let port = free_port();
    let start = |name: String| {
        let env = [
            format!("TOKENGATE_LISTEN=127.0.0.1:{port}"),
            format!("TOKENGATE_DATABASE_URL={database}"),
            format!("TOKENGATE_UPSTREAM_URL={}", fake.base_url()),
            format!("TOKENGATE_CLIENT_KEYS={CLIENT_KEY}"),
            "TOKENGATE_ADMIN_PASSWORD=test-admin-password".to_owned(),
        ];
        let mut args: Vec<String> = ["run", "-d", "--name", &name, "--network", "host"]
            .map(str::to_owned)
            .to_vec();
        for e in env {
            args.push("-e".into());
            args.push(e);
        }
        args.extend(["-v".into(), format!("{volume}:/app/data"), image.clone()]);
        args
    };
    let client = reqwest::Client::new();
    let base_url = format!("http://127.0.0.1:{port}");
    let first = format!("tokengate-test-{}-a", &id[..12]);
    cleanup.containers.push(first.clone());
    let args = start(first.clone());
    podman_ok(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    wait_ready(&client, &base_url).await;
    assert_eq!(podman_ok(&["exec", &first, "id", "-u"]).await, "10001");

    let res = chat_process(
        &client,
        &base_url,
        USER,
        &chat_body("fake-model", "olá", false, Some(5)),
    )
    .await;
    assert_eq!(res.status(), 200);
    let used = |name: String| async move {
        let shown = podman_ok(&["exec", &name, "tokengate", "users", "show", USER, "--json"]).await;
        let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
        v["used_this_cycle"].as_i64().unwrap()
    };
    // Settled after the answer left: visible to the command line within a moment.
    wait_until(std::time::Duration::from_secs(10), || {
        let used = used(first.clone());
        async { used.await > 0 }
    })
    .await;
    let spent = used(first.clone()).await;
    assert_eq!(
        spent,
        crate::fake_provider::prompt_tokens_of(&chat_body("fake-model", "olá", false, Some(5))) + 5
    );

    // Removed and started again on the same volume: the books are still there.
    podman_ok(&["rm", "-f", "-t", "10", &first]).await;
    let second = format!("tokengate-test-{}-b", &id[..12]);
    cleanup.containers.push(second.clone());
    let args = start(second.clone());
    podman_ok(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    wait_ready(&client, &base_url).await;
    assert_eq!(used(second.clone()).await, spent);
    drop(cleanup);
}

/// The Dockerfile's default build (no target), as `docker build .` runs it, on the
/// same Debian base, with a stand-in for the Rust image whose `cargo` fails unless
/// called as `cargo build --release --locked` (compiling tokengate again inside would
/// take minutes): the build stage
/// installs its packages and runs `cargo build --release --locked` on the sources,
/// the `prebuilt` stage is skipped, and the runtime gets the build stage's binary.
#[actix_web::test]
async fn the_dockerfiles_default_build_takes_its_binary_from_the_rust_stage() {
    let base = std::env::var("TOKENGATE_TEST_PODMAN_BASE").expect(
        "TOKENGATE_TEST_PODMAN_BASE is not set: run the suite with scripts/test.sh, which installs Podman and makes a Debian base image",
    );
    let id = uuid::Uuid::new_v4().simple().to_string();
    let rust = format!("localhost/tokengate-test-rust:{}", &id[..12]);
    let image = format!("localhost/tokengate-test-default:{}", &id[..12]);
    let mut cleanup = PodmanCleanup::new(format!("tokengate-test-{}", &id[..12]), image.clone());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Containerfile"),
        format!(
            "FROM {base}\nRUN printf '#!/bin/sh\\n[ \"$*\" = \"build --release --locked\" ] || exit 3\\nmkdir -p target/release && printf stand-in > target/release/tokengate\\n' > /usr/local/bin/cargo && chmod +x /usr/local/bin/cargo\n"
        ),
    )
    .unwrap();
    podman_ok(&[
        "build",
        "--quiet",
        "--network",
        "host",
        "-t",
        &rust,
        dir.path().to_str().unwrap(),
    ])
    .await;
    let context = repo(".");
    let built = run(podman(&[
        "build",
        "--format",
        "docker",
        "--network",
        "host",
        "--build-arg",
        &format!("RUST_IMAGE={rust}"),
        "--build-arg",
        &format!("BASE_IMAGE={base}"),
        "-t",
        &image,
        context.to_str().unwrap(),
    ]))
    .await;
    let log = format!("{}{}", text(&built.stdout), text(&built.stderr));
    let _ = podman(&["rmi", "-f", &rust]).output();
    assert!(built.status.success(), "{log}");
    assert!(
        !log.contains("target/image/tokengate"),
        "the prebuilt stage ran: {log}"
    );
    let binary = podman_ok(&[
        "run",
        "--rm",
        "--entrypoint",
        "cat",
        &image,
        "/usr/local/bin/tokengate",
    ])
    .await;
    assert_eq!(binary, "stand-in");
    let user = podman_ok(&["image", "inspect", "--format", "{{.Config.User}}", &image]).await;
    assert_eq!(user, "tokengate");
    cleanup.containers.clear();
    drop(cleanup);
}

/// LibreChat's chat client streams the answers of a user past 80%: the first ends
/// with tokengate's notice line, after the whole answer; the next has none.
#[actix_web::test]
async fn librechats_client_shows_the_notice_once_at_the_end_of_the_answer() {
    let app = spawn_app(TestOptions {
        env: vec![(
            "TOKENGATE_PUBLIC_URL",
            "https://tokens.iasolaris.com.br".into(),
        )],
        ..TestOptions::default()
    })
    .await;
    app.default_plan(1_000_000);
    app.ledger()
        .set_weights(
            "w1000",
            tokengate::domain::Weights::from_milli(1000, 1_000_000)
                .unwrap()
                .into(),
            &tokengate::ledger::Actor::Cli,
        )
        .unwrap();
    let user = "65f1c0ffee00000000009999";
    while app
        .ledger()
        .find_user(&tokengate::ledger::parse_user_ref(user))
        .unwrap()
        .is_none_or(|id| app.ledger().user_summary(id).unwrap().used_percent < 80)
    {
        let res = app
            .chat_as(user, &chat_body("w1000", "oi", false, Some(40)))
            .await;
        assert_eq!(res.status(), 200);
        app.settled();
    }
    let dir = node_dir();
    let base = format!("{}/v1", app.address);
    let chat = || {
        node(
            dir.path(),
            "librechat_client.mjs",
            &[&base, CLIENT_KEY, user, "rita@example.com", "Rita"],
        )
    };
    let answer = "tok ".repeat(crate::fake_provider::NATURAL_COMPLETION as usize);
    let out = run(chat()).await;
    let result: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}{}", text(&out.stdout), text(&out.stderr)));
    let shown = result["text"].as_str().unwrap();
    let notice = shown
        .strip_prefix(answer.as_str())
        .unwrap_or_else(|| panic!("the answer first, whole: {shown:?}"));
    assert!(
        notice.starts_with("\n\nAtenção: você já usou 8")
            && notice.ends_with("Veja seu saldo: https://tokens.iasolaris.com.br/me"),
        "{notice:?}"
    );
    assert_eq!(notice.matches("Atenção").count(), 1);
    app.settled();
    let out = run(chat()).await;
    let result: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}{}", text(&out.stdout), text(&out.stderr)));
    assert_eq!(
        result["text"],
        answer.as_str(),
        "once per crossing: {result}"
    );
}
