//! Getting the hot path's statements (reserve, settle) into diesel's prepared-statement
//! cache, so each is compiled once per connection instead of on every request.
//!
//! Two things kept them out, both measured in profiles of the benchmark:
//! - diesel's `MultiConnection` (our `AnyConnection`) writes out a statement's whole
//!   SQL text on every execution, to hand it to the backend; `on_backend!` runs the
//!   statement on the concrete connection instead, where a statement with a static
//!   query id is found in the cache by its type alone.
//! - diesel never caches an `UPDATE`, because an `AsChangeset` struct with `Option`
//!   fields changes its SQL with its values. `FixedUpdate` marks an `UPDATE` whose
//!   changeset is a tuple of plain `column.eq(value)` pairs: its SQL never changes.

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::{QueryResult, RunQueryDsl};

/// Runs `$body` with `$c` bound to the concrete connection inside an
/// [`AnyConnection`](super::AnyConnection). The body is compiled once per backend.
macro_rules! on_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::db::AnyConnection::Sqlite($c) => $body,
            $crate::db::AnyConnection::Postgresql($c) => $body,
        }
    };
}
pub(crate) use on_backend;

/// An `UPDATE` whose SQL text is the same on every execution, so it may be cached.
/// Only for changesets that are tuples of `column.eq(value)`: never for an
/// `AsChangeset` struct with `Option` fields, nor with `eq_any` in the filter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FixedUpdate<Q>(pub Q);

impl<Q: QueryId> QueryId for FixedUpdate<Q> {
    type QueryId = Q::QueryId;
    const HAS_STATIC_QUERY_ID: bool = Q::HAS_STATIC_QUERY_ID;
}

impl<Q: Query> Query for FixedUpdate<Q> {
    type SqlType = Q::SqlType;
}

impl<Q: QueryFragment<DB>, DB: Backend> QueryFragment<DB> for FixedUpdate<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &DB) -> QueryResult<bool> {
        Ok(true)
    }
}

impl<Q, Conn> RunQueryDsl<Conn> for FixedUpdate<Q> {}
