//! The command line, run as the real binary.

use crate::helpers::*;
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Output, Stdio};

pub fn tokengate(db: &TestDb, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(args)
        .env("TOKENGATE_DATABASE_URL", &db.url)
        .env("TOKENGATE_LOG_FORMAT", "text")
        .env(test_now_env().0, test_now_env().1)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[actix_web::test]
async fn grant_list_and_show_users() {
    let app = spawn_app(TestOptions::default()).await;
    assert_eq!(
        app.chat(&chat_body("fake-model", "olá", false, Some(5)))
            .await
            .status(),
        200
    );
    let used = app.summary(USER).used_this_cycle;

    let out = tokengate(
        &app.db,
        &[
            "credits",
            "grant",
            USER,
            "250.000",
            "--note",
            "pagamento PIX",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("Granted 250000 tokens"),
        "{}",
        text(&out.stdout)
    );

    let out = tokengate(&app.db, &["users", "show", USER, "--json"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["credits"], 250_000);
    assert_eq!(shown["used_this_cycle"], used);
    assert_eq!(shown["remaining"], 1_000_000 - used + 250_000);

    let out = tokengate(&app.db, &["users", "list", "--json"], None);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["external_id"], USER);
    let out = tokengate(&app.db, &["users", "list"], None);
    assert!(text(&out.stdout).contains(USER));

    let entries = app.ledger().ledger_entries(app.user_id(USER)).unwrap();
    let topup = entries.iter().find(|e| e.kind == "topup").unwrap();
    assert_eq!(
        (topup.actor.as_str(), topup.note.as_deref()),
        ("cli", Some("pagamento PIX"))
    );
    // The grant takes effect on the very next request.
    app.assert_invariant(USER);
}

#[actix_web::test]
async fn bad_arguments_fail_clearly() {
    let db = TestDb::new();
    for (args, needle) in [
        (vec!["credits", "grant", USER, "-5"], "greater than zero"),
        (vec!["credits", "grant", USER, "lots"], "whole number"),
        (
            vec!["credits", "grant", USER, "1.5"],
            "groups of three digits",
        ),
        (
            vec!["credits", "grant", USER, "99999999999999999999"],
            "too large",
        ),
        (
            vec!["credits", "grant", "nobody@example.com", "10"],
            "no user matches",
        ),
        (vec!["users", "show", "nobody"], "no user matches"),
        (vec!["admin", "add", "not-an-email"], "not an email"),
        (vec!["frobnicate"], "unrecognized subcommand"),
    ] {
        let out = tokengate(&db, &args, None);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = text(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["users", "list"])
        .env("TOKENGATE_DATABASE_URL", "mysql://x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("TOKENGATE_DATABASE_URL"));
}

#[actix_web::test]
async fn admin_add_reads_the_password_from_stdin() {
    let db = TestDb::new();
    let out = tokengate(
        &db,
        &["admin", "add", "ops@example.com"],
        Some("a-long-enough-password\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stdout).contains("a-long-enough-password"),
        "the given password is never echoed"
    );
    let out = tokengate(
        &db,
        &["admin", "add", "ops@example.com"],
        Some("a-long-enough-password\n"),
    );
    assert!(text(&out.stderr).contains("already exists"));
    let out = tokengate(&db, &["admin", "add", "short@example.com"], Some("short\n"));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("at least 12"));
}

#[test]
fn migration_folders_have_identical_names() {
    let names = |backend: &str| {
        let mut v: Vec<String> = std::fs::read_dir(format!(
            "{}/migrations/{backend}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
        v.sort();
        v
    };
    assert!(!names("sqlite").is_empty());
    assert_eq!(names("sqlite"), names("postgres"));
}

/// Every command ends quietly when its reader goes away (`| head -1`): no panic, no
/// backtrace, success. The list is long enough to fill the pipe.
#[actix_web::test]
async fn every_command_ends_quietly_on_a_closed_pipe() {
    let app = spawn_app(TestOptions::default()).await;
    for i in 0..1_500 {
        let email = tokengate::domain::Email::parse(&format!("pessoa{i:04}@example.com")).unwrap();
        app.ledger()
            .create_user_by_email(
                &email,
                Some("Pessoa com um nome comprido o bastante"),
                &tokengate::ledger::Actor::Cli,
            )
            .unwrap();
    }
    for args in ["users list", "users list --json"] {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("set -o pipefail; \"$TG\" {args} | head -1"))
            .env("TG", env!("CARGO_BIN_EXE_tokengate"))
            .env("TOKENGATE_DATABASE_URL", &app.db.url)
            .env(test_now_env().0, test_now_env().1)
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args}: {stderr}");
        assert!(out.status.success(), "{args}: {:?} {stderr}", out.status);
        assert_eq!(text(&out.stdout).lines().count(), 1);
    }
}

/// `tokengate check` reports every check, the mail server's too, when LiteLLM is
/// down: before, it stopped at the first failure.
#[actix_web::test]
async fn check_reports_every_check() {
    let db = TestDb::new();
    let closed = free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .arg("check")
        .env("TOKENGATE_DATABASE_URL", &db.url)
        .env(
            "TOKENGATE_UPSTREAM_URL",
            format!("http://127.0.0.1:{closed}/v1"),
        )
        .env("TOKENGATE_SMTP_URL", format!("smtp://127.0.0.1:{closed}"))
        .env("TOKENGATE_SMTP_TIMEOUT_SECS", "2")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains("configuration: ok"), "{stdout}");
    assert!(
        stdout.contains(": ok") && stdout.contains("database"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("upstream") && l.contains("FAILED")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("mail") && l.contains("FAILED")),
        "{stdout}"
    );
    assert!(text(&out.stderr).contains("2 of 3 checks failed"));
}

/// Everything tokengate makes on disk is its own (0700 folders, 0600 files),
/// whatever the umask it was started with; what an earlier release left open is
/// closed at start. They hold the dashboard's session key, emails and code digests.
#[actix_web::test]
async fn the_files_tokengate_leaves_on_disk_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db_url = format!("sqlite://{}/tokengate.db", data.display());
    let fake = crate::fake_provider::FakeProvider::start();
    let port = free_port();
    let run = |args: &str| {
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(format!("umask 022; exec \"$TG\" {args}"))
            .env("TG", env!("CARGO_BIN_EXE_tokengate"))
            .env("TOKENGATE_DATABASE_URL", &db_url)
            .env("TOKENGATE_LISTEN", format!("127.0.0.1:{port}"))
            .env("TOKENGATE_UPSTREAM_URL", fake.base_url())
            .env("TOKENGATE_CLIENT_KEYS", CLIENT_KEY)
            .env("TOKENGATE_MAIL_DIR", data.join("mail"))
            .env(test_now_env().0, test_now_env().1)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if args.is_empty() {
            TokengateProcess::adopt(child)
        } else {
            assert!(child.wait().unwrap().success(), "{args}");
            TokengateProcess::adopt(child)
        }
    };
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let files = |data: &std::path::Path| -> Vec<(std::path::PathBuf, u32)> {
        let mut found = vec![(data.to_path_buf(), mode(data))];
        for sub in ["", "spool", "mail"] {
            for entry in std::fs::read_dir(data.join(sub))
                .into_iter()
                .flatten()
                .flatten()
            {
                found.push((entry.path(), mode(&entry.path())));
            }
        }
        found
    };
    let server = run("");
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&client, &base).await;
    assert_eq!(
        chat_process(
            &client,
            &base,
            USER,
            &chat_body("fake-model", "oi", false, Some(5))
        )
        .await
        .status(),
        200
    );
    drop(run("mail test ana@example.com"));
    let made = files(&data);
    assert!(
        made.iter().any(|(p, _)| p.ends_with("tokengate.db-wal")),
        "{made:?}"
    );
    assert!(
        made.iter()
            .any(|(p, _)| p.extension().is_some_and(|e| e == "eml")),
        "{made:?}"
    );
    for (path, m) in &made {
        let private = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*m, private, "{} is {m:o}", path.display());
    }
    drop(server);
    // Left open by an earlier release: closed at the next start.
    for (path, _) in &made {
        let open = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(open)).unwrap();
    }
    let _server = run("");
    wait_ready(&client, &base).await;
    // Every file, and the spool's folder; the data and mail folders are the
    // operator's to set (the data folder is by default the database's own).
    for (path, _) in &made {
        if path.is_file() || path.ends_with("spool") {
            let private = if path.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode(path), private, "{} after a restart", path.display());
        }
    }
    assert_eq!(mode(&data), 0o755, "the data folder is left as it was");
}
