//! A small blocking client for ClickHouse's HTTP interface: one request per connection
//! (HTTP/1.0, `Connection: close`), the statement in the `query` parameter and the data in
//! the body, credentials in the `X-ClickHouse-User` / `X-ClickHouse-Key` headers (18.16
//! reads them; they stay out of URLs and server logs). `wait_end_of_query=1` makes the
//! server buffer a result before answering, so an error mid-query is an error status
//! rather than a 200 with the exception appended to the body.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A ClickHouse request that failed.
#[derive(Debug, thiserror::Error)]
pub enum ChError {
    #[error("clickhouse url {url:?}: {what}")]
    Url { url: String, what: &'static str },
    #[error("clickhouse {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("clickhouse {addr}: HTTP {status}: {message}")]
    Server {
        addr: String,
        status: u16,
        message: String,
    },
    #[error("clickhouse {addr}: malformed response: {what}")]
    Response { addr: String, what: &'static str },
    #[error("clickhouse: {0}")]
    Schema(String),
}

impl ChError {
    /// Whether the server answered (a statement error), as opposed to the request not
    /// reaching it or its answer not coming back (the outcome then is unknown).
    pub fn answered(&self) -> bool {
        matches!(self, ChError::Server { .. })
    }
}

/// Where and as whom to connect.
#[derive(Clone)]
pub struct Client {
    host: String,
    port: u16,
    user: String,
    password: String,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// `url` is `http://HOST[:PORT][/]` (port 8123 when absent; TLS is not spoken).
    pub fn new(
        url: &str,
        user: &str,
        password: &str,
        timeout: Duration,
    ) -> Result<Client, ChError> {
        let bad = |what| ChError::Url {
            url: url.to_string(),
            what,
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("must start with http:// (https is not supported)"))?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains(['/', '?', '@']) {
            return Err(bad(
                "must be http://HOST[:PORT] without a path or credentials",
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && !p.contains(']') => {
                (h, p.parse().map_err(|_| bad("port is not a number"))?)
            }
            _ => (authority, 8123),
        };
        Ok(Client {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            user: user.to_string(),
            password: password.to_string(),
            timeout,
        })
    }

    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn addr(&self) -> Result<SocketAddr, ChError> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|source| self.io(source))?
            .next()
            .ok_or_else(|| self.io(std::io::ErrorKind::NotFound.into()))
    }

    fn io(&self, source: std::io::Error) -> ChError {
        ChError::Io {
            addr: self.endpoint(),
            source,
        }
    }

    /// Run `sql` with `body` (insert data, or empty) and return the response body.
    pub fn execute(&self, sql: &str, body: &[u8]) -> Result<Vec<u8>, ChError> {
        let mut s =
            TcpStream::connect_timeout(&self.addr()?, self.timeout).map_err(|e| self.io(e))?;
        s.set_read_timeout(Some(self.timeout))
            .map_err(|e| self.io(e))?;
        s.set_write_timeout(Some(self.timeout))
            .map_err(|e| self.io(e))?;
        s.set_nodelay(true).map_err(|e| self.io(e))?;
        let head = format!(
            "POST /?wait_end_of_query=1&query={} HTTP/1.0\r\nHost: {}\r\n\
             X-ClickHouse-User: {}\r\nX-ClickHouse-Key: {}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            percent_encode(sql),
            self.endpoint(),
            self.user,
            self.password,
            body.len()
        );
        s.write_all(head.as_bytes()).map_err(|e| self.io(e))?;
        s.write_all(body).map_err(|e| self.io(e))?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).map_err(|e| self.io(e))?;
        self.parse(resp)
    }

    /// Run a statement without data (DDL, SELECT) and return the response as text.
    pub fn text(&self, sql: &str) -> Result<String, ChError> {
        let b = self.execute(sql, &[])?;
        String::from_utf8(b).map_err(|_| ChError::Response {
            addr: self.endpoint(),
            what: "not UTF-8",
        })
    }

    fn parse(&self, resp: Vec<u8>) -> Result<Vec<u8>, ChError> {
        let bad = |what| ChError::Response {
            addr: self.endpoint(),
            what,
        };
        let end = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| bad("no end of headers"))?;
        let status_line = resp[..end].split(|b| *b == b'\n').next().unwrap_or(&[]);
        let status: u16 = std::str::from_utf8(status_line)
            .ok()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("no status code"))?;
        let body = resp[end + 4..].to_vec();
        if status != 200 {
            let message = String::from_utf8_lossy(&body).trim().to_string();
            return Err(ChError::Server {
                addr: self.endpoint(),
                status,
                message,
            });
        }
        Ok(body)
    }
}

/// Percent-encode everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut o = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// A string literal for SQL: single-quoted, backslash and quote escaped.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// An identifier (database name): letters, digits and `_` only, not starting with a digit.
pub fn valid_identifier(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let d = Duration::from_secs(1);
        let c = Client::new("http://127.0.0.1:18123/", "u", "p", d).unwrap();
        assert_eq!(c.endpoint(), "127.0.0.1:18123");
        let c = Client::new("http://ch.example", "u", "p", d).unwrap();
        assert_eq!(c.endpoint(), "ch.example:8123");
        let c = Client::new("http://[::1]:9", "u", "p", d).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 9));
        assert!(Client::new("https://x", "u", "p", d).is_err());
        assert!(Client::new("http://x/db", "u", "p", d).is_err());
        assert!(Client::new("http://x:port", "u", "p", d).is_err());
    }

    #[test]
    fn encoding() {
        assert_eq!(percent_encode("SELECT 1+1"), "SELECT%201%2B1");
        assert_eq!(quote("a'b\\c"), "'a\\'b\\\\c'");
        assert!(
            valid_identifier("labelflow_1") && !valid_identifier("1x") && !valid_identifier("a-b")
        );
    }
}
