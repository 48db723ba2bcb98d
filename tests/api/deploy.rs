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
        .replace("    stop_grace_period: 45s\n", "");
    let out = shape_check(&broken).await;
    assert!(!out.status.success());
    let errors = text(&out.stderr);
    for e in [
        "mongodb: image mongo is not pinned",
        "tokengate: must not publish ports",
        "upstream host lite-llm",
        "a fixed TOKENGATE_INSTANCE_ID",
        "stop_grace_period must be over 40s",
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

#[actix_web::test]
async fn librechats_client_streams_through_tokengate_and_surfaces_the_block() {
    let app = spawn_app(TestOptions::default()).await;
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

    // Out of tokens: one attempt, and the error LibreChat shows carries the block text.
    let tiny = app
        .ledger()
        .create_plan("Vazio", 1, false, &tokengate::ledger::Actor::Cli)
        .unwrap();
    app.ledger()
        .change_plan(app.user_id(user), tiny, &tokengate::ledger::Actor::Cli)
        .unwrap();
    assert!(app.summary(user).remaining <= 0);
    let before = app.fake.request_count();
    let out = run(chat(dir.path())).await;
    let result: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}{}", text(&out.stdout), text(&out.stderr)));
    assert_eq!(
        result["attempts"], 1,
        "a 429 with insufficient_quota is not retried: {result}"
    );
    assert_eq!(result["status"], 429, "{result}");
    let message = result["error"].as_str().unwrap_or_default();
    assert!(message.contains("Seus tokens acabaram"), "{message}");
    assert_eq!(app.fake.request_count(), before, "nothing reached upstream");
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
