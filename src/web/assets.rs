//! Static assets embedded in the binary, served with a strong ETag and long-lived caching.
//!
//! URLs carry a content hash (`/assets/app.css?v=...`), so browsers may cache them for a year and
//! still pick up a new deploy at once.

use std::sync::LazyLock;

use poem::{
    Request, Response, handler,
    http::{StatusCode, header},
    web::Path,
};
use sha2::{Digest, Sha256};

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    etag: String,
    version: String,
}

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    [
        (
            "htmx.min.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../../assets/htmx.min.js").as_slice(),
        ),
        (
            "htmx-errors.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../../assets/htmx-errors.js").as_slice(),
        ),
        (
            "app.css",
            "text/css; charset=utf-8",
            include_bytes!("../../assets/app.css").as_slice(),
        ),
        (
            "favicon.svg",
            "image/svg+xml",
            include_bytes!("../../assets/favicon.svg").as_slice(),
        ),
    ]
    .into_iter()
    .map(|(name, content_type, body)| {
        let hash: String = Sha256::digest(body)
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect();
        Asset {
            name,
            content_type,
            body,
            etag: format!("\"{hash}\""),
            version: hash[..12].to_owned(),
        }
    })
    .collect()
});

/// The versioned URL of an embedded asset.
pub fn url(name: &str) -> String {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(asset) => format!("/assets/{}?v={}", asset.name, asset.version),
        None => format!("/assets/{name}"),
    }
}

#[handler]
pub fn serve(req: &Request, Path(name): Path<String>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return StatusCode::NOT_FOUND.into();
    };
    let builder = Response::builder()
        .header(header::ETAG, asset.etag.as_str())
        .header(header::CACHE_CONTROL, "public, max-age=31536000, immutable");
    let fresh = req.header(header::IF_NONE_MATCH).is_some_and(|tags| {
        tags.split(',')
            .any(|t| t.trim() == asset.etag || t.trim() == "*")
    });
    if fresh {
        return builder.status(StatusCode::NOT_MODIFIED).finish();
    }
    builder
        .header(header::CONTENT_TYPE, asset.content_type)
        .body(asset.body)
}
