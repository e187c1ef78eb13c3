//! A client for BIRD's control socket, the protocol `birdc` speaks.
//!
//! BIRD answers each command with lines `DDDD-text` (more follows) ending
//! with one `DDDD text`; a line starting with a space continues the previous
//! code. Codes 0xxx are final successes, 1xxx/2xxx carry table rows and
//! headers, 8xxx are run-time errors and 9xxx parse errors. On connect BIRD
//! greets with `0001 BIRD <version> ready.`. The parsers below are pure and
//! tested on replies captured from BIRD 2.0.12.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{
        UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
};

use crate::{Error, Ipv4Net, Result};

/// One line of a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The 4-digit code (inherited for lines that start with a space).
    pub code: u16,
    /// The text after the code and its separator.
    pub text: String,
}

/// A complete reply: every line, the last one final.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// The lines in order.
    pub lines: Vec<Line>,
}

impl Reply {
    /// The final line's code.
    pub fn code(&self) -> Option<u16> {
        self.lines.last().map(|l| l.code)
    }
}

/// Accumulates lines until a reply is complete.
#[derive(Debug, Default)]
pub struct ReplyReader {
    lines: Vec<Line>,
}

impl ReplyReader {
    /// Takes one line (without its newline); returns the reply once the
    /// final line arrived.
    pub fn push(&mut self, raw: &str) -> Result<Option<Reply>> {
        let bad = |reason| Error::Protocol {
            line: raw.to_owned(),
            reason,
        };
        if let Some(rest) = raw.strip_prefix(' ') {
            let code = self
                .lines
                .last()
                .map(|l| l.code)
                .ok_or_else(|| bad("a continuation line before any code"))?;
            self.lines.push(Line {
                code,
                text: rest.to_owned(),
            });
            return Ok(None);
        }
        let bytes = raw.as_bytes();
        if bytes.len() < 5 || !bytes[..4].iter().all(u8::is_ascii_digit) {
            return Err(bad("no 4-digit code"));
        }
        let code: u16 = raw[..4].parse().map_err(|_| bad("no 4-digit code"))?;
        let text = raw[5..].to_owned();
        match bytes[4] {
            b'-' => {
                self.lines.push(Line { code, text });
                Ok(None)
            }
            b' ' => {
                self.lines.push(Line { code, text });
                Ok(Some(Reply {
                    lines: std::mem::take(&mut self.lines),
                }))
            }
            _ => Err(bad("the code is followed by neither '-' nor ' '")),
        }
    }
}

/// Parses a whole reply from text (tests, captured output).
pub fn parse_reply(text: &str) -> Result<Reply> {
    let mut reader = ReplyReader::default();
    for raw in text.lines() {
        if let Some(reply) = reader.push(raw)? {
            return Ok(reply);
        }
    }
    Err(Error::Protocol {
        line: text.lines().last().unwrap_or_default().to_owned(),
        reason: "the reply has no final line",
    })
}

/// A protocol as `show protocols all` lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Protocol {
    /// The protocol's name (`peer_10_0_0_1`).
    pub name: String,
    /// Its kind (`BGP`, `Static`, `BFD`, `Device`).
    pub proto: String,
    /// `up`, `start`, `down`, ...
    pub state: String,
    /// When the state last changed, as BIRD prints it.
    pub since: String,
    /// The info column: `Established`, `Active        Received: ...`.
    pub info: String,
    /// `BGP state:` from the details.
    pub bgp_state: Option<String>,
    /// `Neighbor address:` from the details.
    pub neighbor: Option<Ipv4Addr>,
    /// Routes imported by the channel, from `Routes:`.
    pub imported: Option<u64>,
    /// Routes exported by the channel, from `Routes:`.
    pub exported: Option<u64>,
}

impl Protocol {
    /// Whether this is a BGP session that is Established.
    pub fn established(&self) -> bool {
        self.proto == "BGP"
            && (self.bgp_state.as_deref() == Some("Established")
                || self.info.starts_with("Established"))
    }
}

