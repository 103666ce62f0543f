//! The transport decision: how a frame reaches the next hop, over WebSocket (preferred) or HTTP
//! (the fallback), with HTTP result classification, HTTP retry backoff and a per-hop tracker that
//! keeps a flapping WebSocket link from bouncing traffic back and forth.
//!
//! Everything here is a pure function of its arguments; the node machine owns the links and feeds
//! link events and the current time in.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use crate::capabilities::Transport;
use crate::time::Timestamp;

/// The configured transport preference. Serialized as `"WEBSOCKET_FIRST"` etc.; parsing (and
/// deserializing) is case-insensitive and accepts `-` for `_`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TransportPreference {
    /// WebSocket or nothing: frames wait for the link and fail if it cannot be established.
    WebsocketOnly,
    /// WebSocket when the link is up and stable, HTTP otherwise (the default).
    #[default]
    WebsocketFirst,
    /// HTTP when the peer accepts it, WebSocket otherwise.
    HttpFirst,
    /// HTTP or nothing.
    HttpOnly,
}

impl TransportPreference {
    /// All preferences, in declaration order.
    pub const ALL: [TransportPreference; 4] =
        [Self::WebsocketOnly, Self::WebsocketFirst, Self::HttpFirst, Self::HttpOnly];

    /// The preference for one message. `Some(true)` asks for WebSocket first, `Some(false)` for
    /// HTTP first, `None` keeps `self`. A configured `*_ONLY` preference is never overridden.
    pub fn for_message(self, prefer_websocket: Option<bool>) -> TransportPreference {
        match (self, prefer_websocket) {
            (Self::WebsocketOnly | Self::HttpOnly, _) | (_, None) => self,
            (_, Some(true)) => Self::WebsocketFirst,
            (_, Some(false)) => Self::HttpFirst,
        }
    }

    /// The configuration name: `"WEBSOCKET_ONLY"`, `"WEBSOCKET_FIRST"`, `"HTTP_FIRST"` or
    /// `"HTTP_ONLY"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WebsocketOnly => "WEBSOCKET_ONLY",
            Self::WebsocketFirst => "WEBSOCKET_FIRST",
            Self::HttpFirst => "HTTP_FIRST",
            Self::HttpOnly => "HTTP_ONLY",
        }
    }
}

impl fmt::Display for TransportPreference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`TransportPreference`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsePreferenceError(pub String);

impl fmt::Display for ParsePreferenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown transport preference {:?}", self.0)
    }
}

impl std::error::Error for ParsePreferenceError {}

impl FromStr for TransportPreference {
    type Err = ParsePreferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let normalized = s.replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(&normalized))
            .ok_or_else(|| ParsePreferenceError(s.to_owned()))
    }
}

impl<'de> serde::Deserialize<'de> for TransportPreference {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// State of the WebSocket link to one next hop, as the node machine tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsLink {
    /// No link and no attempt under way.
    Down,
    /// A connect attempt is under way.
    Connecting,
    /// The link is open, since the given time.
    Up {
        /// When the link came up.
        since: Timestamp,
    },
}

/// What to do with a frame now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Write it on the WebSocket link now.
    WebSocket,
    /// Keep it queued on the link: flush it when the link is up and usable, or apply
    /// [`on_connect_failed`] if the connect fails. If the link is [`WsLink::Down`] the caller
    /// opens it (lazy connect).
    WaitForWebSocket,
    /// POST it over HTTP now.
    Http,
    /// Report the failure to the application.
    Fail(RouteFailure),
}

/// Why a frame cannot be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteFailure {
    /// `WEBSOCKET_ONLY`, and WebSocket is not available (the peer lacks it or the connect failed).
    WebSocketUnavailable,
    /// `HTTP_ONLY`, but the peer's capabilities lack `"http"`.
    HttpNotSupported,
    /// No transport is left: the peer supports neither, or WebSocket failed and it lacks HTTP.
    NoTransport,
}

