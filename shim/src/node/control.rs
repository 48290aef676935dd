//! The control socket: a Unix socket where `plebnet ctl` asks a running
//! node for its state. One request per connection, one line: `stats`.
//! The answer is one JSON document; then the node closes the connection.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

/// Answers control requests; removes its socket file when dropped.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
}

impl ControlServer {
    /// Listens at `path` (a stale socket file there is replaced) and
    /// answers `stats` with what `stats` returns.
    pub fn start(path: &Path, stats: Arc<dyn Fn() -> serde_json::Value + Send + Sync>) -> io::Result<Self> {
        if path.exists() {
            // Only a socket nobody answers on may be replaced.
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running node", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        thread::Builder::new().name("plebnet-control".into()).spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(conn) => {
                        if let Err(e) = answer(conn, stats.as_ref()) {
                            log::debug!("control connection: {e}");
                        }
                    }
                    Err(e) => log::warn!("control socket accept failed: {e}"),
                }
            }
        })?;
        Ok(Self { path: path.to_path_buf() })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn answer(conn: UnixStream, stats: &(dyn Fn() -> serde_json::Value + Send + Sync)) -> io::Result<()> {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new((&conn).take(1024)).read_line(&mut line)?;
    let reply = match line.trim() {
        "stats" => stats(),
        other => serde_json::json!({ "error": format!("unknown request `{other}`; known: stats") }),
    };
    let mut out = serde_json::to_vec_pretty(&reply).map_err(io::Error::other)?;
    out.push(b'\n');
    (&conn).write_all(&out)
}

/// Sends `request` to the node at `path` and returns its answer.
pub fn request(path: &Path, request: &str) -> io::Result<String> {
    let mut conn = UnixStream::connect(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot reach a node at {}: {e}", path.display())))?;
    conn.write_all(format!("{request}\n").as_bytes())?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    Ok(answer)
}
