//! The command line, run as the real binary.

use crate::helpers::*;
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn tokengate(db: &TestDb, args: &[&str], stdin: Option<&str>) -> Output {
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

fn text(b: &[u8]) -> String {
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