/// Parses `show protocols` or `show protocols all`.
pub fn parse_protocols(reply: &Reply) -> Vec<Protocol> {
    let mut out: Vec<Protocol> = Vec::new();
    for line in &reply.lines {
        match line.code {
            1002 => {
                let mut cols = line.text.split_whitespace();
                let (Some(name), Some(proto), Some(_table), Some(state), Some(since)) = (
                    cols.next(),
                    cols.next(),
                    cols.next(),
                    cols.next(),
                    cols.next(),
                ) else {
                    continue;
                };
                out.push(Protocol {
                    name: name.into(),
                    proto: proto.into(),
                    state: state.into(),
                    since: since.into(),
                    info: cols.collect::<Vec<_>>().join(" "),
                    ..Protocol::default()
                });
            }
            1006 => {
                let Some(p) = out.last_mut() else { continue };
                let Some((key, value)) = line.text.trim().split_once(':') else {
                    continue;
                };
                let value = value.trim();
                match key {
                    "BGP state" => p.bgp_state = Some(value.into()),
                    "Neighbor address" => p.neighbor = value.parse().ok(),
                    "Routes" => {
                        for part in value.split(',') {
                            let mut w = part.split_whitespace();
                            if let (Some(n), Some(kind)) = (w.next(), w.next()) {
                                let n = n.parse().ok();
                                match kind {
                                    "imported" => p.imported = n,
                                    "exported" => p.exported = n,
                                    _ => {}
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    out
}

/// One route of `show route`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The network.
    pub net: Ipv4Net,
    /// The protocol that brought it (`sextant_static`, `node1`).
    pub protocol: String,
}

/// Parses `show route [export <p>]`: rows start with the network; `via`
/// lines and table headers are skipped; a network that does not parse is
/// skipped too (BIRD prints IPv6 tables the same way).
pub fn parse_routes(reply: &Reply) -> Vec<Route> {
    reply
        .lines
        .iter()
        .filter(|l| l.code == 1007)
        .filter_map(|l| {
            let mut cols = l.text.split_whitespace();
            let net = Ipv4Net::parse(cols.next()?).ok()?;
            let protocol = cols
                .find_map(|c| c.strip_prefix('['))
                .map(str::to_owned)
                .unwrap_or_default();
            Some(Route { net, protocol })
        })
        .collect()
}

/// One BFD session of `show bfd sessions`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BfdSession {
    /// The peer's address.
    pub address: Ipv4Addr,
    /// The interface it runs on.
    pub interface: String,
    /// `Up`, `Down`, `Init`, `AdminDown`.
    pub state: String,
}

/// Parses `show bfd sessions`.
pub fn parse_bfd_sessions(reply: &Reply) -> Vec<BfdSession> {
    reply
        .lines
        .iter()
        .filter(|l| l.code == 1020)
        .filter_map(|l| {
            let mut cols = l.text.split_whitespace();
            let address = cols.next()?.parse().ok()?;
            let interface = cols.next()?.to_owned();
            let state = cols.next()?.to_owned();
            Some(BfdSession {
                address,
                interface,
                state,
            })
        })
        .collect()
}

/// An open control connection.
#[derive(Debug)]
pub struct Birdc {
    path: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    timeout: Duration,
}

impl Birdc {
    /// Connects and reads BIRD's greeting.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self> {
        let sock = |source| Error::Socket {
            path: path.to_owned(),
            source,
        };
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| Error::Timeout {
                path: path.to_owned(),
                command: "connect".into(),
                timeout_ms: timeout.as_millis(),
            })?
            .map_err(sock)?;
        let (r, w) = stream.into_split();
        let mut c = Birdc {
            path: path.to_owned(),
            reader: BufReader::new(r),
            writer: w,
            timeout,
        };
        let greeting = c.read_reply("connect").await?;
        if greeting.code() != Some(1) {
            return Err(Error::Protocol {
                line: format!("{greeting:?}"),
                reason: "BIRD did not greet with 0001",
            });
        }
        Ok(c)
    }

    /// Sends one command and returns its reply; an error code becomes
    /// [`Error::Bird`].
    pub async fn command(&mut self, command: &str) -> Result<Reply> {
        if command.contains('\n') {
            return Err(Error::Protocol {
                line: command.to_owned(),
                reason: "a command cannot contain a newline",
            });
        }
        let sock = |source| Error::Socket {
            path: self.path.clone(),
            source,
        };
        self.writer
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(sock)?;
        let reply = self.read_reply(command).await?;
        match reply.lines.last() {
            Some(l) if l.code >= 8000 => Err(Error::Bird {
                command: command.to_owned(),
                code: l.code,
                message: l.text.clone(),
            }),
            _ => Ok(reply),
        }
    }

    async fn read_reply(&mut self, command: &str) -> Result<Reply> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut reader = ReplyReader::default();
        let mut buf = String::new();
        loop {
            buf.clear();
            let n = tokio::time::timeout_at(deadline, self.reader.read_line(&mut buf))
                .await
                .map_err(|_| Error::Timeout {
                    path: self.path.clone(),
                    command: command.to_owned(),
                    timeout_ms: self.timeout.as_millis(),
                })?
                .map_err(|source| Error::Socket {
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(Error::Socket {
                    path: self.path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "BIRD closed the connection mid-reply",
                    ),
                });
            }
            if let Some(reply) = reader.push(buf.trim_end_matches(['\n', '\r']))? {
                return Ok(reply);
            }
        }
    }

    /// `configure check "<file>"`: Ok when BIRD would accept the file,
    /// [`Error::Rejected`] with BIRD's reason (file:line:col message) if not.
    pub async fn configure_check(&mut self, file: &Path) -> Result<()> {
        let cmd = format!("configure check \"{}\"", quotable(file)?);
        self.configure_cmd(&cmd).await
    }

    /// `configure "<file>"`: BIRD switches to the file, or keeps running the
    /// old configuration and answers [`Error::Rejected`].
    pub async fn configure(&mut self, file: &Path) -> Result<()> {
        let cmd = format!("configure \"{}\"", quotable(file)?);
        self.configure_cmd(&cmd).await
    }

    async fn configure_cmd(&mut self, cmd: &str) -> Result<()> {
        match self.command(cmd).await {
            Ok(_) => Ok(()),
            Err(Error::Bird { message, .. }) => Err(Error::Rejected { message }),
            Err(e) => Err(e),
        }
    }

    /// `show protocols all`.
    pub async fn protocols(&mut self) -> Result<Vec<Protocol>> {
        Ok(parse_protocols(&self.command("show protocols all").await?))
    }

    /// `show route export <protocol>`: what BIRD sends to that peer.
    pub async fn routes_exported(&mut self, protocol: &str) -> Result<Vec<Route>> {
        if !protocol
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(Error::Protocol {
                line: protocol.to_owned(),
                reason: "not a protocol name",
            });
        }
        let cmd = format!("show route export {protocol}");
        Ok(parse_routes(&self.command(&cmd).await?))
    }

    /// `show route`: the whole table.
    pub async fn routes(&mut self) -> Result<Vec<Route>> {
        Ok(parse_routes(&self.command("show route").await?))
    }

    /// `show bfd sessions`; no BFD protocol configured gives an empty list.
    pub async fn bfd_sessions(&mut self) -> Result<Vec<BfdSession>> {
        match self.command("show bfd sessions").await {
            Ok(r) => Ok(parse_bfd_sessions(&r)),
            // 8xxx "No BFD instance" when the config has no protocol bfd.
            Err(Error::Bird { code, .. }) if code < 9000 => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

fn quotable(path: &Path) -> Result<&str> {
    path.to_str()
        .filter(|s| !s.contains(['"', '\\', '\n']))
        .ok_or_else(|| Error::Path {
            path: path.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> Reply {
        parse_reply(text).expect("captured reply parses")
    }

    #[test]
    fn parses_protocols_all_with_bgp_details() {
        let ps = parse_protocols(&reply(include_str!("testdata/protocols_all.txt")));
        let names: Vec<&str> = ps.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "device1",
                "sextant_bfd",
                "sextant_static",
                "peer_10_0_0_1",
                "peer_10_0_0_9"
            ]
        );
        let up = &ps[3];
        assert!(up.established());
        assert_eq!(up.neighbor, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!((up.imported, up.exported), (Some(0), Some(2)));
        let idle = &ps[4];
        assert!(!idle.established());
        assert_eq!(idle.bgp_state.as_deref(), Some("Idle"));
        assert_eq!((idle.imported, idle.exported), (None, None));
        assert_eq!(ps[2].imported, Some(2), "static protocol's channel");
    }

    #[test]
    fn parses_short_protocols_where_rows_continue_with_a_space() {
        let ps = parse_protocols(&reply(include_str!("testdata/protocols_down.txt")));
        assert_eq!(ps.len(), 5);
        let p = &ps[4];
        assert_eq!(p.name, "peer_10_0_0_1");
        assert_eq!(p.state, "start");
        assert_eq!(p.info, "Active Received: Administrative shutdown");
        assert!(!p.established());
    }

    #[test]
    fn parses_routes_skipping_headers_and_next_hops() {
        let exported = parse_routes(&reply(include_str!("testdata/route_export.txt")));
        let nets: Vec<String> = exported.iter().map(|r| r.net.to_string()).collect();
        assert_eq!(nets, ["10.200.0.5/32", "10.128.0.0/25"]);
        assert_eq!(exported[0].protocol, "sextant_static");
        let tor = parse_routes(&reply(include_str!("testdata/route_tor.txt")));
        assert_eq!(tor.len(), 2);
        assert_eq!(tor[1].protocol, "node1");
    }

    #[test]
    fn parses_bfd_sessions() {
        let up = parse_bfd_sessions(&reply(include_str!("testdata/bfd_up.txt")));
        assert_eq!(
            up,
            [BfdSession {
                address: Ipv4Addr::new(10, 0, 0, 1),
                interface: "cap1".into(),
                state: "Up".into()
            }]
        );
        let down = parse_bfd_sessions(&reply(include_str!("testdata/bfd_down.txt")));
        assert_eq!(down[0].state, "Down");
    }

    #[test]
    fn configure_replies_keep_the_final_code_and_reason() {
        let bad = reply(include_str!("testdata/configure_bad.txt"));
        assert_eq!(bad.code(), Some(8002));
        assert!(bad.lines[1].text.ends_with("Local AS number must be set"));
        assert_eq!(
            reply(include_str!("testdata/configure_ok.txt")).code(),
            Some(3)
        );
    }

    #[test]
    fn refuses_lines_outside_the_protocol() {
        for bad in ["hello", "12-x", "0001x", " orphan continuation"] {
            let e = ReplyReader::default().push(bad).expect_err(bad);
            assert!(matches!(e, Error::Protocol { .. }), "{bad}: {e}");
        }
        assert!(
            parse_reply("1007-Table master4:\n").is_err(),
            "no final line"
        );
    }
}
