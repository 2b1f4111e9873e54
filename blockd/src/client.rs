//! A blocking client of blockd's control socket.

use hablock_proto::control::{self, Request, Response};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use thiserror::Error;

/// Errors talking to blockd.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot reach blockd at {path}: {source} (is blockd running?)")]
    Connect {
        /// Socket path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// I/O on the socket.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// The reply was malformed.
    #[error("bad reply from blockd: {0}")]
    Decode(String),
    /// blockd closed the connection.
    #[error("blockd closed the connection")]
    Closed,
}

/// A connection to blockd.
pub struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Client {
    /// Connects to the socket.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Client {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends a request.
    pub fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        self.stream.write_all(&control::encode_request(req))?;
        Ok(())
    }

    /// Reads the next response.
    pub fn recv(&mut self) -> Result<Response, ClientError> {
        loop {
            match control::decode_response(&self.buf) {
                Ok(Some((r, used))) => {
                    self.buf.drain(..used);
                    return Ok(r);
                }
                Ok(None) => {}
                Err(e) => return Err(ClientError::Decode(e.to_string())),
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a request and reads its response.
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.send(req)?;
        self.recv()
    }
}