/// Inputs of one [`route`] decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteQuery {
    /// The preference, already combined with the per-message override
    /// ([`TransportPreference::for_message`]).
    pub preference: TransportPreference,
    /// What the next hop supports: `(websocket, http)`. A legacy HTTP-only peer has
    /// `websocket = false` and is reached over HTTP without trying WebSocket.
    pub peer_transports: (bool, bool),
    /// The WebSocket link to the next hop.
    pub ws: WsLink,
    /// The current time (informational: link stability is already folded into `ws_usable`).
    pub now: Timestamp,
    /// [`HopTransport::websocket_usable`] at `now`; ignored unless `ws` is up.
    pub ws_usable: bool,
}

/// Decides what to do with one frame. "Ready" means the link is `Up` and `ws_usable`; "held" means
/// `Up` but not usable yet (anti-flapping hold). Rows are checked top to bottom:
///
/// | peer (ws, http) | preference | link | route |
/// |---|---|---|---|
/// | (no, no) | any | any | `Fail(NoTransport)` |
/// | (no, yes) | `WEBSOCKET_ONLY` | any | `Fail(WebSocketUnavailable)` |
/// | (no, yes) | other | any | `Http` |
/// | (yes, yes) | `HTTP_ONLY`, `HTTP_FIRST` | any | `Http` |
/// | (yes, no) | `HTTP_ONLY` | any | `Fail(HttpNotSupported)` |
/// | (yes, no) | `HTTP_FIRST` | any | as `WEBSOCKET_ONLY` (next two rows) |
/// | (yes, any) | `WEBSOCKET_ONLY` | ready | `WebSocket` |
/// | (yes, any) | `WEBSOCKET_ONLY` | held, `Connecting`, `Down` | `WaitForWebSocket` |
/// | (yes, any) | `WEBSOCKET_FIRST` | ready | `WebSocket` |
/// | (yes, any) | `WEBSOCKET_FIRST` | `Connecting` | `WaitForWebSocket` |
/// | (yes, yes) | `WEBSOCKET_FIRST` | held, `Down` | `Http` |
/// | (yes, no) | `WEBSOCKET_FIRST` | held, `Down` | `WaitForWebSocket` |
pub fn route(q: &RouteQuery) -> Route {
    use TransportPreference as P;
    let (peer_ws, peer_http) = q.peer_transports;
    let ready = matches!(q.ws, WsLink::Up { .. }) && q.ws_usable;
    match (peer_ws, peer_http, q.preference) {
        (false, false, _) => Route::Fail(RouteFailure::NoTransport),
        (false, true, P::WebsocketOnly) => Route::Fail(RouteFailure::WebSocketUnavailable),
        (false, true, _) | (true, true, P::HttpOnly | P::HttpFirst) => Route::Http,
        (true, false, P::HttpOnly) => Route::Fail(RouteFailure::HttpNotSupported),
        _ if ready => Route::WebSocket,
        (true, _, P::WebsocketOnly | P::HttpFirst) => Route::WaitForWebSocket,
        (true, _, P::WebsocketFirst) => match q.ws {
            WsLink::Connecting => Route::WaitForWebSocket,
            WsLink::Down | WsLink::Up { .. } if peer_http => Route::Http,
            WsLink::Down | WsLink::Up { .. } => Route::WaitForWebSocket,
        },
    }
}

/// What happens to frames waiting on a WebSocket link whose connect failed: `WEBSOCKET_ONLY`
/// fails with [`RouteFailure::WebSocketUnavailable`]; any other preference falls back to HTTP if
/// the peer accepts it and fails with [`RouteFailure::NoTransport`] otherwise.
pub fn on_connect_failed(preference: TransportPreference, peer_http: bool) -> Route {
    match preference {
        TransportPreference::WebsocketOnly => Route::Fail(RouteFailure::WebSocketUnavailable),
        _ if peer_http => Route::Http,
        _ => Route::Fail(RouteFailure::NoTransport),
    }
}

/// Classification of an HTTP result: 4xx is not retried, 5xx is retried and then reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpOutcome {
    /// 2xx: the next hop took the frame.
    Delivered,
    /// 4xx other than 408 and 429: the frame is refused; do not retry.
    Rejected,
    /// 5xx, 408, 429, or no response at all (transport failure): retry per [`HttpRetry`].
    Retry,
    /// 1xx, 3xx or a non-HTTP status: callers treat it as [`HttpOutcome::Rejected`].
    Unexpected,
}

