//! agent-tokens: one agent API token per user, managed with the user's JWT,
//! verified by gateways and APIs. One binary, embedded storage (fjall), no database.

pub mod cli;
pub mod config;
pub mod metrics;

pub mod domain;
pub mod http;
pub mod idp;
pub mod ops;
pub mod store;
