//! The in-chat notice: after a user crosses 80%, their next streamed text answer
//! ends with one line saying what is used and left and where to see it; once per
//! crossing, never in tool calls, structured output or answers that are not
//! streamed, and never changing what is charged. `TOKENGATE_CHAT_NOTICE=off` turns it
//! off.

use crate::helpers::*;
use serde_json::{Value, json};
use tokengate::domain::{TokenAmount, Weights};
use tokengate::ledger::{Actor, parse_user_ref};

const PUBLIC_URL: &str = "https://tokens.example.test";
const USER: &str = "nina-1";

async fn notice_app(extra: &[(&'static str, String)]) -> TestApp {
    let mut env = vec![("TOKENGATE_PUBLIC_URL", PUBLIC_URL.to_owned())];
    env.extend(extra.iter().cloned());
    let app = spawn_app(TestOptions {
        env,
        ..TestOptions::default()
    })
    .await;
    app.default_plan(1_000_000);
    app.ledger()
        .set_weights(
            "w1000",
            Weights::from_milli(1000, 1_000_000).unwrap().into(),
            &Actor::Cli,
        )
        .unwrap();
    app
}

async fn send(app: &TestApp, body: &Value) -> (u16, Vec<u8>) {
    let res = app.chat_as(USER, body).await;
    let status = res.status().as_u16();
    let bytes = res.bytes().await.unwrap().to_vec();
    app.settled();
    (status, bytes)
}

/// Spends (with answers that are not streamed) until `percent` of the plan is used.
async fn spend_past(app: &TestApp, percent: u8) {
    while app
        .ledger()
        .find_user(&parse_user_ref(USER))
        .unwrap()
        .is_none_or(|id| app.ledger().user_summary(id).unwrap().used_percent < percent)
    {
        let (status, body) = send(app, &chat_body("w1000", "oi", false, Some(40))).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
}

/// The `data:` payloads of a stream, in order.
fn events(stream: &[u8]) -> Vec<String> {
    String::from_utf8(stream.to_vec())
        .unwrap()
        .replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: ").map(str::to_owned))
        .collect()
}

fn notice_of(stream: &[u8]) -> Option<String> {
    let notices: Vec<String> = events(stream)
        .iter()
        .filter(|e| e.contains("chatcmpl-tokengate-notice"))
        .map(|e| {
            let v: Value = serde_json::from_str(e).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(notices.len() <= 1, "more than one notice: {notices:?}");
    notices.into_iter().next()
}

fn streamed() -> Value {
    chat_body("fake-model", "como vai", true, Some(20))
}

#[actix_web::test]
async fn the_first_streamed_text_answer_after_80_percent_ends_with_the_notice_once() {
    let app = notice_app(&[]).await;
    let (_, before) = send(&app, &streamed()).await;
    assert_eq!(notice_of(&before), None, "nothing to say below 80%");
    spend_past(&app, 80).await;

    // Answers that are not for a person to read, or not streamed, do not carry it;
    // the streams pass byte for byte as upstream sent them.
    let tools = {
        let mut b = streamed();
        b["tools"] = json!([{"type": "function", "function": {"name": "buscar", "parameters": {"type": "object", "properties": {}}}}]);
        b
    };
    let structured = {
        let mut b = streamed();
        b["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}});
        b
    };
    let two_choices = {
        let mut b = streamed();
        b["n"] = json!(2);
        b
    };
    for body in [&tools, &structured, &two_choices] {
        let (status, bytes) = send(&app, body).await;
        assert_eq!(status, 200);
        assert_eq!(bytes, app.fake.last_stream(), "unchanged: {body}");
    }
    let (_, title) = send(&app, &chat_body("fake-model", "título", false, Some(20))).await;
    assert!(!String::from_utf8_lossy(&title).contains("Atenção"));

    // The next streamed text answer: upstream's bytes, then the notice, then [DONE].
    let used_before = app.summary(USER).used_this_cycle;
    let (status, bytes) = send(&app, &streamed()).await;
    assert_eq!(status, 200);
    let notice = notice_of(&bytes).expect("the notice");
    let summary = app.summary(USER);
    let left = tokengate::i18n::tokens(
        summary.allowance_left + summary.credits,
        tokengate::config::Locale::PtBr,
    );
    assert_eq!(
        notice,
        format!(
            "\n\nAtenção: você já usou {}% dos seus tokens deste mês; restam {left}. Veja seu saldo: {PUBLIC_URL}/me",
            summary.used_this_cycle * 100
                / (summary.used_this_cycle + summary.allowance_left + summary.credits)
        )
    );
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let upstream = String::from_utf8(app.fake.last_stream()).unwrap();
    let (head, tail) = upstream.split_at(upstream.find("data: [DONE]").unwrap());
    assert!(
        text.starts_with(head),
        "upstream's bytes come first, unchanged"
    );
    assert!(text.ends_with(tail));
    // What was charged is upstream's usage, as without the notice.
    let usage: Value = events(&bytes)
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .find(|v| v["usage"].is_object())
        .unwrap()["usage"]
        .clone();
    assert_eq!(
        summary.used_this_cycle - used_before,
        usage["prompt_tokens"].as_i64().unwrap() + usage["completion_tokens"].as_i64().unwrap()
    );

    // Once per crossing.
    let (_, again) = send(&app, &streamed()).await;
    assert_eq!(notice_of(&again), None);

    // Credits bring the user back under 80%; crossing again says it again.
    app.ledger()
        .grant_credits(
            &parse_user_ref(USER),
            TokenAmount::new(500_000).unwrap(),
            &Actor::Cli,
            None,
        )
        .unwrap();
    let (_, under) = send(&app, &streamed()).await;
    assert_eq!(notice_of(&under), None);
    spend_past(&app, 80).await;
    let (_, crossed) = send(&app, &streamed()).await;
    assert!(notice_of(&crossed).is_some(), "re-armed by the credits");
}

#[actix_web::test]
async fn an_answer_that_fails_leaves_the_notice_for_the_next() {
    let app = notice_app(&[]).await;
    spend_past(&app, 80).await;
    // Upstream refuses, or the client leaves mid-answer: no notice was shown, so it
    // is due again (written in the background), and the next answer carries it.
    let (status, _) = send(&app, &chat_body("fail-500", "oi", true, Some(20))).await;
    assert_eq!(status, 500);
    notice_due_again(&app).await;
    let res = app
        .chat_as(USER, &chat_body("trickle", "oi", true, Some(20)))
        .await;
    assert_eq!(res.status(), 200);
    let mut stream = res.bytes_stream();
    futures_util::StreamExt::next(&mut stream)
        .await
        .unwrap()
        .unwrap();
    drop(stream);
    notice_due_again(&app).await;
    let (_, bytes) = send(&app, &streamed()).await;
    assert!(notice_of(&bytes).is_some());
}

/// Waits until the user's notice is due (again).
async fn notice_due_again(app: &TestApp) {
    use diesel::prelude::*;
    use tokengate::db::schema::balances;
    let id = app.user_id(USER);
    wait_until(std::time::Duration::from_secs(10), || {
        let mut c = app.ledger().db().conn().unwrap();
        let due: Option<chrono::NaiveDateTime> = balances::table
            .find(id)
            .select(balances::notice_due)
            .first(&mut c)
            .unwrap();
        async move { due.is_some() }
    })
    .await;
}

#[actix_web::test]
async fn only_the_highest_threshold_below_100_arms_the_notice_and_credits_disarm_it() {
    let app = notice_app(&[("TOKENGATE_ALERT_THRESHOLDS", "50,80,100".into())]).await;
    spend_past(&app, 50).await;
    let (_, bytes) = send(&app, &streamed()).await;
    assert_eq!(
        notice_of(&bytes),
        None,
        "50% mails, and says nothing in the chat"
    );
    spend_past(&app, 80).await;
    // Credits bring the user back under 80% before the next answer: the notice
    // would say what is no longer so.
    app.ledger()
        .grant_credits(
            &parse_user_ref(USER),
            TokenAmount::new(1_000_000).unwrap(),
            &Actor::Cli,
            None,
        )
        .unwrap();
    let (_, bytes) = send(&app, &streamed()).await;
    assert_eq!(notice_of(&bytes), None);
    spend_past(&app, 80).await;
    let (_, bytes) = send(&app, &streamed()).await;
    assert!(notice_of(&bytes).is_some(), "crossing 80% again");
}

#[actix_web::test]
async fn the_notice_can_be_turned_off() {
    let app = notice_app(&[("TOKENGATE_CHAT_NOTICE", "off".into())]).await;
    spend_past(&app, 80).await;
    let (_, bytes) = send(&app, &streamed()).await;
    assert_eq!(notice_of(&bytes), None);
    assert_eq!(bytes, app.fake.last_stream());
}

#[actix_web::test]
async fn english_notice() {
    let app = notice_app(&[("TOKENGATE_LOCALE", "en".into())]).await;
    spend_past(&app, 80).await;
    let (_, bytes) = send(&app, &streamed()).await;
    let notice = notice_of(&bytes).unwrap();
    assert!(
        notice.starts_with("\n\nNote: you have used 8")
            && notice.ends_with(&format!("left. See your balance: {PUBLIC_URL}/me")),
        "{notice}"
    );
}

/// The answer that takes the user past 80% says so itself, when it is a streamed
/// text answer: the user reads it under the answer that crossed, not a message
/// later. Once: the next answer says nothing.
#[actix_web::test]
async fn the_streamed_answer_that_crosses_80_percent_carries_the_notice_itself() {
    let app = notice_app(&[]).await;
    // Each answer of `w1000` costs about 4% of the plan: after 19, 76%.
    spend_past(&app, 76).await;
    assert!(app.summary(USER).used_percent < 80);
    let (status, bytes) = send(&app, &chat_body("w1000", "oi", true, Some(40))).await;
    assert_eq!(status, 200);
    assert!(app.summary(USER).used_percent >= 80);
    let notice = notice_of(&bytes).expect("the crossing answer carries the notice");
    assert!(notice.contains("você já usou 80%"), "{notice}");
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let (_, next) = send(&app, &streamed()).await;
    assert_eq!(notice_of(&next), None, "once per crossing");
}

/// An answer the balance stopped short ends with one line saying so and where to
/// get more; one that ended on its own, though its limit was lowered, does not;
/// neither does one whose limit was the client's own.
#[actix_web::test]
async fn an_answer_the_balance_stopped_says_so() {
    let app = notice_app(&[("TOKENGATE_CHAT_NOTICE", "off".into())]).await;
    app.default_plan(500);
    let user = "stopped-1";
    // `fill` writes until its limit: the balance (500) lowered it from 2,000.
    let res = app
        .chat_as(
            user,
            &chat_body("fill", "conte uma história", true, Some(2_000)),
        )
        .await;
    assert_eq!(res.status(), 200);
    let bytes = res.bytes().await.unwrap();
    let line = notice_of(&bytes).expect("why it stopped");
    assert_eq!(
        line,
        format!(
            "\n\nResposta interrompida: seu saldo de tokens não cobria mais do que isso. Veja seu saldo e como conseguir mais: {PUBLIC_URL}/me"
        )
    );
    app.settled();
    // Charged what upstream reported, as without the line.
    let charged = app.charged(user);
    let sent = app.fake.last_request()["max_tokens"].as_i64().unwrap();
    assert!(sent < 2_000);
    assert_eq!(
        charged,
        crate::fake_provider::prompt_tokens_of(&app.fake.last_request()) + sent
    );
    // Lowered, but the answer ended before the limit (40 tokens): nothing to say.
    let res = app
        .chat_as(
            "stopped-2",
            &chat_body("fake-model", "oi", true, Some(2_000)),
        )
        .await;
    let bytes = res.bytes().await.unwrap();
    assert_eq!(notice_of(&bytes), None);
    assert_eq!(bytes, app.fake.last_stream());
    // The client's own limit reached: not the balance's doing.
    let res = app
        .chat_as("stopped-3", &chat_body("fill", "oi", true, Some(30)))
        .await;
    let bytes = res.bytes().await.unwrap();
    assert_eq!(notice_of(&bytes), None);
}

/// LibreChat keeps tokengate's lines in the conversation and sends them back as
/// history: they are taken out before the estimate and before upstream, so they
/// are never billed; a user's own words that resemble them are left alone.
#[actix_web::test]
async fn the_lines_tokengate_added_never_go_back_upstream() {
    let app = notice_app(&[]).await;
    spend_past(&app, 80).await;
    let (_, bytes) = send(&app, &streamed()).await;
    let notice = notice_of(&bytes).expect("the notice");
    let answer = format!("tok tok tok{notice}");
    let quoted = format!("Você escreveu: {notice}");
    let history = json!({"model": "fake-model", "stream": true, "max_tokens": 20, "messages": [
        {"role": "user", "content": "como vai"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": quoted},
    ]});
    let (status, _) = send(&app, &history).await;
    assert_eq!(status, 200);
    let sent = app.fake.last_request();
    assert_eq!(sent["messages"][1]["content"], "tok tok tok");
    assert_eq!(
        sent["messages"][2]["content"],
        quoted.as_str(),
        "the user's own words"
    );
    assert_eq!(sent["messages"][0], history["messages"][0]);
    // Billed for the conversation without the line.
    let record = app
        .ledger()
        .recent_usage(app.user_id(USER), 1)
        .unwrap()
        .remove(0);
    let mut without = history.clone();
    without["messages"][1]["content"] = json!("tok tok tok");
    assert_eq!(
        record.prompt_tokens,
        crate::fake_provider::prompt_tokens_of(&without)
    );
}
