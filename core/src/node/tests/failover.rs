//! A next hop served at several URLs (the nodes of one cluster sharing its identity): after
//! `FAILOVER_AFTER` failed attempts in a row at one URL, the next is used, in turn.

use super::*;
use crate::node::hops::FAILOVER_AFTER;
use crate::wire::Encoding;

fn opened_url(outputs: &[Output]) -> Option<(LinkId, String)> {
    outputs.iter().find_map(|o| match o {
        Output::OpenLink { link, url, .. } => Some((*link, url.clone())),
        _ => None,
    })
}

/// Alice, WebSocket only, with the relay at `http://relay.test` and also at `http://relay2.test`.
fn alice_with_two_relay_urls() -> Node {
    let config =
        NodeConfig { preference: TransportPreference::WebsocketOnly, ..NodeConfig::default() };
    let mut alice = node("alice", config);
    alice.set_default_route(T0, Pump::addr("relay"));
    alice.set_failover_urls(&id("relay"), vec!["http://relay2.test".to_owned()]).unwrap();
    alice
}

/// Fails the link `link`, runs the reconnect timer, and returns the next link opened.
fn fail_and_reconnect(alice: &mut Node, link: LinkId, up_first: bool) -> (LinkId, String) {
    if up_first {
        alice.link_up(T0, link, Encoding::Json);
        drain(alice);
        alice.link_closed(T0, link);
    } else {
        alice.link_failed(T0, link);
    }
    drain(alice);
    let at = alice.poll_timeout().expect("a reconnect is scheduled");
    alice.handle_timeout(at);
    opened_url(&drain(alice)).expect("it reconnects")
}

#[test]
fn a_hop_that_keeps_failing_is_reached_at_its_next_url_and_back() {
    let mut alice = alice_with_two_relay_urls();
    let (mut link, url) = opened_url(&drain(&mut alice)).unwrap();
    assert!(url.starts_with("ws://relay.test/"), "{url}");
    let mut urls = Vec::new();
    for _ in 0..2 * FAILOVER_AFTER {
        let (next, url) = fail_and_reconnect(&mut alice, link, false);
        link = next;
        urls.push(url.split('/').nth(2).unwrap_or_default().to_owned());
    }
    // One failure stays; the second moves on; the same again moves back.
    assert_eq!(urls, ["relay.test", "relay2.test", "relay2.test", "relay.test"]);
    assert_eq!(alice.stats().failovers, 2);
}

#[test]
fn a_link_that_comes_up_starts_the_count_again() {
    let mut alice = alice_with_two_relay_urls();
    let (link, _) = opened_url(&drain(&mut alice)).unwrap();
    // Up, then lost, again and again (a flapping network, not a dead node): each loss is one
    // failure after a success, so the URL never changes.
    let (mut link, mut url) = fail_and_reconnect(&mut alice, link, true);
    for _ in 0..4 {
        assert!(url.starts_with("ws://relay.test/"), "{url}");
        (link, url) = fail_and_reconnect(&mut alice, link, true);
    }
    assert_eq!(alice.stats().failovers, 0);
}

#[test]
fn an_http_client_moves_its_polls_to_the_next_url() {
    let config = NodeConfig { preference: TransportPreference::HttpOnly, ..NodeConfig::default() };
    let mut alice = node("alice", config);
    alice.set_default_route(T0, Pump::addr("relay"));
    alice.set_failover_urls(&id("relay"), vec!["http://relay2.test".to_owned()]).unwrap();
    let mut now = T0;
    let mut hosts = Vec::new();
    for _ in 0..3 {
        let poll = drain(&mut alice).into_iter().find_map(|o| match o {
            Output::HttpRequest { request, url, .. } => Some((request, url)),
            _ => None,
        });
        let (request, url) = poll.expect("a poll");
        hosts.push(url.split('/').nth(2).unwrap_or_default().to_owned());
        alice.handle_http_failure(now, request);
        now = alice.poll_timeout().expect("the poll is retried");
        alice.handle_timeout(now);
    }
    assert_eq!(hosts, ["relay.test", "relay.test", "relay2.test"]);
}

#[test]
fn failover_urls_need_a_known_hop_and_ignore_duplicates() {
    let mut alice = node("alice", NodeConfig::default());
    let err = alice.set_failover_urls(&id("relay"), vec!["http://x.test".into()]);
    assert!(matches!(err, Err(SendError::Unreachable(_))));
    alice.set_default_route(T0, Pump::addr("relay"));
    // Only its own URL, twice: nothing to fail over to.
    let own = "http://relay.test".to_owned();
    alice.set_failover_urls(&id("relay"), vec![own.clone(), own]).unwrap();
    assert!(alice.hops.get(&id("relay")).is_some_and(|h| h.urls.is_empty()));
}

#[test]
fn messages_in_flight_when_the_relay_link_drops_wait_for_another_way_not_fail() {
    let mut p = via_relay(TransportPreference::WebsocketFirst);
    let now = p.now;
    p.node("bob").connect(now, &id("alice")).unwrap();
    p.node("alice").connect(now, &id("bob")).unwrap();
    p.node("alice").connect(now, &id("relay")).unwrap();
    p.run();
    p.advance(Duration::from_secs(1));
    assert!(p.node("alice").has_session(&id("relay")));
    for n in 0..50u8 {
        let now = p.now;
        p.node("alice").send(now, &id("bob"), vec![b'm', n], SendOptions::default()).unwrap();
    }
    p.cut("alice");
    p.run();
    let failed: Vec<_> =
        p.events_of("alice").into_iter().filter(|e| matches!(e, Event::Failed { .. })).collect();
    assert!(failed.is_empty(), "{failed:?}");
}
