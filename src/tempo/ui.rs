//! The trace view: one page served at `/` (search) and `/trace/<id>` (a trace as a
//! waterfall), HTML, CSS and JavaScript embedded in the binary. The page is a client of the
//! Tempo HTTP API beside it (search, tags, values, trace by id as JSON), so it shows exactly
//! what Grafana would. The page itself holds no data and is served without the bearer
//! token; the API calls it makes send the token the user enters (kept in the tab's session
//! storage). See docs/ui.md.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// The page (the same document for `/` and `/trace/<id>`; the script reads the path).
pub const INDEX_HTML: &str = include_str!("ui/index.html");
/// The page's script.
pub const APP_JS: &str = include_str!("ui/app.js");
/// The page's style sheet.
pub const STYLE_CSS: &str = include_str!("ui/style.css");

/// The page's routes: `/`, `/trace/{id}`, `/ui/app.js`, `/ui/style.css`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/trace/{id}", get(index))
        .route("/ui/app.js", get(app_js))
        .route("/ui/style.css", get(style_css))
}

/// The answers never go stale within a build, but a new build must be picked up.
const CACHE: (header::HeaderName, &str) = (header::CACHE_CONTROL, "no-cache");

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), CACHE],
        INDEX_HTML,
    )
}

async fn app_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            CACHE,
        ],
        APP_JS,
    )
}

async fn style_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8"), CACHE],
        STYLE_CSS,
    )
}
