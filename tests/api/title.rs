//! LibreChat's title request arrives at the same moment as a new conversation's
//! first message (its default `titleTiming: immediate`), names no limit, and so
//! holds a whole default completion (4,096) for an answer of a few tokens. Near the
//! end of a balance that hold used to cut the user's answer short, or refuse it
//! ("reserved for the answers in progress") though nothing of the user's ran. The
//! request whose limit only the user's own requests in flight would lower waits for
//! them first; zero overspend still holds.

use crate::helpers::*;
use serde_json::{Value, json};
use std::time::Duration;
use tokengate::proxy::Endpoint;

/// A title request as LibreChat sends it (`@librechat/agents`' default prompt).
fn title() -> Value {
    title_of("slow")
}

fn title_of(model: &str) -> Value {
    json!({"model": model, "stream": false, "messages": [{"role": "user", "content":
        "Provide a concise, 5-word-or-less title for the conversation, using title case conventions. Only return the title itself.\n\nConversation:\nUser: Explique a fotossíntese\nAI: "}]})
}

/// The conversation's first message, as LibreChat sends it: streamed, no limit.
fn first_message(model: &str) -> Value {
    chat_body(model, "Explique a fotossíntese", true, None)
}

/// The limit upstream was sent for `user`'s streamed chat.
fn chat_limit(app: &TestApp, user: &str) -> Option<i64> {
    app.fake
        .state
        .requests
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|r| r["user"] == user && r["stream"] == true)
        .and_then(|r| r["max_tokens"].as_i64())
}

async fn send(app: &TestApp, user: &str, body: &Value) -> u16 {
    let res = app.chat_as(user, body).await;
    let status = res.status().as_u16();
    let _ = res.bytes().await;
    status
}

/// Waits until `user` has `n` requests in flight.
async fn in_flight(app: &TestApp, user: &str, n: usize) {
    wait_until(Duration::from_secs(10), || {
        let holds = app.ledger().holds().unwrap();
        let found = app
            .ledger()
            .find_user(&tokengate::ledger::parse_user_ref(user))
            .unwrap()
            .is_some_and(|id| holds.iter().filter(|h| h.user_id == id).count() == n);
        async move { found }
    })
    .await;
}

#[actix_web::test]
async fn a_title_in_flight_neither_cuts_nor_refuses_the_users_answer() {
    let app = spawn_app(TestOptions::default()).await;
    let chat_prompt = estimated_prompt(&first_message("fake-model"), Endpoint::ChatCompletions);
    // With 5,045 left the answer used to be cut at about 900 tokens; with 1,950 it
    // was refused; so was it with a title that took a slow model 4 s.
    for (left, title_model) in [(5_045, "slow"), (1_950, "slow"), (1_951, "slower")] {
        app.default_plan(left);
        let user = format!("title-first-{left}");
        let title_body = title_of(title_model);
        let title_request = app.chat_as(&user, &title_body);
        let title_done = async {
            let res = title_request.await;
            assert_eq!(res.status(), 200);
            res.bytes().await.unwrap();
        };
        let chat = async {
            in_flight(&app, &user, 1).await;
            send(&app, &user, &first_message("fake-model")).await
        };
        let ((), status) = futures_util::join!(title_done, chat);
        assert_eq!(status, 200, "{left} left: the answer was refused");
        let records = app.ledger().usage_records(app.user_id(&user)).unwrap();
        let title_charge = records.iter().find(|r| r.stream == 0).unwrap().charged;
        let limit = chat_limit(&app, &user).unwrap();
        // What the balance alone allows, once the title is charged what it used.
        assert_eq!(
            limit,
            4_096.min(left - title_charge - chat_prompt),
            "{left} left"
        );
        let s = app.summary(&user);
        assert!(s.allowance_left + s.credits >= 0, "overspent");
        app.assert_invariant(&user);
    }
}

#[actix_web::test]
async fn a_title_after_the_answer_started_waits_for_it_and_is_served() {
    let app = spawn_app(TestOptions::default()).await;
    app.default_plan(1_950);
    let user = "chat-first";
    // The answer streams for a while ("slow"); the title arrives meanwhile.
    let chat_body = first_message("slow");
    let chat = app.chat_as(user, &chat_body);
    let chat_done = async {
        let res = chat.await;
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
    };
    let title_sent = async {
        in_flight(&app, user, 1).await;
        send(&app, user, &title()).await
    };
    let ((), title_status) = futures_util::join!(chat_done, title_sent);
    assert_eq!(title_status, 200);
    assert_eq!(
        chat_limit(&app, user).unwrap(),
        1_950 - estimated_prompt(&first_message("slow"), Endpoint::ChatCompletions),
        "the answer had the whole balance"
    );
    let s = app.summary(user);
    assert!(s.allowance_left + s.credits >= 0, "overspent");
    app.assert_invariant(user);
}

/// Sent at the very same moment, in whichever order they land: the answer is
/// never refused, its limit is never lowered by the title's hold, and nothing is
/// overspent.
#[actix_web::test]
async fn chat_and_title_sent_together_near_the_end_of_a_balance() {
    let app = spawn_app(TestOptions::default()).await;
    let chat_prompt = estimated_prompt(&first_message("fake-model"), Endpoint::ChatCompletions);
    for round in 0..10 {
        // A plan of its own each round (plans are named by their allowance).
        let left = if round % 2 == 0 { 5_045 } else { 1_950 } + round;
        app.default_plan(left);
        let user = format!("together-{round}");
        let (message, title_body) = (first_message("fake-model"), title());
        let (chat, titled) =
            futures_util::join!(send(&app, &user, &message), send(&app, &user, &title_body));
        assert_eq!(chat, 200, "round {round}: the answer was refused");
        assert!(matches!(titled, 200 | 402 | 429), "round {round}: {titled}");
        let limit = chat_limit(&app, &user).unwrap();
        // At worst the title was charged before the answer was reserved.
        let title_cost = crate::fake_provider::prompt_tokens_of(&title())
            + crate::fake_provider::NATURAL_COMPLETION;
        assert!(
            limit >= 4_096.min(left - chat_prompt - title_cost),
            "round {round}: cut to {limit} with {left} left"
        );
        let s = app.summary(&user);
        assert!(
            s.allowance_left + s.credits >= 0,
            "round {round}: overspent"
        );
        app.assert_invariant(&user);
    }
}
