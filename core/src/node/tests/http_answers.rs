//! Where a node's answers to an HTTP caller go (spec §21): the answers to a `POST` come back in
//! that `POST`'s response, whatever poll the caller holds.

use super::*;

/// Alice dials Bob directly; Bob refuses WebSocket, so everything goes over HTTP.
fn alice_posts_to_bob() -> Pump {
    let mut p = Pump::new(&[("alice", NodeConfig::default()), ("bob", NodeConfig::default())]);
    p.node("alice").add_route(id("bob"), Pump::addr("bob"));
    p.no_ws.push("bob".to_owned());
    p
}

#[test]
fn a_cold_first_message_is_delivered_at_once_though_a_dead_client_left_a_poll_held() {
    let mut p = alice_posts_to_bob();
    let now = p.now;
    // A previous process of alice's left a long poll held at bob and exited: whatever answers
    // it is written to a closed connection (the pump has no one waiting for it).
    let stale = p.node("bob").handle_http_request(now, bearer("alice", now), HttpCall::poll(None));
    assert!(drain(p.node("bob")).is_empty(), "the stale poll is held");
    // The new alice, with no session and no link: the handshake goes out in a POST.
    let m = p.node("alice").send(now, &id("bob"), b"hi".to_vec(), SendOptions::default()).unwrap();
    p.run();
    // Every handshake step and the message crossed in POST answers, at once (before the fix, the
    // INIT_ACK released the stale poll and was lost until the 5 s handshake timeout).
    assert_eq!(p.messages_at("bob"), vec![b"hi".to_vec()]);
    // Bob's acknowledgement follows after its short delay (spec §13.2), in alice's new poll.
    p.advance(Duration::from_millis(100));
    assert!(
        p.events_of("alice").iter().any(|e| matches!(e, Event::Delivered { id, .. } if *id == m)),
        "{:?}",
        p.events_of("alice")
    );
    assert!(!p.events.iter().any(|(_, e)| matches!(e, Event::Error { .. })), "{:?}", p.events);
    // The stale poll was released, empty, by the new alice's own poll.
    assert!(p.http.keys().all(|(_, r)| *r != stale));
}

#[test]
fn frames_arriving_for_a_caller_between_its_posts_still_release_its_poll() {
    let mut p = alice_posts_to_bob();
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"one".to_vec(), SendOptions::default()).unwrap();
    p.run();
    // Alice now holds a poll at bob, with nothing waiting: a message from bob releases it.
    p.node("bob").send(now, &id("alice"), b"back".to_vec(), SendOptions::default()).unwrap();
    p.run();
    assert_eq!(p.messages_at("alice"), vec![b"back".to_vec()]);
}

/// When a poll of `wait` from bob is answered, empty, by a node with a 25 s poll wait.
fn empty_poll_answered_after(wait: Option<Duration>) -> Duration {
    let mut relay = node("relay", NodeConfig::default());
    let poll = relay.handle_http_request(T0, bearer("bob", T0), HttpCall::poll(wait));
    let mut now = T0;
    loop {
        for out in drain(&mut relay) {
            if let Output::HttpRespond { request, status, body, .. } = out {
                assert_eq!((request, status, body.is_empty()), (poll, 200, true));
                return Duration::from_millis(now.as_unix_millis() - T0.as_unix_millis());
            }
        }
        now = relay.poll_timeout().expect("a held poll has a deadline");
        relay.handle_timeout(now);
    }
}

#[test]
fn a_poll_is_held_for_the_lesser_of_its_wait_ms_and_the_nodes_own_wait() {
    let secs = Duration::from_secs;
    assert_eq!(empty_poll_answered_after(None), secs(25));
    assert_eq!(empty_poll_answered_after(Some(secs(3))), secs(3));
    assert_eq!(empty_poll_answered_after(Some(secs(60))), secs(25));
    assert_eq!(empty_poll_answered_after(Some(Duration::ZERO)), Duration::ZERO);
}

#[test]
fn an_answer_written_to_a_gone_client_goes_back_to_the_mailbox_in_order() {
    let mut relay = node("relay", NodeConfig::default());
    let stale = relay.handle_http_request(T0, bearer("bob", T0), HttpCall::poll(None));
    drain(&mut relay);
    // Alice sends bob two frames through the relay: the first releases the stale poll.
    let mut lost = Vec::new();
    for n in 1..=2 {
        let call = HttpCall::post(ndjson_line(&opaque_for("alice", "bob", n)));
        relay.handle_http_request(T0, bearer("alice", T0), call);
        for out in drain(&mut relay) {
            if let Output::HttpRespond { request, body, .. } = out
                && request == stale
            {
                lost = body;
            }
        }
    }
    assert_eq!(lost, ndjson_line(&opaque_for("alice", "bob", 1)), "the stale poll took frame 1");
    // Its client had gone: the driver hands the answer back.
    relay.http_answer_lost(T0, &id("bob"), &lost, Encoding::Json);
    // Bob's new poll gets both frames, in order.
    let poll = relay.handle_http_request(T0, bearer("bob", T0), HttpCall::poll(None));
    let got = drain(&mut relay).into_iter().find_map(|o| match o {
        Output::HttpRespond { request, body, .. } if request == poll => Some(body),
        _ => None,
    });
    let mut both = ndjson_line(&opaque_for("alice", "bob", 1));
    both.extend(ndjson_line(&opaque_for("alice", "bob", 2)));
    assert_eq!(got, Some(both));
}

#[test]
fn a_lost_answer_that_does_not_fit_the_mailbox_is_dropped_not_grown_past_its_bound() {
    let config = NodeConfig { mailbox_messages: 2, ..NodeConfig::default() };
    let mut relay = node("relay", config);
    for n in 1..=2 {
        let call = HttpCall::post(ndjson_line(&opaque_for("alice", "bob", n)));
        relay.handle_http_request(T0, bearer("alice", T0), call);
    }
    drain(&mut relay);
    let mut lost = ndjson_line(&opaque_for("alice", "bob", 7));
    lost.extend(b"garbage that is not an envelope\n");
    relay.http_answer_lost(T0, &id("bob"), &lost, Encoding::Json);
    assert_eq!(relay.mailboxes.len(), 2, "the mailbox holds at most 2");
}
