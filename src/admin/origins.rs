//! `GET /admin/origins` (bearer token): each route's origin group, its policy, and every
//! origin's health state and counts, as JSON.

use http::{Response, StatusCode};

use crate::http::body::Body;
use crate::proxy::Edge;

pub fn handle(edge: &Edge) -> Response<Body> {
    super::json(StatusCode::OK, edge.origin.snapshot())
}
