//! One integration-test binary: the real server, over HTTP.

mod helpers;
mod platform;
mod caddy;
mod handles;
mod context;
mod plans;
mod backup;
mod ai;
mod recs;
