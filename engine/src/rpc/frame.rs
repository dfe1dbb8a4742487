//! Framing of the control plane: each message is a 4-byte big-endian length followed by that
//! many bytes of JSON. A frame longer than the limit is refused from its length alone, before
//! anything is allocated, and a body that is not a valid message is an error naming what was
//! wrong; either ends the connection, never the process.

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest control message, in bytes (a job result with latency histograms is the largest).
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// Why a control message could not be read or written.
#[derive(Debug, Error)]
pub enum FrameError {
    #[error("the peer closed the connection")]
    Closed,
    #[error("control message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed control message: {0}")]
    Malformed(String),
    #[error("control connection I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes one message as a frame.
pub async fn write_frame<W, M>(w: &mut W, message: &M) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    M: Serialize,
{
    let body = serde_json::to_vec(message).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { len: body.len(), max: MAX_FRAME_BYTES });
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one message; [`FrameError::Closed`] when the peer closed between frames.
pub async fn read_frame<R, M>(r: &mut R) -> Result<M, FrameError>
where
    R: AsyncRead + Unpin,
    M: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { len, max: MAX_FRAME_BYTES });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(|e| FrameError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::messages::{JmMessage, TmMessage};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn messages_round_trip() {
        runtime().block_on(async {
            let (mut a, mut b) = tokio::io::duplex(1 << 16);
            let sent = TmMessage::Heartbeat { deployments: vec![crate::rpc::ids::DeploymentKey(7)], data_plane: None };
            write_frame(&mut a, &sent).await.unwrap();
            let got: TmMessage = read_frame(&mut b).await.unwrap();
            assert_eq!(got, sent);
            drop(a);
            assert!(matches!(read_frame::<_, TmMessage>(&mut b).await, Err(FrameError::Closed)));
        });
    }

    #[test]
    fn oversized_and_malformed_frames_are_errors() {
        runtime().block_on(async {
            let (mut a, mut b) = tokio::io::duplex(1 << 16);
            a.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
            let e = read_frame::<_, JmMessage>(&mut b).await.unwrap_err();
            assert!(matches!(e, FrameError::TooLarge { .. }), "{e}");

            let (mut a, mut b) = tokio::io::duplex(1 << 16);
            let body = br#"{"deploy": 12}"#;
            a.write_all(&(body.len() as u32).to_be_bytes()).await.unwrap();
            a.write_all(body).await.unwrap();
            let e = read_frame::<_, JmMessage>(&mut b).await.unwrap_err();
            assert!(matches!(e, FrameError::Malformed(_)), "{e}");
        });
    }
}
