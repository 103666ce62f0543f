//! The input side as one enum: [`Node::handle_input`] and the finished URLs of the outputs.

use super::*;
use crate::wire::Encoding;

#[test]
fn a_link_from_an_entity_the_trust_store_refuses_is_closed_with_its_code() {
    let mut bob = node("bob", NodeConfig::default());
    let now = T0;
    let mallory = Bearer::from(id("mallory"));
    let refused = bob.handle_input(
        now,
        Input::AcceptLink { kind: LinkKind::Peers, who: mallory, encoding: Encoding::Json },
    );
    assert_eq!(refused, Err(ErrorCode::AuthenticationFailed));
    let alice = bob.handle_input(
        now,
        Input::AcceptLink {
            kind: LinkKind::Peers,
            who: bearer("alice", now),
            encoding: Encoding::Json,
        },
    );
    assert!(matches!(alice, Ok(Handled::Link(_))), "{alice:?}");
    assert_eq!(bob.link_count(), 1);
}

#[test]
fn an_inbound_call_gives_the_id_its_answer_carries() {
    let mut bob = node("bob", NodeConfig::default());
    let now = T0;
    let call = HttpCall::poll(Some(Duration::ZERO));
    let Ok(Handled::Call(request)) =
        bob.handle_input(now, Input::HttpCall { who: bearer("alice", now), call })
    else {
        panic!("a call is taken");
    };
    let answers = drain(&mut bob);
    assert!(
        matches!(answers.as_slice(), [Output::HttpRespond { request: r, status: 200, .. }] if *r == request),
        "a zero wait answers at once: {answers:?}"
    );
}

#[test]
fn a_reconnecting_link_carries_the_session_to_resume_in_its_url() {
    let mut p = Pump::new(&[("alice", NodeConfig::default()), ("bob", NodeConfig::default())]);
    p.node("alice").add_route(id("bob"), Pump::addr("bob"));
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"one".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(1));
    let session = p
        .node("alice")
        .peers
        .get(&id("bob"))
        .and_then(|s| s.session.as_ref())
        .unwrap()
        .id()
        .clone();
    p.cut("alice");
    p.advance(Duration::from_secs(3));
    let urls: Vec<&str> =
        p.opened.iter().filter(|(n, _)| n == "alice").map(|(_, u)| u.as_str()).collect();
    assert_eq!(
        urls,
        vec![
            "ws://bob.test/ws/v1/peers".to_owned(),
            format!("ws://bob.test/ws/v1/peers?session_id={}", session.as_str())
        ],
    );
}

#[test]
fn a_lost_answer_fed_as_an_input_goes_back_to_the_callers_link() {
    let mut bob = node("bob", NodeConfig::default());
    let now = T0;
    let Ok(Handled::Link(link)) = bob.handle_input(
        now,
        Input::AcceptLink {
            kind: LinkKind::Peers,
            who: bearer("alice", now),
            encoding: Encoding::Json,
        },
    ) else {
        panic!("alice is trusted");
    };
    let _ = drain(&mut bob);
    let body = b"{\"not\":\"checked here\"}\n";
    assert_eq!(
        bob.handle_input(
            now,
            Input::HttpAnswerLost { to: id("alice"), body, encoding: Encoding::Json }
        ),
        Ok(Handled::Done)
    );
    let out = drain(&mut bob);
    assert!(
        matches!(out.as_slice(), [Output::Transmit { link: l, frame }] if *l == link && frame[..] == body[..body.len() - 1]),
        "{out:?}"
    );
}

#[test]
fn websocket_connected_follows_the_link_to_the_peer_or_its_next_hop() {
    let mut p = Pump::new(&[("alice", NodeConfig::default()), ("bob", NodeConfig::default())]);
    p.node("alice").add_route(id("bob"), Pump::addr("bob"));
    assert!(!p.node("alice").websocket_connected(&id("bob")), "no link yet");
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"one".to_vec(), SendOptions::default()).unwrap();
    assert!(!p.node("alice").websocket_connected(&id("bob")), "connecting is not connected");
    p.run();
    assert!(p.node("alice").websocket_connected(&id("bob")), "alice's link to bob's node");
    assert!(p.node("bob").websocket_connected(&id("alice")), "alice's link, at bob");
    assert!(!p.node("alice").websocket_connected(&id("carol")), "no route to carol");
    p.no_ws.push("bob".to_owned());
    p.cut("alice");
    assert!(!p.node("alice").websocket_connected(&id("bob")), "cut, and refused since");
    assert!(!p.node("bob").websocket_connected(&id("alice")));
}
