//! What is answered stays written, with the world beside the server: the command
//! line and the dashboard used while traffic runs, then `kill -9`.

use crate::admin::Admin;
use crate::helpers::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The command line against the database at `url`, as an operator runs it next to
/// the server (`docker compose exec tokengate tokengate users show ...`).
fn cli(url: &str, args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(args)
        .env("TOKENGATE_DATABASE_URL", url)
        .env(test_now_env().0, test_now_env().1)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tokengate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn cli_json(url: &str, args: &[&str]) -> Value {
    serde_json::from_slice(&cli(url, args).stdout).unwrap()
}

/// The `-wal` file the server has open, by inode, and whether it is still the one
/// named `tokengate.db-wal` in the database's folder (not a deleted file).
fn assert_server_writes_the_wal(pid: u32, db: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let wal = db.with_extension("db-wal");
    let on_disk = std::fs::metadata(&wal)
        .unwrap_or_else(|e| {
            panic!(
                "{} is gone ({e}): the server writes to a deleted file",
                wal.display()
            )
        })
        .ino();
    let open: Vec<(String, u64)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            let name = target.display().to_string();
            name.contains("tokengate.db-wal").then(|| {
                (
                    name,
                    std::fs::metadata(fd.path()).map(|m| m.ino()).unwrap_or(0),
                )
            })
        })
        .collect();
    assert!(!open.is_empty(), "the server has no -wal open");
    for (name, ino) in open {
        assert!(
            !name.ends_with("(deleted)") && ino == on_disk,
            "the server writes to {name} (inode {ino}), not to {} (inode {on_disk})",
            wal.display()
        );
    }
}

/// Twelve new users chat, and after each chat an admin uses the command line
/// (`users show`, `users list`, `credits grant`) and the dashboard, as one does while
/// traffic runs. Every answer's user, usage record and ledger entry is visible to
/// those other processes within a second, the server keeps writing to the `-wal`
/// file on disk (SQLite), and all of it survives `kill -9`.
///
/// The check that opened the database file with `std::fs` before each new pool
/// connection used to drop SQLite's locks in the server: the command line then
/// deleted the server's `-wal` when it closed, and of twelve users one reached the
/// disk.
#[actix_web::test]
async fn the_command_line_and_the_dashboard_beside_the_server_lose_nothing() {
    let db = TestDb::new();
    let fake = crate::fake_provider::FakeProvider::start();
    let port = free_port();
    let mut server = tokengate_process(port, &db.url, &fake.base_url(), &[]);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&client, &base).await;
    let admin = Admin {
        client: reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        base: base.clone(),
        origin: base.clone(),
    };
    let res = admin
        .sign_in_as(crate::admin::ADMIN_EMAIL, crate::admin::ADMIN_PASSWORD)
        .await;
    assert_eq!(res.status(), 303);
    let sqlite_file = db
        .url
        .strip_prefix("sqlite://")
        .map(std::path::PathBuf::from);

    let mut expected = Vec::new();
    for i in 0..12 {
        let user = format!("cli-beside-{i:02}");
        let body = chat_body("fake-model", "Olá, tudo bem?", i % 2 == 0, Some(12));
        let res = chat_process(&client, &base, &user, &body).await;
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
        let cost = crate::fake_provider::prompt_tokens_of(&body) + 12;

        // Visible to another process within a second of the answer.
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
                .args(["users", "show", &user, "--json"])
                .env("TOKENGATE_DATABASE_URL", &db.url)
                .env(test_now_env().0, test_now_env().1)
                .output()
                .unwrap();
            let seen: Option<Value> = serde_json::from_slice(&out.stdout).ok();
            if seen.as_ref().is_some_and(|s| s["used_this_cycle"] == cost) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{user}'s charge not visible to the command line after 1 s: {seen:?} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut credits = 0;
        match i % 3 {
            0 => {
                let list = cli_json(&db.url, &["users", "list", "--json"]);
                assert_eq!(list.as_array().unwrap().len(), i + 1);
            }
            1 => {
                cli(
                    &db.url,
                    &["credits", "grant", &user, "1.000", "--note", "beside"],
                );
                credits = 1_000;
            }
            _ => {
                // The dashboard, several pages at once, opens new pooled connections
                // in the server.
                let pages = ["/admin", "/admin/users", "/admin/alerts", "/admin/audit"];
                let loads = pages.iter().map(|p| admin.page(p));
                futures_util::future::join_all(loads).await;
            }
        }
        expected.push((user, cost, credits));
        if let Some(file) = &sqlite_file {
            assert_server_writes_the_wal(server.id(), file);
        }
    }

    server.kill().unwrap();
    server.wait().unwrap();
    let list = cli_json(&db.url, &["users", "list", "--json"]);
    let users = list.as_array().unwrap();
    assert_eq!(users.len(), 12, "{list:#}");
    let ledger = observer_ledger(&db.url, &fake.base_url());
    for (user, cost, credits) in expected {
        let id = ledger
            .find_user(&tokengate::ledger::parse_user_ref(&user))
            .unwrap()
            .unwrap_or_else(|| panic!("{user} was lost"));
        let s = ledger.user_summary(id).unwrap();
        assert_eq!(
            (s.used_this_cycle, s.credits, s.held),
            (cost, credits, 0),
            "{user}"
        );
        let records = ledger.usage_records(id).unwrap();
        assert_eq!(records.len(), 1, "{user}: {records:?}");
        let kinds: Vec<String> = ledger
            .ledger_entries(id)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        let mut want = vec!["cycle_grant", "usage"];
        if credits > 0 {
            want.push("topup");
        }
        assert_eq!(kinds, want, "{user}");
        assert!(ledger.check_invariant(id).unwrap().holds(), "{user}");
    }
}

