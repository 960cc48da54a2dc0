//! Integration tests against the real App on port 0 with a temporary data directory.

#[path = "../common/mod.rs"]
mod common;

mod audit;
mod caddy;
mod concurrency;
mod consumers;
mod deprovision;
mod docs;
mod failures;
mod gateway;
mod helpers;
mod jwt;
mod limits;
mod oauth2;
mod ops;
mod persistence;
mod tokens;
mod verify;
