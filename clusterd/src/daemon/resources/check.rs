//! Health checks of a service: an `http://` URL (a plain TCP HTTP/1.0 GET; 2xx and
//! 3xx pass) or a command run with `sh -c` (exit 0 passes).

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Host, port and path of an `http://` URL.
pub fn parse_http(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || p.is_empty() => (h, p.parse().ok()?),
        _ => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port, path.to_string()))
}

/// The status code of an HTTP status line (`HTTP/1.x NNN ...`).
pub fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

async fn http(url: &str) -> Result<u16, String> {
    let (host, port, path) = parse_http(url).ok_or_else(|| format!("bad URL {url}"))?;
    let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: clusterd\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    status_code(&head).ok_or_else(|| "no HTTP status line".to_string())
}

/// Runs the check once; true when it passes within `timeout`.
pub async fn run(check: &str, timeout: Duration) -> bool {
    if check.starts_with("http://") {
        return match tokio::time::timeout(timeout, http(check)).await {
            Ok(Ok(code)) if (200..400).contains(&code) => true,
            Ok(Ok(code)) => {
                tracing::warn!(check, code, "health check failed");
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(check, "health check failed: {e}");
                false
            }
            Err(_) => {
                tracing::warn!(check, "health check timed out");
                false
            }
        };
    }
    match super::run_program("sh", &["-c", check], timeout).await {
        Ok((0, _)) => true,
        Ok((code, out)) => {
            tracing::warn!(check, code, output = out.trim(), "health check failed");
            false
        }
        Err(e) => {
            tracing::warn!(check, "health check failed: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_http("http://10.213.0.50/"),
            Some(("10.213.0.50".into(), 80, "/".into()))
        );
        assert_eq!(
            parse_http("http://10.213.0.50:8080/health?x=1"),
            Some(("10.213.0.50".into(), 8080, "/health?x=1".into()))
        );
        assert_eq!(
            parse_http("http://host"),
            Some(("host".into(), 80, "/".into()))
        );
        assert_eq!(parse_http("http://"), None);
        assert_eq!(parse_http("https://x/"), None);
        assert_eq!(parse_http("http://x:notaport/"), None);
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.0 200 OK\r\n"), Some(200));
        assert_eq!(
            status_code(b"HTTP/1.1 302 Found\r\nLocation: /\r\n"),
            Some(302)
        );
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b""), None);
    }
}
