//! The Docker Engine: where its API socket is and whether it answers.

use std::path::PathBuf;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
};

/// Errors reaching the Docker Engine API.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("DOCKER_HOST={0} is not a unix:// socket; guardian talks to the local engine only")]
    NotUnix(String),
    #[error("cannot reach the Docker Engine at {socket}: {source}")]
    Unreachable {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("the Docker Engine at {socket} answered something unexpected: {answer:?}")]
    BadAnswer { socket: PathBuf, answer: String },
}

/// The engine's API socket: `DOCKER_HOST` if set, else the rootful default, else the rootless
/// socket of the current user.
pub fn socket_path() -> Result<PathBuf, DockerError> {
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        return host
            .strip_prefix("unix://")
            .map(PathBuf::from)
            .ok_or(DockerError::NotUnix(host));
    }
    let rootful = PathBuf::from("/var/run/docker.sock");
    if rootful.exists() {
        return Ok(rootful);
    }
    let uid = nix::unistd::getuid();
    let rootless = PathBuf::from(format!("/run/user/{uid}/docker.sock"));
    Ok(if rootless.exists() { rootless } else { rootful })
}

/// Asks the engine for its API version (`GET /version`).
pub async fn api_version() -> Result<(PathBuf, String), DockerError> {
    let socket = socket_path()?;
    let unreachable = |source| DockerError::Unreachable {
        socket: socket.clone(),
        source,
    };
    let mut stream = UnixStream::connect(&socket).await.map_err(unreachable)?;
    stream
        .write_all(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")
        .await
        .map_err(unreachable)?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .map_err(unreachable)?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let version = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("ApiVersion")?.as_str().map(str::to_string))
        .ok_or_else(|| DockerError::BadAnswer {
            socket: socket.clone(),
            answer: answer.lines().next().unwrap_or("").to_string(),
        })?;
    Ok((socket, version))
}
