//! Commands beside the server: backup, check, compact, dev mode.

pub mod backup;
pub mod check;
pub mod compact;
pub mod dev;
