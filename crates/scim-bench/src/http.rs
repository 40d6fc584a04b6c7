//! A minimal HTTP/1.1 client over kept-alive loopback connections.
//!
//! The load client and the server share the machine's cores, so every microsecond the client
//! spends per request is taken from the server being measured. This client writes a request,
//! reads the status line, the headers it needs and the body (`Content-Length` or chunked),
//! and keeps the connection for the next request; nothing else. It speaks to one server that
//! we run ourselves, on loopback, so it does not need TLS, redirects or proxies.

use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One server: where to connect, the path prefix of its SCIM base, and idle connections.
pub struct Server {
    /// `host:port`, also sent as `Host`
    authority: String,
    /// the base URL's path (`/scim/v2`), without a trailing slash
    prefix: String,
    idle: Mutex<Vec<Conn>>,
}

impl Server {
    /// Parses `http://host:port/path`. Only plain `http` is supported.
    pub fn new(base: &str) -> Result<Arc<Self>> {
        let rest = base
            .strip_prefix("http://")
            .with_context(|| format!("{base:?}: only http:// URLs are supported"))?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let authority = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Arc::new(Server {
            authority,
            prefix: prefix.trim_end_matches('/').to_string(),
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// Sends one request (`path` below the base) and returns the status and the body.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>)> {
        let mut req = Vec::with_capacity(256 + body.map_or(0, <[u8]>::len));
        req.extend_from_slice(method.as_bytes());
        req.push(b' ');
        req.extend_from_slice(self.prefix.as_bytes());
        req.extend_from_slice(path.as_bytes());
        req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        req.extend_from_slice(self.authority.as_bytes());
        req.extend_from_slice(b"\r\nAuthorization: Bearer ");
        req.extend_from_slice(token.as_bytes());
        req.extend_from_slice(b"\r\nAccept: application/scim+json\r\n");
        if let Some(b) = body {
            req.extend_from_slice(b"Content-Type: application/scim+json\r\nContent-Length: ");
            req.extend_from_slice(b.len().to_string().as_bytes());
            req.extend_from_slice(b"\r\n\r\n");
            req.extend_from_slice(b);
        } else {
            req.extend_from_slice(b"\r\n");
        }
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => Conn::open(&self.authority).await?,
        };
        let answer = match conn.exchange(&req).await {
            Ok(a) => a,
            // The server may close a connection that sat idle; nothing of the answer was read,
            // so nothing was processed twice: send once more on a new connection.
            Err(e) if reused && conn.got_nothing => {
                conn = Conn::open(&self.authority).await.context(e)?;
                conn.exchange(&req).await?
            }
            Err(e) => return Err(e),
        };
        if answer.keep {
            if let Ok(mut idle) = self.idle.lock() {
                idle.push(conn);
            }
        }
        Ok((answer.status, answer.body))
    }
}

struct Conn {
    stream: TcpStream,
    /// bytes read and not yet consumed
    buf: Vec<u8>,
    /// whether the last exchange failed before any byte of its answer arrived
    got_nothing: bool,
}

struct Answer {
    status: u16,
    body: Vec<u8>,
    keep: bool,
}

impl Conn {
    async fn open(authority: &str) -> Result<Conn> {
        let stream = TcpStream::connect(authority)
            .await
            .with_context(|| format!("connecting to {authority}"))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            got_nothing: false,
        })
    }

    /// Reads more bytes into the buffer; an error at end of stream.
    async fn fill(&mut self) -> Result<()> {
        self.buf.reserve(16 * 1024);
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            bail!("the server closed the connection");
        }
        self.got_nothing = false;
        Ok(())
    }

    async fn exchange(&mut self, req: &[u8]) -> Result<Answer> {
        self.got_nothing = true;
        self.buf.clear();
        self.stream.write_all(req).await?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > 64 * 1024 {
                bail!("response headers longer than 64 KiB");
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).context("response head")?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let (mut length, mut chunked, mut keep) = (None, false, true);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>().context("Content-Length")?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                keep = !value.eq_ignore_ascii_case("close");
            }
        }
        self.buf.drain(..head_end);
        let body = if chunked {
            self.chunked_body().await?
        } else {
            let n = length.unwrap_or(0);
            while self.buf.len() < n {
                self.fill().await?;
            }
            let rest = self.buf.split_off(n);
            std::mem::replace(&mut self.buf, rest)
        };
        Ok(Answer { status, body, keep })
    }

    async fn chunked_body(&mut self) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    break i;
                }
                self.fill().await?;
            };
            let size_text = std::str::from_utf8(&self.buf[..line_end]).context("chunk size")?;
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).context("chunk size")?;
            // The chunk, then its CRLF (after the last, empty chunk: the final CRLF).
            let need = line_end + 2 + size + 2;
            while self.buf.len() < need {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
            self.buf.drain(..need);
            if size == 0 {
                return Ok(body);
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A loopback server that answers each accepted connection's requests with `answers`, in
    /// order, then closes it; returns the base URL and what it received.
    async fn serve(
        answers: Vec<Vec<&'static str>>,
    ) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/scim/v2", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for per_conn in answers {
                let (mut s, _) = listener.accept().await.unwrap();
                for answer in per_conn {
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap();
                    seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                    s.write_all(answer.as_bytes()).await.unwrap();
                }
            }
            seen
        });
        (base, task)
    }

    #[tokio::test]
    async fn reads_sized_and_chunked_bodies_on_one_kept_connection() {
        let (base, task) = serve(vec![vec![
            "HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n{\"a\":1}",
            "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"b\r\n4\r\n\":2}\r\n0\r\n\r\n",
        ]])
        .await;
        let server = Server::new(&base).unwrap();
        let (s, b) = server.send("GET", "/Users?x=1", "tok", None).await.unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"{\"a\":1}"[..]));
        let (s, b) = server
            .send("POST", "/Users", "tok", Some(b"{}"))
            .await
            .unwrap();
        assert_eq!((s, b.as_slice()), (201, &b"{\"b\":2}"[..]));
        let seen = task.await.unwrap();
        assert!(
            seen[0].starts_with("GET /scim/v2/Users?x=1 HTTP/1.1\r\n"),
            "{}",
            seen[0]
        );
        assert!(seen[0].contains("\r\nAuthorization: Bearer tok\r\n"));
        assert!(seen[1].starts_with("POST /scim/v2/Users HTTP/1.1\r\n"));
        assert!(
            seen[1].contains("\r\nContent-Length: 2\r\n\r\n{}"),
            "{}",
            seen[1]
        );
    }

    #[tokio::test]
    async fn sends_again_on_a_new_connection_when_an_idle_one_was_closed() {
        // The first connection answers once and is closed; the second answers the retry.
        let (base, task) = serve(vec![
            vec!["HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
            vec!["HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"],
        ])
        .await;
        let server = Server::new(&base).unwrap();
        assert_eq!(server.send("GET", "/a", "t", None).await.unwrap().0, 200);
        // Let the server side close the first connection.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(server.send("GET", "/b", "t", None).await.unwrap().0, 204);
        let seen = task.await.unwrap();
        assert!(seen[1].starts_with("GET /scim/v2/b "), "{}", seen[1]);
    }
}
