//! Channels: their history (epoch + offset, for recovery), their presence,
//! and each worker's index of local subscribers.

pub mod history;
pub mod presence;
pub mod topics;
pub mod users;

pub use crate::base::channel::{user_channel, valid_channel, valid_user, Position, USER_PREFIX};
pub use crate::base::Frame;