/// Classifies an HTTP status; `None` means the request failed before a response arrived.
pub fn classify_http(status: Option<u16>) -> HttpOutcome {
    match status {
        None | Some(408 | 429 | 500..=599) => HttpOutcome::Retry,
        Some(200..=299) => HttpOutcome::Delivered,
        Some(400..=499) => HttpOutcome::Rejected,
        Some(_) => HttpOutcome::Unexpected,
    }
}

/// HTTP retry policy for [`HttpOutcome::Retry`] results: exponential backoff, capped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRetry {
    /// Attempts in total, the first one included. Default 3.
    pub max_attempts: u32,
    /// Delay after the first failed attempt. Default 500 ms.
    pub initial: Duration,
    /// Largest delay. Default 4 s.
    pub max: Duration,
}

impl Default for HttpRetry {
    fn default() -> Self {
        Self { max_attempts: 3, initial: Duration::from_millis(500), max: Duration::from_secs(4) }
    }
}

impl HttpRetry {
    /// The delay after the `attempt`-th failed attempt (1-based; 0 is read as 1): `initial`
    /// doubled `attempt - 1` times, capped at `max`. `None` once `attempt >= max_attempts`: give
    /// up and report the error to the application.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let doublings = attempt.saturating_sub(1);
        let delay = 2u32
            .checked_pow(doublings)
            .and_then(|f| self.initial.checked_mul(f))
            .unwrap_or(self.max);
        Some(delay.min(self.max))
    }
}

/// Per-next-hop transport tracker with anti-flapping. The first WebSocket link of a hop is usable
/// as soon as it is up; after any WebSocket failure, a link is usable only once it has been up for
/// `stable_after` (counted from the later of its `since` and the last failure), and until then
/// traffic goes over HTTP. Counts switches between transports actually used.
#[derive(Debug, Clone)]
pub struct HopTransport {
    stable_after: Duration,
    ws: WsLink,
    last_failure: Option<Timestamp>,
    last_used: Option<Transport>,
    switches: u64,
}

impl Default for HopTransport {
    /// A tracker with the default hold of [`HopTransport::DEFAULT_STABLE_AFTER`].
    fn default() -> Self {
        Self::new(Self::DEFAULT_STABLE_AFTER)
    }
}

impl HopTransport {
    /// The default time a link must stay up after a failure before it carries traffic again.
    pub const DEFAULT_STABLE_AFTER: Duration = Duration::from_secs(1);

    /// A tracker for a hop with no link yet.
    pub fn new(stable_after: Duration) -> Self {
        Self { stable_after, ws: WsLink::Down, last_failure: None, last_used: None, switches: 0 }
    }

    /// The WebSocket link state last set.
    pub fn ws(&self) -> WsLink {
        self.ws
    }

    /// Records a change of the WebSocket link: `Up { since }`, `Connecting` or `Down`.
    pub fn set_ws(&mut self, state: WsLink) {
        self.ws = state;
    }

    /// Whether the WebSocket link may carry traffic at `now`: it is up, and either no WebSocket
    /// failure happened since the tracker was created or [`HopTransport::usable_at`] has passed.
    pub fn websocket_usable(&self, now: Timestamp) -> bool {
        match (self.ws, self.usable_at()) {
            (WsLink::Up { .. }, None) => true,
            (WsLink::Up { .. }, Some(at)) => now >= at,
            (WsLink::Down | WsLink::Connecting, _) => false,
        }
    }

    /// Records that traffic was sent over `t`. Returns `Some((from, to))` when this differs from
    /// the transport used last (a switch to report), `None` otherwise and on the first use.
    pub fn note_used(&mut self, t: Transport) -> Option<(Transport, Transport)> {
        let previous = self.last_used.replace(t);
        match previous {
            Some(from) if from != t => {
                self.switches = self.switches.saturating_add(1);
                Some((from, t))
            }
            _ => None,
        }
    }

    /// Records a WebSocket failure at `now` (the link dropped or a send failed). The link state is
    /// unchanged; the caller reports `Down` through [`HopTransport::set_ws`] when it closes it.
    pub fn note_ws_failure(&mut self, now: Timestamp) {
        self.last_failure = Some(now);
    }

