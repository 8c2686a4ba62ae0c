//! The REST door's extractors: [`Authorized<O>`] proves the tenant of a request and starts the
//! operation `O` from the operation table (scope, rate-limit cost, `api_call`); [`AdminCtx`] checks
//! the admin token. Both run before the body is read.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::ops::Deref;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use crate::auth::{AdminProof, RequestIdentity};
use crate::error::Error;
use crate::services::{Operation, RateSlot, TenantCtx, TierSlot};
use crate::state::AppState;

/// A tenant proven for this request, allowed to run `O`, with `O`'s cost taken.
pub struct Authorized<O: Operation> {
    ctx: TenantCtx,
    _op: PhantomData<O>,
}

impl<O: Operation> Deref for Authorized<O> {
    type Target = TenantCtx;
    fn deref(&self) -> &TenantCtx {
        &self.ctx
    }
}

impl<O: Operation> FromRequestParts<AppState> for Authorized<O> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let ctx = authenticate(parts, state).await?;
        ctx.begin(O::OP)?;
        Ok(Authorized { ctx, _op: PhantomData })
    }
}

/// Proves the tenant of a request without starting an operation (the MCP door: each tool starts its own).
pub async fn authenticate(parts: &Parts, state: &AppState) -> Result<TenantCtx, Error> {
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let rate = parts.extensions.get::<RateSlot>().cloned();
    let id = RequestIdentity { headers: &parts.headers, uri_host: parts.uri.host(), peer };
    TenantCtx::authenticate(state, id, rate, parts.extensions.get::<TierSlot>()).await
}

/// Proof of the admin token.
pub struct AdminCtx(pub AdminProof);

impl FromRequestParts<AppState> for AdminCtx {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        crate::auth::verify_admin(&parts.headers, &state.admin_token_hash).map(AdminCtx)
    }
}
