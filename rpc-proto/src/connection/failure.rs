//! Failure answers cut to fit the limits, so a failure can always be sent.

use crate::config::Config;
use crate::frame::{truncate_str, Frame};

/// Header bytes of an `RpcFailure` before its error text: length, type, request id, string
/// length.
pub(super) const FAILURE_HEAD_LEN: u64 = 9 + 8 + 4;
/// Header bytes of a `ChunkFetchFailure` before its error text.
pub(super) const CHUNK_FAILURE_HEAD_LEN: u64 = 9 + 12 + 4;
/// Header bytes of a `StreamFailure` besides its two strings.
const STREAM_FAILURE_HEAD_LEN: u64 = 9 + 4 + 4;

/// `error` cut to [`Config::max_error_len`] and to what fits a frame after a header of `head`
/// bytes (length field and type byte included).
pub(super) fn fit_error(config: &Config, error: &str, head: u64) -> String {
    let room = config.max_frame_size().saturating_sub(head);
    let max = room.min(u64::from(config.max_error_len()));
    truncate_str(error, usize::try_from(max).unwrap_or(usize::MAX)).to_owned()
}

/// A `StreamFailure` that fits the limits: the id cut to [`Config::max_id_len`] and to half a
/// frame, the error to what is left.
pub(super) fn stream_failure(config: &Config, stream_id: &str, error: &str) -> Frame {
    let half = config
        .max_frame_size()
        .saturating_sub(STREAM_FAILURE_HEAD_LEN)
        / 2;
    let id_max = half.min(u64::from(config.max_id_len()));
    let stream_id = truncate_str(stream_id, usize::try_from(id_max).unwrap_or(usize::MAX));
    let error = fit_error(
        config,
        error,
        STREAM_FAILURE_HEAD_LEN + stream_id.len() as u64,
    );
    Frame::StreamFailure {
        stream_id: stream_id.to_owned(),
        error,
    }
}

/// The error a request refused for [`Config::max_pending_requests`] is answered with.
pub(super) fn too_many_requests(config: &Config) -> String {
    format!(
        "too many requests pending on this connection (limit {})",
        config.max_pending_requests()
    )
}

/// The error a stream request refused for [`Config::max_pending_streams`] is answered with.
pub(super) fn too_many_streams(config: &Config) -> String {
    format!(
        "too many streams pending on this connection (limit {})",
        config.max_pending_streams()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::RequestId;

    #[test]
    fn a_failure_fits_a_small_frame_exactly() {
        let config = Config::builder().with_max_frame_size(1024).build().unwrap();
        let error = fit_error(&config, &"x".repeat(5000), FAILURE_HEAD_LEN);
        let frame = Frame::RpcFailure {
            request: RequestId(1),
            error,
        };
        assert_eq!(frame.frame_len(), 1024);
    }

    #[test]
    fn a_stream_failure_fits_a_small_frame() {
        let config = Config::builder().with_max_frame_size(1024).build().unwrap();
        let frame = stream_failure(&config, &"s".repeat(5000), &"e".repeat(5000));
        assert!(frame.frame_len() <= 1024, "{}", frame.frame_len());
        let Frame::StreamFailure { stream_id, error } = &frame else {
            unreachable!()
        };
        assert!(!stream_id.is_empty() && !error.is_empty());
    }

    #[test]
    fn short_texts_are_kept_whole() {
        let config = Config::default();
        assert_eq!(fit_error(&config, "boom", FAILURE_HEAD_LEN), "boom");
    }
}
