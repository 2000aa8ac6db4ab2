//! Stage 1, **validate**: a request becomes a [`NewMessage`] within the [`LimitsConfig`], or
//! an `InvalidInput` error that says what to change.
//!
//! Nothing here reads a store: a request that cannot be valid costs nothing more than this.

use cim_core::{Error, NewMessage, Result, Timestamp};

use crate::config::LimitsConfig;
use crate::message::{SendRequest, Sender};

/// A checked message, and when to deliver it if it is to be scheduled (`None`: now).
#[derive(Debug)]
pub(crate) struct Valid {
    pub(crate) message: NewMessage,
    pub(crate) deliver_at: Option<Timestamp>,
}

/// Checks `request` from `sender`, received at `now`.
pub(crate) fn request(
    limits: &LimitsConfig,
    sender: &Sender,
    request: SendRequest,
    now: Timestamp,
) -> Result<Valid> {
    if request.body.len() > limits.max_body_len {
        return Err(Error::invalid_input(format!(
            "the body is {} bytes; the limit is {} bytes",
            request.body.len(),
            limits.max_body_len
        )));
    }
    let deliver_at = match request.deliver_at {
        Some(at) if at > now => {
            let latest = now.plus(limits.max_schedule_ahead);
            if at > latest {
                return Err(Error::invalid_input(format!(
                    "deliver_at is more than {} ahead; the latest allowed now is {} (Unix ms)",
                    humantime::format_duration(limits.max_schedule_ahead),
                    latest.as_millis()
                )));
            }
            Some(at)
        }
        // Due already: delivered now, like any message.
        Some(_) | None => None,
    };
    let message = NewMessage {
        sender: sender.id,
        to: request.to,
        client_msg_id: request.client_msg_id,
        body: request.body,
        sent_at: now,
    };
    message.validate()?;
    Ok(Valid {
        message,
        deliver_at,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cim_core::{ErrorKind, Recipient, UserId};

    use super::*;

    fn sender() -> Sender {
        Sender::new(UserId(1), "alice")
    }

    fn send(body: &str, deliver_at: Option<Timestamp>) -> SendRequest {
        SendRequest {
            to: Recipient::User(UserId(2)),
            client_msg_id: "c1".into(),
            body: body.into(),
            deliver_at,
        }
    }

    #[test]
    fn the_body_limit_counts_bytes() {
        let limits = LimitsConfig {
            max_body_len: 4,
            ..LimitsConfig::default()
        };
        let now = Timestamp(1_000);
        request(&limits, &sender(), send("abcd", None), now).expect("4 bytes fit");
        let err = request(&limits, &sender(), send("ééé", None), now).expect_err("6 bytes");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.message().contains("limit is 4 bytes"), "{err}");
    }

    #[test]
    fn a_past_deliver_at_means_now_and_a_far_one_is_refused() {
        let limits = LimitsConfig {
            max_schedule_ahead: Duration::from_secs(60),
            ..LimitsConfig::default()
        };
        let now = Timestamp(1_000_000);
        let valid = request(&limits, &sender(), send("x", Some(Timestamp(5))), now).expect("ok");
        assert_eq!(valid.deliver_at, None);
        let soon = Timestamp(now.as_millis() + 60_000);
        let valid = request(&limits, &sender(), send("x", Some(soon)), now).expect("ok");
        assert_eq!(valid.deliver_at, Some(soon));
        let late = Timestamp(soon.as_millis() + 1);
        let err = request(&limits, &sender(), send("x", Some(late)), now).expect_err("too far");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn an_empty_client_msg_id_is_refused() {
        let mut bad = send("x", None);
        bad.client_msg_id.clear();
        let err = request(&LimitsConfig::default(), &sender(), bad, Timestamp(1)).expect_err("");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
}
