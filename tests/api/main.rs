//! Integration tests against the real App on port 0 with a temporary sled directory.

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
