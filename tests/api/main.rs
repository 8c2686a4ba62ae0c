//! One integration-test binary: the real server, over HTTP.

mod ai;
mod backup;
mod caddy;
mod cluster;
mod context;
mod control_plane;
mod crash;
mod dashboard;
mod erasure;
mod export;
mod handles;
mod helpers;
mod isolation;
mod jobs;
mod pg;
mod plans;
mod platform;
mod recs;
mod retention;
mod s3proxy;
mod scopes;
mod storage;
mod woocommerce;
