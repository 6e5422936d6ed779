//! The quote a signed-in person keeps: parsing, queries, views and routes.

pub mod batched_saves;
pub mod queries;
pub mod quote;
pub mod routes;
pub mod views;

use poem::{Route, get, post};

use crate::observability::named;

pub fn routes() -> Route {
    Route::new()
        .at("/", named("/", get(routes::home)))
        .at(
            "/quote",
            named(
                "/quote",
                get(routes::show)
                    .post(routes::save)
                    .put(routes::save)
                    .delete(routes::delete),
            ),
        )
        .at("/quote/edit", named("/quote/edit", get(routes::edit)))
        .at(
            "/quote/delete",
            named("/quote/delete", post(routes::delete_form)),
        )
}
