//! Test fixtures (feature `testing`): a kube `Client` over a tower-test mock service, and an
//! API server stand-in that asserts each request's method, path and body
//! and answers it (controller-rs's `ApiServerVerifier` pattern).
//!
//! A test runs the code under test and the verifier's script side by side
//! (`tokio::join!`), then drops every clone of the client and calls
//! [`ApiServerVerifier::expect_no_more`], which fails on any request the
//! script did not expect.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle, SendResponse};

/// How long the verifier waits for a request (or for the client to go)
/// before failing the test.
const PATIENCE: Duration = Duration::from_secs(5);

/// The server side of a mocked API server.
pub struct ApiServerVerifier(Handle<Request<Body>, Response<Body>>);

/// A client whose requests go to the returned verifier.
pub fn mock_client() -> (Client, ApiServerVerifier) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServerVerifier(handle))
}

/// A request as the verifier saw it.
#[derive(Debug)]
pub struct Seen {
    /// Its `content-type` header.
    pub content_type: Option<String>,
    /// Its body as JSON (`Null` when empty).
    pub body: Value,
}

/// A request left unanswered until this is dropped.
pub struct Hung(#[allow(dead_code)] SendResponse<Response<Body>>);

/// A `metav1.Status` failure body with `code`, as the API server sends it.
pub fn status_failure(code: u16, reason: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("{reason} (test)"),
        "reason": reason,
        "code": code,
    })
}

impl ApiServerVerifier {
    /// Takes the next request, asserts its method and path (with query), and
    /// answers `code` with `reply`. Fails the test when none comes in time.
    pub async fn expect(&mut self, method: Method, path: &str, code: u16, reply: Value) -> Seen {
        let (seen, send) = self.next(method, path).await;
        let response = Response::builder()
            .status(StatusCode::from_u16(code).expect("status code"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&reply).expect("reply")))
            .expect("response");
        send.send_response(response);
        seen
    }

    /// Takes the next request like [`expect`](Self::expect) but leaves it
    /// unanswered while the returned handle lives: an API server that hangs.
    pub async fn expect_and_hang(&mut self, method: Method, path: &str) -> Hung {
        let (_, send) = self.next(method, path).await;
        Hung(send)
    }

    async fn next(&mut self, method: Method, path: &str) -> (Seen, SendResponse<Response<Body>>) {
        let (request, send) = tokio::time::timeout(PATIENCE, self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
            .unwrap_or_else(|| panic!("client gone; expected {method} {path}"));
        let got_path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        assert_eq!(
            (request.method(), got_path.as_str()),
            (&method, path),
            "request method and path"
        );
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("request body is JSON")
        };
        (Seen { content_type, body }, send)
    }

    /// Takes the next request as an `events.k8s.io` Event POST in
    /// `namespace` (what kube's `Recorder` sends) and answers 201.
    pub async fn expect_event(&mut self, namespace: &str) -> Seen {
        let path = format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events?");
        let reply = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": { "name": "ev.1", "namespace": namespace },
            "eventTime": "2026-11-25T12:00:00.000000Z",
        });
        self.expect(Method::POST, &path, 201, reply).await
    }

    /// Asserts that the client sent nothing more before every clone of it
    /// was dropped. Waiting for the client to go, rather than for a quiet
    /// moment, cannot miss a request that comes late.
    pub async fn expect_no_more(mut self) {
        match tokio::time::timeout(PATIENCE, self.0.next_request()).await {
            Ok(None) => {}
            Ok(Some((request, _))) => {
                panic!("unexpected request {} {}", request.method(), request.uri())
            }
            Err(_) => panic!("the client is still alive: drop it before expect_no_more"),
        }
    }
}

/// The verifier script's result, its panic re-raised in the test.
pub async fn finish<T>(script: tokio::task::JoinHandle<T>) -> T {
    match script.await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// An API server stand-in on a loopback TCP port that accepts every
/// connection, reads nothing back and never answers: for deadline tests
/// through a real client stack ([`crate::client::with_deadlines`]).
/// Returns its `http://` URL and the task holding the connections open.
pub async fn silent_api_server() -> (http::Uri, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            open.push(conn);
        }
    });
    let url = format!("http://{addr}").parse().expect("loopback URL");
    (url, held)
}
