//! The gateway's error type lives in [`crate::base::error`] (the broker and
//! auth use it too); this path stays for the code and tests that name it.

pub use crate::base::error::{error_json, OpError};
