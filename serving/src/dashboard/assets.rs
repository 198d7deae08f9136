//! The dashboard's files, compiled into the binary: the page, its modules and style, and the
//! vendored chart library (uPlot 1.6.32 from npm, MIT, `serving/assets/vendor`). Nothing is
//! built or fetched at run time, and the page loads nothing from another origin.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::response::{IntoResponse, Response};

/// The page may load and call only its own origin, and may not be framed.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

const INDEX: &[u8] = include_bytes!("../../assets/index.html");

/// Every file under `/assets/`: its path there, its type, its bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("app.js", JS, include_bytes!("../../assets/app.js")),
    ("api.js", JS, include_bytes!("../../assets/api.js")),
    ("dom.js", JS, include_bytes!("../../assets/dom.js")),
    ("charts.js", JS, include_bytes!("../../assets/charts.js")),
    (
        "overview.js",
        JS,
        include_bytes!("../../assets/overview.js"),
    ),
    ("job.js", JS, include_bytes!("../../assets/job.js")),
    ("dlq.js", JS, include_bytes!("../../assets/dlq.js")),
    ("quality.js", JS, include_bytes!("../../assets/quality.js")),
    ("app.css", CSS, include_bytes!("../../assets/app.css")),
    (
        "vendor/uPlot.iife.min.js",
        JS,
        include_bytes!("../../assets/vendor/uPlot.iife.min.js"),
    ),
    (
        "vendor/uPlot.min.css",
        CSS,
        include_bytes!("../../assets/vendor/uPlot.min.css"),
    ),
    (
        "vendor/LICENSE-uPlot",
        TEXT,
        include_bytes!("../../assets/vendor/LICENSE-uPlot"),
    ),
];

/// `GET /`: the page.
pub(crate) async fn index() -> Response {
    (
        [
            (CONTENT_TYPE, HTML),
            (CACHE_CONTROL, "no-cache"),
            (CONTENT_SECURITY_POLICY, POLICY),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (X_FRAME_OPTIONS, "DENY"),
            (REFERRER_POLICY, "no-referrer"),
        ],
        INDEX,
    )
        .into_response()
}

/// `GET /assets/{*path}`: one embedded file, or a 404.
pub(crate) async fn asset(Path(path): Path<String>) -> Response {
    match find(&path) {
        Some((content_type, bytes)) => (
            [
                (CONTENT_TYPE, content_type),
                (CACHE_CONTROL, "no-cache"),
                (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            bytes,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(CONTENT_TYPE, "application/json")],
            serde_json::json!({"error": "not_found", "message": format!("no dashboard asset `{path}`")})
                .to_string(),
        )
            .into_response(),
    }
}

fn find(path: &str) -> Option<(&'static str, &'static [u8])> {
    ASSETS
        .iter()
        .find(|(name, _, _)| *name == path)
        .map(|&(_, content_type, bytes)| (content_type, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_embedded_files() {
        let page = std::str::from_utf8(INDEX).expect("the page is UTF-8");
        let mut named = 0;
        for part in page.split("assets/").skip(1) {
            let path: String = part
                .chars()
                .take_while(|c| !matches!(c, '"' | '\'' | '?' | '#'))
                .collect();
            assert!(
                find(&path).is_some(),
                "the page loads `{path}`, which is not embedded"
            );
            named += 1;
        }
        assert!(named >= 3, "the page loads its script, its style and uPlot");
    }

    #[test]
    fn every_module_the_scripts_import_is_embedded() {
        for (name, content_type, bytes) in ASSETS {
            if *content_type != JS || name.starts_with("vendor/") {
                continue;
            }
            let script = std::str::from_utf8(bytes).expect("scripts are UTF-8");
            for line in script.lines().filter(|l| l.starts_with("import ")) {
                let Some(from) = line.split(['"', '\'']).nth(1) else {
                    continue;
                };
                let path = from.trim_start_matches("./");
                assert!(
                    find(path).is_some(),
                    "{name} imports `{from}`, which is not embedded"
                );
            }
        }
    }
}
