//! The files under `/static` (the pages' stylesheet), built into the binary so that
//! tokengate serves them whatever folder it starts in. `TOKENGATE_STATIC_DIR` serves
//! a folder instead (actix-files), for an operator who restyles the pages.

use actix_web::http::header::{self, EntityTag, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use std::path::PathBuf;

#[derive(rust_embed::Embed)]
#[folder = "static/"]
struct Static;

pub fn configure(cfg: &mut web::ServiceConfig, dir: Option<&PathBuf>) {
    match dir {
        Some(dir) => {
            cfg.service(actix_files::Files::new("/static", dir).prefer_utf8(true));
        }
        None => {
            cfg.route("/static/{path:.*}", web::get().to(embedded));
        }
    }
}

async fn embedded(req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let Some(file) = Static::get(&path) else {
        return HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .body("not found");
    };
    // The content's hash: a new binary with a changed file gets a new tag.
    let tag = EntityTag::new_strong(hex::encode(&file.metadata.sha256_hash()[..16]));
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag.to_string()));
    let mut res = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    let mime = file.metadata.mimetype();
    let content_type = if mime.starts_with("text/") && !mime.contains("charset") {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_owned()
    };
    res.insert_header((header::ETAG, tag))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")));
    if fresh {
        return res.finish();
    }
    res.insert_header((header::CONTENT_TYPE, content_type))
        .body(file.data.into_owned())
}
