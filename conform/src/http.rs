//! Plain HTTP exchanges with the node under test (ureq, statuses are not errors).

use std::time::Duration;

/// Largest body read from the node.
const MAX_BODY: u64 = 16 * 1024 * 1024;

/// An HTTP answer, reduced to what the cases check.
#[derive(Debug, Clone)]
pub(crate) struct Resp {
    pub status: u16,
    pub content_type: Option<String>,
    pub www_authenticate: Option<String>,
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as JSON, or a reason.
    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("body is not JSON ({e}): {}", crate::peer::preview(&self.body)))
    }

    /// Checks the status and the `{"error": CODE}` body of a refusal (spec §23.1).
    pub fn expect_refusal(&self, status: u16, code: &str) -> Result<(), String> {
        if self.status != status {
            return Err(format!(
                "expected HTTP {status} {code}, got HTTP {}: {}",
                self.status,
                crate::peer::preview(&self.body)
            ));
        }
        let v = self.json()?;
        let got = v.get("error").and_then(|e| e.as_str());
        if got != Some(code) {
            return Err(format!(
                "HTTP {status} as expected, but body `error` is {got:?}, expected {code:?}"
            ));
        }
        if status == 401 && self.www_authenticate.is_none() {
            return Err("HTTP 401 without a WWW-Authenticate header (spec §23.1)".into());
        }
        Ok(())
    }
}

pub(crate) fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .build()
        .into()
}

fn finish(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Resp, String> {
    let mut r = r.map_err(|e| format!("HTTP request failed: {e}"))?;
    let header =
        |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let content_type = header("content-type");
    let www_authenticate = header("www-authenticate");
    let status = r.status().as_u16();
    let body = r
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_vec()
        .map_err(|e| format!("reading the HTTP {status} body failed: {e}"))?;
    Ok(Resp { status, content_type, www_authenticate, body })
}

/// `GET url`, with an optional bearer token.
pub(crate) fn get(agent: &ureq::Agent, url: &str, token: Option<&str>) -> Result<Resp, String> {
    let mut req = agent.get(url);
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    finish(req.call())
}

/// `POST url` with a body of `content_type`.
pub(crate) fn post(
    agent: &ureq::Agent,
    url: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> Result<Resp, String> {
    post_accepting(agent, url, token, content_type, None, body)
}

/// [`post`] with an `Accept` header when `accept` is given.
pub(crate) fn post_accepting(
    agent: &ureq::Agent,
    url: &str,
    token: Option<&str>,
    content_type: &str,
    accept: Option<&str>,
    body: &[u8],
) -> Result<Resp, String> {
    let mut req = agent.post(url).header("content-type", content_type);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    finish(req.send(body))
}

/// Any method without a body.
pub(crate) fn other(agent: &ureq::Agent, method: &str, url: &str) -> Result<Resp, String> {
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .body(())
        .map_err(|e| format!("bad request: {e}"))?;
    finish(agent.run(req))
}
