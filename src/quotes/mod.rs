//! The quote a signed-in person keeps: parsing, queries, views and routes.

pub mod queries;
pub mod quote;
pub mod routes;
pub mod views;

use poem::{Route, get, post};

pub fn routes() -> Route {
    Route::new()
        .at("/", get(routes::home))
        .at(
            "/quote",
            get(routes::show)
                .post(routes::save)
                .put(routes::save)
                .delete(routes::delete),
        )
        .at("/quote/edit", get(routes::edit))
        .at("/quote/delete", post(routes::delete_form))
}