    /// When the link becomes usable, if it is up but subject to the anti-flapping hold (a failure
    /// has happened): `max(since, last failure) + stable_after`, which may already be past. `None`
    /// when the link is not up or no failure has happened (usable at once).
    pub fn usable_at(&self) -> Option<Timestamp> {
        match (self.ws, self.last_failure) {
            (WsLink::Up { since }, Some(failure)) => {
                Some(since.max(failure).saturating_add(self.stable_after))
            }
            _ => None,
        }
    }

    /// How many switches [`HopTransport::note_used`] has reported.
    pub fn switches(&self) -> u64 {
        self.switches
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TransportPreference as P;
    use proptest::prelude::*;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    #[test]
    fn route_table() {
        use Route::{Http as H, WaitForWebSocket as Q, WebSocket as W};
        const NT: Route = Route::Fail(RouteFailure::NoTransport);
        const WU: Route = Route::Fail(RouteFailure::WebSocketUnavailable);
        const HN: Route = Route::Fail(RouteFailure::HttpNotSupported);
        // (preference, (peer ws, peer http), [Down, Connecting, Up held, Up usable])
        let table = [
            (P::WebsocketOnly, (false, false), [NT, NT, NT, NT]),
            (P::WebsocketOnly, (false, true), [WU, WU, WU, WU]),
            (P::WebsocketOnly, (true, false), [Q, Q, Q, W]),
            (P::WebsocketOnly, (true, true), [Q, Q, Q, W]),
            (P::WebsocketFirst, (false, false), [NT, NT, NT, NT]),
            (P::WebsocketFirst, (false, true), [H, H, H, H]),
            (P::WebsocketFirst, (true, false), [Q, Q, Q, W]),
            (P::WebsocketFirst, (true, true), [H, Q, H, W]),
            (P::HttpFirst, (false, false), [NT, NT, NT, NT]),
            (P::HttpFirst, (false, true), [H, H, H, H]),
            (P::HttpFirst, (true, false), [Q, Q, Q, W]),
            (P::HttpFirst, (true, true), [H, H, H, H]),
            (P::HttpOnly, (false, false), [NT, NT, NT, NT]),
            (P::HttpOnly, (false, true), [H, H, H, H]),
            (P::HttpOnly, (true, false), [HN, HN, HN, HN]),
            (P::HttpOnly, (true, true), [H, H, H, H]),
        ];
        let up = WsLink::Up { since: at(5) };
        for (preference, peer_transports, [down, connecting, held, ready]) in table {
            let cases = [
                (WsLink::Down, false, down),
                (WsLink::Down, true, down),
                (WsLink::Connecting, false, connecting),
                (WsLink::Connecting, true, connecting),
                (up, false, held),
                (up, true, ready),
            ];
            for (ws, ws_usable, expected) in cases {
                let q = RouteQuery { preference, peer_transports, ws, now: at(10), ws_usable };
                assert_eq!(route(&q), expected, "{q:?}");
            }
        }
    }

    #[test]
    fn connect_failure_table() {
        let wu = Route::Fail(RouteFailure::WebSocketUnavailable);
        let nt = Route::Fail(RouteFailure::NoTransport);
        for (preference, with_http, without_http) in [
            (P::WebsocketOnly, wu, wu),
            (P::WebsocketFirst, Route::Http, nt),
            (P::HttpFirst, Route::Http, nt),
            (P::HttpOnly, Route::Http, nt),
        ] {
            assert_eq!(on_connect_failed(preference, true), with_http);
            assert_eq!(on_connect_failed(preference, false), without_http);
        }
    }

    fn any_link() -> impl Strategy<Value = WsLink> {
        prop_oneof![
            Just(WsLink::Down),
            Just(WsLink::Connecting),
            any::<u64>().prop_map(|ms| WsLink::Up { since: at(ms) })
        ]
    }

    proptest! {
        #[test]
        fn route_invariants(
            preference in proptest::sample::select(P::ALL.to_vec()),
            peer_transports in any::<(bool, bool)>(),
            ws in any_link(),
            (now, ws_usable) in any::<(u64, bool)>(),
        ) {
            let q = RouteQuery { preference, peer_transports, ws, now: at(now), ws_usable };
            let r = route(&q);
            if !matches!(q.ws, WsLink::Up { .. }) {
                prop_assert_ne!(r, Route::WebSocket);
            }
            if !q.peer_transports.1 {
                prop_assert_ne!(r, Route::Http);
            }
            if q.preference == P::WebsocketOnly {
                prop_assert!(matches!(r, Route::Fail(_) | Route::WaitForWebSocket | Route::WebSocket));
            }
            if q.preference == P::HttpOnly {
                prop_assert!(!matches!(r, Route::WebSocket | Route::WaitForWebSocket));
            }
        }

        #[test]
        fn for_message_keeps_only(
            p in proptest::sample::select(P::ALL.to_vec()),
            o in proptest::option::of(any::<bool>()),
        ) {
            let expected = match (p, o) {
                (P::WebsocketOnly | P::HttpOnly, _) | (_, None) => p,
                (_, Some(true)) => P::WebsocketFirst,
                (_, Some(false)) => P::HttpFirst,
            };
            prop_assert_eq!(p.for_message(o), expected);
        }

        /// After a failure, the link is usable only once it has been up (per the caller's
        /// `set_ws` events) for `stable_after` since both the failure and the link coming up, and
        /// then it is usable.
        #[test]
        fn hold_after_failure(
            stable in 1u64..1500,
            events in proptest::collection::vec((0u64..2000, 0u8..5), 1..60),
        ) {
            let mut hop = HopTransport::new(Duration::from_millis(stable));
            let (mut now, mut up_since, mut failure) = (0u64, None::<u64>, None::<u64>);
            for (delta, kind) in events {
                now += delta;
                match kind {
                    0 => { hop.set_ws(WsLink::Up { since: at(now) }); up_since = Some(now); }
                    1 => { hop.set_ws(WsLink::Connecting); up_since = None; }
                    2 => { hop.set_ws(WsLink::Down); up_since = None; }
                    3 => { hop.note_ws_failure(at(now)); failure = Some(now); }
                    _ => {}
                }
                let usable = hop.websocket_usable(at(now));
                let expected = match (up_since, failure) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(u), Some(f)) => now - u.max(f) >= stable,
                };
                prop_assert_eq!(usable, expected, "now {} up {:?} failure {:?}", now, up_since, failure);
                if let (Some(u), Some(f)) = (up_since, failure) {
                    let t = u.max(f) + stable;
                    prop_assert_eq!(hop.usable_at(), Some(at(t)));
                    prop_assert!(!hop.websocket_usable(at(t - 1)) && hop.websocket_usable(at(t)));
                } else {
                    prop_assert_eq!(hop.usable_at(), None);
                }
            }
        }

