//! Hand-written statements that PostgreSQL prepares once per connection.
//!
//! `diesel::sql_query` never caches its statement, so PostgreSQL parses and
//! plans it on every call: for the multi-statement CTEs of the hot paths
//! (creating an order, paying a pending one) that planning cost more CPU
//! than executing them (pgbench here: 2,200 transactions/s unprepared,
//! 3,600/s prepared). A statement declared with [`Sql`] gets a static query
//! id, so diesel's statement cache prepares it once per connection.
//!
//! Its parameters are bound exactly as `sql_query` binds them: the text goes
//! out as written (`$1`, `$2`, ... in it) and `.bind::<SqlType, _>(value)`
//! adds the values in placeholder order. A count or a type that does not
//! match the text is refused by PostgreSQL when it prepares the statement,
//! which every test of the statement does.

use std::marker::PhantomData;

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId, SqlQuery};
use diesel::result::QueryResult;

/// A hand-written statement: one type per SQL text, whose type id is the
/// statement cache's key for it.
pub(crate) trait Sql: 'static {
    /// The SQL, its parameters written `$1`, `$2`, ...
    const TEXT: &'static str;
}

/// The statement `S` with its binds `Q` (a `sql_query` of `S::TEXT` and its
/// `.bind` chain), cached by `S`.
pub(crate) struct Prepared<S, Q>(Q, PhantomData<S>);

/// The statement `S`, bound by `binds` in placeholder order, e.g.
/// `prepared::<S, _>(|q| q.bind::<Text, _>(a).bind::<BigInt, _>(b))`.
pub(crate) fn prepared<S: Sql, Q>(binds: impl FnOnce(SqlQuery) -> Q) -> Prepared<S, Q> {
    Prepared(binds(diesel::sql_query(S::TEXT)), PhantomData)
}

impl<S: Sql, Q> QueryId for Prepared<S, Q> {
    type QueryId = S;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<S, Q> Query for Prepared<S, Q> {
    type SqlType = diesel::sql_types::Untyped;
}

impl<S, Q, Conn> diesel::RunQueryDsl<Conn> for Prepared<S, Q> {}

impl<S, Q: QueryFragment<Pg>> QueryFragment<Pg> for Prepared<S, Q> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(out)
    }

    /// `sql_query` calls itself unsafe to cache because its text can differ
    /// from call to call; here the text is `S::TEXT`, the same for every
    /// value of the type the cache knows it by.
    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}
