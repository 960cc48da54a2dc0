//! The HTTP server: state, authentication, limits, errors, routes.

pub mod answers;
pub mod app;
pub mod audit;
pub mod auth;
pub mod conn;
pub mod error;
pub mod limits;
pub mod openapi;
pub mod reload;
pub mod routes;
pub mod state;
