//! Reading and writing the app's own cookies (the session and the per-sign-in binding cookies),
//! all with the same attributes: `HttpOnly`, `SameSite=Lax`, `Path=/`, and `Secure` plus the
//! `__Host-` prefix when the app is served over https (RFC 6265bis, "Cookie Name Prefixes").

use poem::{Request, Response, http::header};

/// The name a cookie gets: `__Host-` pins it to this host, path `/` and https.
pub fn name(base: &str, secure: bool) -> String {
    if secure {
        format!("__Host-{base}")
    } else {
        base.to_owned()
    }
}

/// The value of the cookie `name` in the request, if present and not empty.
pub fn read(req: &Request, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}

/// Adds a `Set-Cookie`; `max_age` in seconds (0 deletes the cookie).
pub fn set(response: &mut Response, name: &str, value: &str, secure: bool, max_age: u64) {
    let mut cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}");
    if secure {
        cookie.push_str("; Secure");
    }
    if let Ok(value) = header::HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}
