//! The HTTP middleware stack: tower-http layers around the poem application.
//!
//! tower-http layers speak `http::Request`, poem endpoints speak `poem::Request`; the bridge
//! below turns the poem app into a tower service (carrying poem's connection info across in an
//! extension), the layers wrap it, and poem's `TowerCompatExt` turns the result back into an
//! endpoint. Order, outermost first: request id, trace span, id propagation, security headers,
//! `Cache-Control: no-store`, compression, timeout, then (poem side) the body limit
//! (`web::body_limit`) and the app.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use poem::{
    Endpoint, EndpointExt, IntoEndpoint, IntoResponse, Request, Response,
    endpoint::{BoxEndpoint, TowerCompatExt},
    http::uri::Scheme,
    web::{LocalAddr, RemoteAddr},
};
use tower::ServiceBuilder;
use tower_http::{
    compression::CompressionLayer,
    map_response_body::MapResponseBodyLayer,
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    set_header::SetResponseHeaderLayer,
    timeout::TimeoutLayer,
    trace::TraceLayer,
};

/// The body type poem's tower bridge hands to tower services.
type BoxBody = http_body_util::combinators::BoxBody<bytes::Bytes, std::io::Error>;

fn io_body<B>(body: B) -> BoxBody
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    body.map_err(std::io::Error::other).boxed()
}

/// Content Security Policy: scripts and styles only from our origin (htmx is vendored), no
/// framing. Images may come from identity providers (profile pictures).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; \
                   connect-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'none'";

#[derive(Debug, Clone, Copy)]
pub struct StackSettings {
    pub body_limit: usize,
    /// Routes that read their own (larger) bodies after authenticating the caller.
    pub own_body_limits: &'static [crate::web::body_limit::OwnBodyLimit],
    pub request_timeout: Duration,
    /// Whether `X-Forwarded-Proto` from a trusted proxy (Fly) decides the scheme.
    pub trust_proxy_headers: bool,
}

/// Wraps `app` in the full middleware stack.
pub fn wrap(
    app: impl IntoEndpoint<Endpoint: 'static>,
    settings: StackSettings,
) -> BoxEndpoint<'static> {
    let body_limit = settings.body_limit;
    let own_body_limits = settings.own_body_limits;
    let inner = PoemService(Arc::new(
        app.into_endpoint()
            .around(move |ep, req| {
                crate::web::body_limit::read_within(ep, req, body_limit, own_body_limits)
            })
            .around(crate::error::render_errors)
            .around(move |ep, req| crate::observability::observe(ep, req, settings.request_timeout))
            .map_to_response()
            .boxed(),
    ));
    let header = |name: &'static str, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        )
    };
    let service = ServiceBuilder::new()
        // poem wants a body whose error is a concrete `std::error::Error`.
        .layer(MapResponseBodyLayer::new(io_body))
        .layer(SetRequestIdLayer::x_request_id(RandomRequestId))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &http::Request<BoxBody>| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    // `route` is filled in once the request is routed (`observability::named`).
                    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id, route = tracing::field::Empty)
                })
                // The request's log line comes from `observability::observe`, which knows the
                // route template and user; this layer only provides the span.
                .on_request(())
                .on_response(())
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(header("content-security-policy", CSP))
        .layer(header("x-content-type-options", "nosniff"))
        .layer(header("referrer-policy", "strict-origin-when-cross-origin"))
        .layer(header("x-frame-options", "DENY"))
        // No private page in any cache, whatever produced it (handler, error page, redirect,
        // a layer's own 413 or 503): every response may depend on the session unless it says
        // otherwise. Only the versioned, public `/assets/*` do, with their own Cache-Control.
        .layer(header("cache-control", "no-store"))
        .layer(CompressionLayer::new())
        // Outside the body limit, so a slow body upload counts against the timeout too.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            settings.request_timeout,
        ))
        .service(inner);

    let trust_proxy = settings.trust_proxy_headers;
    service
        .compat()
        // tower layers answer some requests themselves (413, timeouts): render those too.
        .around(|ep, req| async move {
            let audience = crate::error::Audience::of(&req);
            let response = ep.call(req).await?.into_response();
            let id = response
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Ok::<_, poem::Error>(crate::error::give_body(audience, response, id.as_deref()))
        })
        .before(move |mut req: Request| async move {
            let scheme = if trust_proxy && req.header("x-forwarded-proto") == Some("https") {
                Scheme::HTTPS
            } else {
                req.scheme().clone()
            };
            let info = ConnectionInfo {
                local: req.local_addr().clone(),
                remote: req.remote_addr().clone(),
                scheme,
            };
            req.extensions_mut().insert(info);
            Ok(req)
        })
        .boxed()
}

/// poem's connection details, which do not survive the trip through `http::Request`.
#[derive(Debug, Clone)]
struct ConnectionInfo {
    local: LocalAddr,
    remote: RemoteAddr,
    scheme: Scheme,
}

/// A poem endpoint as a tower service.
#[derive(Clone)]
struct PoemService(Arc<BoxEndpoint<'static, Response>>);

impl<B> tower::Service<http::Request<B>> for PoemService
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<BoxBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let endpoint = self.0.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let info = parts.extensions.remove::<ConnectionInfo>();
            let (local, remote, scheme) = match info {
                Some(i) => (i.local, i.remote, i.scheme),
                None => (LocalAddr::default(), RemoteAddr::default(), Scheme::HTTP),
            };
            let parts = poem::RequestParts::from((parts, local, remote, scheme));
            let body: BoxBody = body.map_err(std::io::Error::other).boxed();
            let req = Request::from_parts(parts, poem::Body::from(body));
            Ok(endpoint.get_response(req).await.into())
        })
    }
}

/// Request ids: 16 random bytes as hex, unless the client (or Fly's proxy) sent one.
#[derive(Debug, Clone, Copy)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _request: &http::Request<B>) -> Option<RequestId> {
        let bytes: [u8; 16] = rand::random();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        HeaderValue::from_str(&hex).ok().map(RequestId::new)
    }
}
