//! The blocking client for `sextant-cni`: plain std I/O over the unix
//! socket (HTTP/1.1, one request, `Connection: close`), so a plugin run
//! starts no async runtime on its path.

use std::{path::Path, time::Duration};

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    Error, Result,
    client::{decode, encode},
};

/// The blocking twin of [`crate::call_json`].
pub fn call_json<T: DeserializeOwned>(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&impl Serialize>,
    deadline: Duration,
) -> Result<T> {
    let body = encode(path, body)?.unwrap_or_default();
    let (status, bytes) = call(socket, method, path, &body, deadline)?;
    decode(path, status, &bytes)
}

/// Why a blocking exchange failed, before it becomes an [`Error`].
enum Failure {
    Connect(std::io::Error),
    Io(std::io::Error),
    Timeout,
    Malformed(String),
}

fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
    deadline: Duration,
) -> Result<(u16, Vec<u8>)> {
    exchange(socket, method, path, body, deadline).map_err(|f| match f {
        Failure::Connect(source) => Error::Connect {
            socket: socket.to_path_buf(),
            source,
        },
        Failure::Io(source) => Error::Io {
            socket: socket.to_path_buf(),
            source,
        },
        Failure::Timeout => Error::Timeout {
            path: path.to_string(),
            timeout: deadline,
        },
        Failure::Malformed(reason) => Error::Malformed {
            path: path.to_string(),
            reason,
        },
    })
}

fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
    deadline: Duration,
) -> std::result::Result<(u16, Vec<u8>), Failure> {
    use std::io::{Read, Write};
    let until = std::time::Instant::now() + deadline;
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(Failure::Connect)?;
    let timed_out = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: sextant-agent\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let left = || {
        until
            .saturating_duration_since(std::time::Instant::now())
            .max(Duration::from_millis(1))
    };
    stream
        .set_write_timeout(Some(left()))
        .and_then(|()| stream.write_all(head.as_bytes()))
        .and_then(|()| stream.write_all(body))
        .map_err(|e| {
            if timed_out(&e) {
                Failure::Timeout
            } else {
                Failure::Io(e)
            }
        })?;
    let mut raw = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        stream.set_read_timeout(Some(left())).map_err(Failure::Io)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if timed_out(&e) => return Err(Failure::Timeout),
            Err(e) => return Err(Failure::Io(e)),
        }
    }
    parse_response(&raw).map_err(Failure::Malformed)
}

/// Splits an HTTP/1.1 response into status and body (`content-length`,
/// chunked, or read to close).
fn parse_response(raw: &[u8]) -> std::result::Result<(u16, Vec<u8>), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| "reading: answer ended inside its headers".to_string())?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "reading: headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("reading: bad status line {:?}", head.lines().next()))?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(
                v.parse::<usize>()
                    .map_err(|_| format!("reading: bad content-length {v:?}"))?,
            );
        } else if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let rest = &raw[end + 4..];
    if chunked {
        return dechunk(rest).map(|b| (status, b));
    }
    match length {
        Some(n) if rest.len() < n => Err(format!(
            "reading: answer cut short ({} of {n} bytes)",
            rest.len()
        )),
        Some(n) => Ok((status, rest[..n].to_vec())),
        None => Ok((status, rest.to_vec())),
    }
}

fn dechunk(mut rest: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("reading: chunk size line cut short")?;
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| "reading: bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("reading: bad chunk size {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 {
            return Err("reading: chunk cut short".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_close_delimited_answers() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").expect("length");
        assert_eq!(r, (200, b"{}".to_vec()));
        let r = parse_response(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .expect("chunked");
        assert_eq!(r, (503, b"abcde".to_vec()));
        let r = parse_response(b"HTTP/1.1 200 OK\r\n\r\nxyz").expect("close");
        assert_eq!(r, (200, b"xyz".to_vec()));
    }

    #[test]
    fn rejects_broken_answers_with_a_reason() {
        for (raw, want) in [
            (&b"HTTP/1.1 200 OK\r\ncontent-le"[..], "inside its headers"),
            (b"garbage\r\n\r\n", "bad status line"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}",
                "cut short",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
                "content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n9\r\nab",
                "chunk cut short",
            ),
        ] {
            let e = parse_response(raw).expect_err("broken");
            assert!(e.contains(want), "{e} should mention {want}");
        }
    }

    #[test]
    fn a_missing_agent_is_a_connecting_error_and_a_silent_one_times_out() {
        let dir = tempfile::tempdir().expect("dir");
        let sock = dir.path().join("agent.sock");
        let e = call_json::<serde_json::Value>(
            &sock,
            "GET",
            "/v1/healthz",
            None::<&()>,
            Duration::from_secs(1),
        )
        .expect_err("no agent");
        assert!(matches!(&e, Error::Connect { .. }), "{e}");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let e = call_json::<serde_json::Value>(
            &sock,
            "GET",
            "/v1/healthz",
            None::<&()>,
            Duration::from_millis(200),
        )
        .expect_err("silent agent");
        assert!(matches!(&e, Error::Timeout { .. }), "{e}");
    }
}
