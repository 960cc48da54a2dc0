//! agent-tokens: one agent API token per user, managed with the user's JWT,
//! verified by gateways and APIs. One binary, embedded storage (fjall), no database.

pub mod answers;
pub mod app;
pub mod auth;
pub mod backup;
pub mod check;
pub mod cli;
pub mod clock;
pub mod compact;
pub mod config;
pub mod conn;
pub mod dev;
pub mod durability;
pub mod error;
pub mod jwt;
pub mod layout;
pub mod legacy;
pub mod limits;
pub mod live;
pub mod metrics;
mod mutation;
pub mod openapi;
pub mod policy;
pub mod routes;
pub mod stamps;
pub mod store;
pub mod token;
pub mod user;
