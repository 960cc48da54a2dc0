//! What a token and a user are: format, identity, policy, time, user JWTs.

pub mod admin;
pub mod clients;
pub mod clock;
pub mod jwt;
pub mod policy;
pub mod token;
pub mod user;
