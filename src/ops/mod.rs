//! Commands beside the server: backup, check, compact, dev mode, scan.

pub mod admin;
pub mod backup;
pub mod check;
pub mod compact;
pub mod dev;
pub mod scan;