        /// Following `route` over a link that flaps (up and down phases of random lengths, a
        /// failure at each drop): any three consecutive switches span at least `stable_after`,
        /// i.e. at most two switches per hold period.
        #[test]
        fn flapping_is_damped(phases in proptest::collection::vec((1u64..1500, 1u64..1500), 3..40)) {
            let stable = 1000;
            let mut hop = HopTransport::new(Duration::from_millis(stable));
            let (mut now, mut switch_times) = (0u64, Vec::new());
            for (up, down) in phases {
                hop.set_ws(WsLink::Up { since: at(now) });
                for t in [now + up / 2, now + up - 1, now + up + down / 2] {
                    if t == now + up + down / 2 {
                        hop.note_ws_failure(at(now + up));
                        hop.set_ws(WsLink::Down);
                    }
                    let q = RouteQuery {
                        preference: P::WebsocketFirst,
                        peer_transports: (true, true),
                        ws: hop.ws(),
                        now: at(t),
                        ws_usable: hop.websocket_usable(at(t)),
                    };
                    let used = match route(&q) {
                        Route::WebSocket => Transport::WebSocket,
                        other => { prop_assert_eq!(other, Route::Http); Transport::Http }
                    };
                    if hop.note_used(used).is_some() {
                        switch_times.push(t);
                    }
                }
                now += up + down;
            }
            prop_assert_eq!(hop.switches(), switch_times.len() as u64);
            for w in switch_times.windows(3) {
                if let [first, _, third] = w {
                    prop_assert!(third - first >= stable, "switches at {:?}", switch_times);
                }
            }
        }
    }

    #[test]
    fn returns_to_websocket_after_hold() {
        let mut hop = HopTransport::default();
        hop.set_ws(WsLink::Up { since: at(100) });
        assert!(hop.websocket_usable(at(100)), "first connection is usable at once");
        assert_eq!(hop.usable_at(), None);
        assert_eq!(hop.note_used(Transport::WebSocket), None);
        assert_eq!(hop.note_used(Transport::WebSocket), None);
        hop.note_ws_failure(at(200));
        hop.set_ws(WsLink::Down);
        assert!(!hop.websocket_usable(at(200)));
        assert_eq!(hop.note_used(Transport::Http), Some((Transport::WebSocket, Transport::Http)));
        hop.set_ws(WsLink::Up { since: at(300) });
        assert_eq!(hop.usable_at(), Some(at(1300)));
        assert!(!hop.websocket_usable(at(1299)));
        assert!(hop.websocket_usable(at(1300)));
        assert_eq!(
            hop.note_used(Transport::WebSocket),
            Some((Transport::Http, Transport::WebSocket))
        );
        assert_eq!(hop.switches(), 2);
    }

    #[test]
    fn http_classification() {
        assert_eq!(classify_http(None), HttpOutcome::Retry);
        for (statuses, expected) in [
            (&[200, 204, 299][..], HttpOutcome::Delivered),
            (&[400, 404, 407, 409, 428, 430, 499], HttpOutcome::Rejected),
            (&[408, 429, 500, 503, 599], HttpOutcome::Retry),
            (&[0, 100, 199, 301, 399, 600, u16::MAX], HttpOutcome::Unexpected),
        ] {
            for &status in statuses {
                assert_eq!(classify_http(Some(status)), expected, "{status}");
            }
        }
    }

    #[test]
    fn retry_backoff() {
        let ms = Duration::from_millis;
        let d = HttpRetry::default();
        assert_eq!((d.max_attempts, d.initial, d.max), (3, ms(500), ms(4000)));
        assert_eq!(d.delay_after(0), Some(ms(500)));
        assert_eq!(d.delay_after(1), Some(ms(500)));
        assert_eq!(d.delay_after(2), Some(ms(1000)));
        assert_eq!(d.delay_after(3), None);
        assert_eq!(d.delay_after(u32::MAX), None);
        let long = HttpRetry { max_attempts: 8, ..HttpRetry::default() };
        let delays = [1, 2, 3, 4, 5, 7, 8].map(|a| long.delay_after(a));
        // 0 stands for None: give up.
        let expected = [500, 1000, 2000, 4000, 4000, 4000, 0].map(|m| (m > 0).then(|| ms(m)));
        assert_eq!(delays, expected);
        let huge = HttpRetry { max_attempts: u32::MAX, initial: ms(1000), max: Duration::MAX };
        assert_eq!(huge.delay_after(11), Some(ms(1_024_000)));
        assert_eq!(huge.delay_after(100), Some(Duration::MAX));
        let capped = HttpRetry { max_attempts: 5, initial: Duration::MAX, max: ms(7) };
        assert_eq!(capped.delay_after(1), Some(ms(7)));
    }

    #[test]
    fn preference_parsing() {
        for s in ["WEBSOCKET_FIRST", "websocket_first", "websocket-first", "WebSocket-First"] {
            assert_eq!(s.parse::<TransportPreference>(), Ok(P::WebsocketFirst), "{s}");
        }
        assert_eq!("http-only".parse::<TransportPreference>(), Ok(P::HttpOnly));
        for s in ["ws", "", "websocketfirst", " HTTP_ONLY", "HTTP_ONLY_"] {
            assert!(s.parse::<TransportPreference>().is_err(), "{s}");
        }
        for p in P::ALL {
            assert_eq!(p.as_str().parse::<TransportPreference>(), Ok(p));
            let json = serde_json::to_string(&p).map_err(|e| e.to_string());
            assert_eq!(json, Ok(format!("\"{}\"", p.as_str())));
            let back = json.and_then(|j| {
                serde_json::from_str::<TransportPreference>(&j).map_err(|e| e.to_string())
            });
            assert_eq!(back, Ok(p));
        }
        assert_eq!(P::default(), P::WebsocketFirst);
        assert_eq!(
            serde_json::from_str::<TransportPreference>("\"http-first\"").ok(),
            Some(P::HttpFirst)
        );
        assert!(serde_json::from_str::<TransportPreference>("\"ws\"").is_err());
    }
}