/// An answer whose last byte has left tokengate is charged after any crash, even
/// when the database stalls at that moment and the process is then killed: the end
/// of an answer waits for its settlement to be noted in the instance's journal
/// (SQLite), which the next start writes (without that, each of these answers went
/// free), or to be committed or, past a second, spooled (PostgreSQL). A request still in flight at the kill had reached upstream,
/// which bills at least its prompt: its hold is charged that, as an estimate, when
/// the process starts again. Before, answers ended before their settlements were
/// written, and those the kill caught were released free.
#[actix_web::test]
async fn answers_delivered_whole_are_charged_after_kill_9_while_the_database_stalls() {
    use crate::fake_provider::{FakeProvider, NATURAL_COMPLETION, prompt_tokens_of};
    use tokengate::proxy::Endpoint;
    let db = TestDb::new();
    let fake = FakeProvider::start();
    let port = free_port();
    let env = [("TOKENGATE_INSTANCE_ID", "durable-at-kill".to_owned())];
    let mut server = tokengate_process(port, &db.url, &fake.base_url(), &env);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&client, &base).await;
    let ledger = observer_ledger(&db.url, &fake.base_url());

    // Ten answers whose text is out, streamed and not, waiting for their end; five
    // that will never end.
    let finishing: Vec<(String, Value)> = (0..10)
        .map(|i| {
            (
                format!("durable-{i}"),
                chat_body("gated", "Olá, tudo bem?", i % 2 == 0, Some(100)),
            )
        })
        .collect();
    let answers = finishing.clone().into_iter().map(|(user, body)| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let res = chat_process(&client, &base, &user, &body).await;
            assert_eq!(res.status(), 200);
            String::from_utf8(res.bytes().await.unwrap().to_vec()).unwrap()
        }
    });
    let answers = actix_web::rt::spawn(futures_util::future::join_all(answers));
    let hanging = chat_body(
        "hang",
        "Uma pergunta que fica sem resposta",
        true,
        Some(100),
    );
    let mut open = Vec::new();
    for i in 0..5 {
        let mut res = chat_process(&client, &base, &format!("in-flight-{i}"), &hanging).await;
        let _ = res.chunk().await.unwrap();
        open.push(res);
    }
    wait_until(Duration::from_secs(20), || {
        let n = ledger.holds().unwrap().len();
        async move { n == 15 }
    })
    .await;

    // The database stalls; the answers end meanwhile and reach their clients whole.
    let stall = SettlementStall::take(&db.url);
    fake.open_gate();
    let answers = answers.await.unwrap();
    for (text, (_, body)) in answers.iter().zip(&finishing) {
        let whole = if body["stream"] == true {
            text.ends_with("data: [DONE]\n\n")
        } else {
            serde_json::from_str::<Value>(text).is_ok_and(|v| v["usage"].is_object())
        };
        assert!(whole, "{text}");
    }
    server.kill().unwrap();
    server.wait().unwrap();
    drop(open);
    drop(stall);

    let mut server = tokengate_process(port, &db.url, &fake.base_url(), &env);
    wait_ready(&client, &base).await;
    no_holds_left(&ledger).await;
    for (user, body) in &finishing {
        let id = ledger
            .find_user(&tokengate::ledger::parse_user_ref(user))
            .unwrap()
            .unwrap();
        let records = ledger.usage_records(id).unwrap();
        assert_eq!(records.len(), 1, "{user}: {records:?}");
        assert_eq!(
            (records[0].outcome.as_str(), records[0].charged),
            ("completed", prompt_tokens_of(body) + NATURAL_COMPLETION),
            "{user}: an answer it had whole went free"
        );
        assert!(ledger.check_invariant(id).unwrap().holds(), "{user}");
    }
    let prompt = estimated_prompt(&hanging, Endpoint::ChatCompletions);
    for i in 0..5 {
        let user = format!("in-flight-{i}");
        let id = ledger
            .find_user(&tokengate::ledger::parse_user_ref(&user))
            .unwrap()
            .unwrap();
        let r = &ledger.usage_records(id).unwrap()[0];
        assert_eq!(
            (r.outcome.as_str(), r.charged, r.estimated),
            ("abandoned", prompt, 1),
            "{user}: its prompt had reached upstream"
        );
        assert!(ledger.check_invariant(id).unwrap().holds(), "{user}");
    }
    server.kill().unwrap();
}
