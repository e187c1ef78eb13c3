//! Traffic inside a lab: line servers that answer with a tag (so a probe
//! tells which backend answered) and probes that connect from a pod.

use std::time::Duration;

use crate::{
    Lab,
    demo::Probe,
    error::{Error, Result},
    netns::{in_netns, spawn_in_netns},
};

/// A [`line_server`] in pod `pod` on its IP, answering with `tag`.
pub(crate) fn echo_server(lab: &Lab, pod: usize, port: u16, tag: String) -> Result<()> {
    let ip = lab.pods.get(pod).and_then(|p| p.ip).ok_or(Error::NoPod {
        index: pod,
        why: "has no IP",
    })?;
    line_server(
        &lab.pods[pod].name,
        std::net::SocketAddrV4::new(ip, port),
        tag,
    )
}

/// A TCP server in netns `ns` on `at` answering each line `l` with
/// `"{tag} {l}"` (one write per answer: no Nagle / delayed-ACK stalls);
/// returns once it listens.
pub fn line_server(ns: &str, at: std::net::SocketAddrV4, tag: String) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = spawn_in_netns(ns, move || {
        let l = match std::net::TcpListener::bind(at) {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        let _ = tx.send(Ok(()));
        for s in l.incoming().flatten() {
            let tag = tag.clone();
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let Ok(mut w) = s.try_clone() else { return };
                for line in BufReader::new(s).lines() {
                    let Ok(line) = line else { break };
                    if w.write_all(format!("{tag} {line}\n").as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    })?;
    rx.recv_timeout(Duration::from_secs(5))
        .map_err(|_| Error::Server {
            at,
            reason: "did not start within 5s".into(),
        })?
        .map_err(|reason| Error::Server { at, reason })
}

/// A [`Probe`] from pod `from` to `to` (2 s to connect and to answer).
pub(crate) fn probe(lab: &Lab, from: usize, to: std::net::SocketAddrV4) -> Probe {
    probe_within(lab, from, to, Duration::from_secs(2))
}

/// A [`Probe`] from pod `from` to `to` waiting at most `wait` for each step.
pub(crate) fn probe_within(
    lab: &Lab,
    from: usize,
    to: std::net::SocketAddrV4,
    wait: Duration,
) -> Probe {
    use std::io::{BufRead, BufReader, Write};
    let name = lab.pods[from].name.clone();
    let answer = in_netns(&name, move || -> std::io::Result<String> {
        let s = std::net::TcpStream::connect_timeout(&to.into(), wait)?;
        s.set_read_timeout(Some(wait))?;
        s.set_nodelay(true)?;
        let mut w = s.try_clone()?;
        w.write_all(b"hello\n")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(line.split(' ').next().unwrap_or_default().to_string())
    })
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e| e.to_string()));
    Probe {
        from: name,
        to: to.to_string(),
        answer,
    }
}
