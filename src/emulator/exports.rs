//! User export jobs: `POST /api/v2/jobs/users-exports`, `GET /api/v2/jobs/{id}` and the gzipped
//! file at the job's `location`.
//! https://auth0.com/docs/manage-users/user-migration/bulk-user-exports
//!
//! The file is built in a blocking task straight into a gzip encoder, a thousand users at a
//! time, so memory holds the compressed file and one chunk of profiles, never the whole tenant
//! twice. Each completed poll hands out a fresh `location` valid for 60 s, as Auth0's signed
//! URLs are.

use std::{
    collections::HashMap,
    io::Write,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use flate2::{Compression, write::GzEncoder};
use poem::{
    Body, Request, Response, handler,
    http::StatusCode,
    web::{Data, Path},
};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::{
    Shared, form_map,
    management::{ApiError, api_error, injected_fault, json_object},
    random_token,
    users::{
        CONNECTION, CONNECTION_ID, User, UserRef, UserStore, identity_id, initials_avatar,
        timestamp,
    },
};

const CHUNK: usize = 1000;
const LOCATION_TTL_SECS: i64 = 60;
/// Finished files are kept in memory; older jobs are forgotten beyond this many, or once the
/// files kept pass `KEEP_BYTES` (a million users make some 85 MB).
const KEEP_JOBS: usize = 20;
const KEEP_BYTES: usize = 256 * 1024 * 1024;
/// Auth0 limits CSV exports to 30 fields.
const MAX_CSV_FIELDS: usize = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
        }
    }
}

#[derive(Debug, Clone)]
struct Field {
    name: String,
    export_as: Option<String>,
}

impl Field {
    fn column(&self) -> &str {
        self.export_as.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pending,
    Processing,
    Completed,
    Failed,
}

struct Job {
    id: String,
    format: Format,
    fields: Vec<Field>,
    limit: usize,
    connection_id: Option<String>,
    created_at: DateTime<Utc>,
    status: Mutex<Status>,
    written: AtomicUsize,
    file: OnceLock<Result<Bytes, String>>,
    /// How long the file took to build, once it is built.
    built_in: OnceLock<Duration>,
}

/// One finished export file: how many users it holds, its size and how long it took to build
/// (the emulator's own work, which a sync only waits for).
#[derive(Debug, Clone)]
pub struct ExportBuild {
    pub job_id: String,
    pub users: usize,
    /// Gzipped bytes.
    pub bytes: usize,
    pub built_in: Duration,
}

/// The jobs of this emulator.
pub struct Exports {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    /// Signs download URLs.
    secret: String,
}

impl Default for Exports {
    fn default() -> Self {
        Self {
            jobs: Mutex::new(HashMap::new()),
            secret: random_token(32),
        }
    }
}

impl Exports {
    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Job>>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The files built so far, oldest first.
    pub fn builds(&self) -> Vec<ExportBuild> {
        let mut builds: Vec<(DateTime<Utc>, ExportBuild)> = self
            .jobs()
            .values()
            .filter_map(|job| {
                let built_in = *job.built_in.get()?;
                let Some(Ok(file)) = job.file.get() else {
                    return None;
                };
                Some((
                    job.created_at,
                    ExportBuild {
                        job_id: job.id.clone(),
                        users: job.written.load(Ordering::Relaxed),
                        bytes: file.len(),
                        built_in,
                    },
                ))
            })
            .collect();
        builds.sort_by_key(|(created, _)| *created);
        builds.into_iter().map(|(_, build)| build).collect()
    }

    fn signature(&self, file: &str, expires: i64) -> String {
        let digest = Sha256::digest(format!("{}|{file}|{expires}", self.secret));
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn job_json(job: &Job, shared: &Shared) -> Value {
    let status = *job.status.lock().unwrap_or_else(PoisonError::into_inner);
    let mut body = json!({
        "type": "users_export",
        "status": match status {
            Status::Pending => "pending",
            Status::Processing => "processing",
            Status::Completed => "completed",
            Status::Failed => "failed",
        },
        "id": job.id,
        "format": job.format.name(),
        "limit": job.limit,
        "fields": job.fields.iter().map(|f| match &f.export_as {
            Some(export_as) => json!({"name": f.name, "export_as": export_as}),
            None => json!({"name": f.name}),
        }).collect::<Vec<_>>(),
        "created_at": timestamp(job.created_at),
    });
    let Some(object) = body.as_object_mut() else {
        return body;
    };
    if let Some(connection_id) = &job.connection_id {
        object.insert("connection_id".into(), json!(connection_id));
        object.insert("connection".into(), json!(CONNECTION));
    }
    if status != Status::Pending {
        let written = job.written.load(Ordering::Relaxed);
        let percentage = (written * 100)
            .checked_div(job.limit)
            .unwrap_or(100)
            .min(100);
        object.insert("percentage_done".into(), json!(percentage));
        let left = if status == Status::Processing { 1 } else { 0 };
        object.insert("time_left_seconds".into(), json!(left));
    }
    if status == Status::Completed {
        let file = format!("{}.{}.gz", job.id, job.format.name());
        let expires = Utc::now().timestamp() + LOCATION_TTL_SECS;
        let signature = shared.exports.signature(&file, expires);
        let location = format!(
            "{}exports/{file}?expires={expires}&sig={signature}",
            shared.issuer
        );
        object.insert("location".into(), json!(location));
    }
    if status == Status::Failed
        && let Some(Err(message)) = job.file.get()
    {
        object.insert("summary".into(), json!({ "failed": 1, "error": message }));
    }
    body
}

/// `POST /api/v2/jobs/users-exports`.
#[handler]
pub async fn create_job(shared: Data<&Arc<Shared>>, body: Body) -> Response {
    let object = match json_object(body).await {
        Ok(object) => object,
        Err(err) => return err.into_response(),
    };
    let job = match parse_job(&object, &shared.users) {
        Ok(job) => Arc::new(job),
        Err(message) => return ApiError::bad_request(message, "invalid_body").into_response(),
    };
    {
        let mut jobs = shared.exports.jobs();
        let kept_bytes = |jobs: &HashMap<String, Arc<Job>>| -> usize {
            jobs.values()
                .filter_map(|j| j.file.get()?.as_ref().ok().map(Bytes::len))
                .sum()
        };
        while jobs.len() >= KEEP_JOBS || (!jobs.is_empty() && kept_bytes(&jobs) > KEEP_BYTES) {
            let Some(oldest) = jobs
                .values()
                .min_by_key(|j| j.created_at)
                .map(|j| j.id.clone())
            else {
                break;
            };
            jobs.remove(&oldest);
        }
        jobs.insert(job.id.clone(), job.clone());
    }
    let users = shared.users.clone();
    let worker = job.clone();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let result =
            build_file(&worker, &users).map_err(|e| format!("writing the export failed: {e}"));
        let _ = worker.built_in.set(started.elapsed());
        let _ = worker.file.set(result);
    });
    super::json_response(StatusCode::CREATED, &job_json(&job, &shared))
}

fn parse_job(object: &Map<String, Value>, users: &UserStore) -> Result<Job, String> {
    if let Some(unknown) = object
        .keys()
        .find(|k| !["connection_id", "format", "limit", "fields"].contains(&k.as_str()))
    {
        return Err(format!(
            "Payload validation error: 'Additional properties not allowed: {unknown}'."
        ));
    }
    // Auth0's default export format is CSV.
    let format = match object.get("format") {
        None => Format::Csv,
        Some(Value::String(f)) if f == "json" => Format::Json,
        Some(Value::String(f)) if f == "csv" => Format::Csv,
        Some(other) => {
            return Err(format!(
                "Payload validation error: format must be \"json\" or \"csv\", got {other}"
            ));
        }
    };
    let connection_id = match object.get("connection_id") {
        None => None,
        Some(Value::String(id)) if id == CONNECTION_ID => Some(id.clone()),
        Some(other) => return Err(format!("The connection does not exist: {other}")),
    };
    let total = users.count();
    let limit = match object.get("limit") {
        None => total,
        Some(value) => match value.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) if n > 0 => n.min(total),
            _ => {
                return Err(
                    "Payload validation error: limit must be a positive whole number".into(),
                );
            }
        },
    };
    let fields = match object.get("fields") {
        // Without `fields`, a useful default rather than an empty file.
        None => ["user_id", "email", "name", "created_at", "updated_at"]
            .iter()
            .map(|name| Field {
                name: (*name).to_owned(),
                export_as: None,
            })
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                let name = item
                    .get("name")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty());
                let export_as = match item.get("export_as") {
                    None => Ok(None),
                    Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                    Some(_) => Err("export_as must be a non-empty string".to_owned()),
                };
                match (name, export_as) {
                    (Some(name), Ok(export_as)) => Ok(Field {
                        name: name.to_owned(),
                        export_as,
                    }),
                    (None, _) => {
                        Err("Payload validation error: every field needs a \"name\"".to_owned())
                    }
                    (_, Err(e)) => Err(format!("Payload validation error: {e}")),
                }
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(
                "Payload validation error: fields must be an array of {name, export_as?}".into(),
            );
        }
    };
    if fields.is_empty() {
        return Err("Payload validation error: fields must not be empty".into());
    }
    if format == Format::Csv && fields.len() > MAX_CSV_FIELDS {
        return Err(format!(
            "A CSV export can have at most {MAX_CSV_FIELDS} fields"
        ));
    }
    Ok(Job {
        id: format!("job_{}", random_token(12).replace(['-', '_'], "x")),
        format,
        fields,
        limit,
        connection_id,
        created_at: Utc::now(),
        status: Mutex::new(Status::Pending),
        written: AtomicUsize::new(0),
        file: OnceLock::new(),
        built_in: OnceLock::new(),
    })
}

/// A dotted field name (`app_metadata.roles`) looked up in the user's JSON.
fn lookup<'a>(user: &'a Value, name: &str) -> Option<&'a Value> {
    name.split('.')
        .try_fold(user, |value, key| value.get(key))
        .filter(|v| !v.is_null())
}

fn csv_cell(value: Option<&Value>) -> String {
    let text = match value {
        None => return String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// The user's JSON with at least the exported fields. Plain top-level fields are rendered
/// directly; anything else (identities, metadata paths) falls back to the full user object,
/// which costs several times more per user.
fn export_json(user: &User, fields: &[Field]) -> Value {
    let mut object = Map::new();
    for field in fields {
        if let Some(value) = user.as_sent.get(&field.name) {
            object.insert(field.name.clone(), value.clone());
            continue;
        }
        let value = match field.name.as_str() {
            "user_id" => json!(user.user_id),
            "email" => json!(user.email),
            "email_verified" => json!(user.email_verified),
            "name" => json!(user.name),
            "nickname" => json!(user.nickname),
            "picture" => json!(user.picture()),
            "created_at" => json!(timestamp(user.created_at)),
            "updated_at" => json!(timestamp(user.updated_at)),
            "last_login" => match user.last_login {
                Some(at) => json!(timestamp(at)),
                None => continue,
            },
            "logins_count" if user.logins_count > 0 => json!(user.logins_count),
            "logins_count" => continue,
            "blocked" if user.blocked => json!(true),
            "blocked" => continue,
            _ => return user.to_json(),
        };
        object.insert(field.name.clone(), value);
    }
    Value::Object(object)
}

fn build_file(job: &Job, users: &UserStore) -> std::io::Result<Bytes> {
    let mut slots = users.snapshot();
    slots.truncate(job.limit);
    let mut out = GzEncoder::new(Vec::new(), Compression::fast());
    if job.format == Format::Csv {
        let header: Vec<String> = job
            .fields
            .iter()
            .map(|f| csv_cell(Some(&Value::String(f.column().to_owned()))))
            .collect();
        writeln!(out, "{}", header.join(","))?;
    }
    let mut text = Vec::new();
    for chunk in slots.chunks(CHUNK) {
        // Lines are made under the store's read lock, and compressed after it is released.
        text.clear();
        users.read_slots(chunk, |user| {
            if job.format == Format::Json && json_line(&mut text, user, &job.fields) {
                return;
            }
            line(&mut text, &user.to_user(), job);
        });
        out.write_all(&text)?;
        job.written.fetch_add(chunk.len(), Ordering::Relaxed);
    }
    Ok(Bytes::from(out.finish()?))
}

/// Appends the user's line built from a full [`User`]: any field, dotted paths included.
fn line(out: &mut Vec<u8>, stored: &User, job: &Job) {
    let user = export_json(stored, &job.fields);
    match job.format {
        Format::Json => {
            let mut line = Map::new();
            for field in &job.fields {
                if let Some(value) = lookup(&user, &field.name) {
                    line.insert(field.column().to_owned(), value.clone());
                }
            }
            let line = stored.to_json_text(Value::Object(line), |key| {
                job.fields.iter().any(|f| f.name == key)
            });
            out.extend_from_slice(line.get().as_bytes());
        }
        Format::Csv => {
            let row: Vec<String> = job
                .fields
                .iter()
                .map(|f| csv_cell(lookup(&user, &f.name)))
                .collect();
            out.extend_from_slice(row.join(",").as_bytes());
        }
    }
    out.push(b'\n');
}

/// Appends the user's NDJSON line written straight from the stored user, as [`line`] would
/// write it, when every field is one a seeded or API-made user has (no metadata or fields as a
/// users file gave them); returns `false`, having written nothing, otherwise. A tenant of a
/// million users is exported in seconds this way.
fn json_line(out: &mut Vec<u8>, user: &UserRef<'_>, fields: &[Field]) -> bool {
    if user.has_extra() {
        return false;
    }
    let start = out.len();
    out.push(b'{');
    for field in fields {
        let value = match field.name.as_str() {
            "user_id" => Json::Text(user.user_id().into()),
            "email" => Json::Text(user.email().into()),
            "email_verified" => Json::Raw(user.email_verified().to_string()),
            "name" => Json::Text(user.name().into()),
            "nickname" => Json::Text(user.nickname().into()),
            "picture" => Json::Text(initials_avatar(user.name()).into()),
            "created_at" => Json::Text(timestamp(user.created_at()).into()),
            "updated_at" => Json::Text(timestamp(user.updated_at()).into()),
            "last_login" => user
                .last_login()
                .map_or(Json::Absent, |at| Json::Text(timestamp(at).into())),
            "logins_count" if user.logins_count() > 0 => Json::Raw(user.logins_count().to_string()),
            "blocked" if user.blocked() => Json::Raw("true".into()),
            "identities" => Json::Raw(
                json!([{
                    "connection": CONNECTION,
                    "user_id": identity_id(user.user_id()),
                    "provider": "auth0",
                    "isSocial": false,
                }])
                .to_string(),
            ),
            "app_metadata" => {
                let roles: Vec<&str> = user.roles().collect();
                if roles.is_empty() {
                    Json::Absent
                } else {
                    Json::Raw(json!({ "roles": roles }).to_string())
                }
            }
            // Attributes such a user does not have: absent from its profile, as at Auth0.
            "logins_count" | "blocked" | "user_metadata" | "given_name" | "family_name"
            | "username" | "phone_number" | "phone_verified" | "last_ip" => Json::Absent,
            _ => {
                out.truncate(start);
                return false;
            }
        };
        let value = match value {
            Json::Absent => continue,
            Json::Text(text) => serde_json::to_string(&*text).unwrap_or_default(),
            Json::Raw(json) => json,
        };
        if out.len() > start + 1 {
            out.push(b',');
        }
        json_string(out, field.column());
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(b"}\n");
    true
}

/// One value of an export line: a string to quote, JSON as it is, or nothing.
enum Json<'a> {
    Text(std::borrow::Cow<'a, str>),
    Raw(String),
    Absent,
}

fn json_string(out: &mut Vec<u8>, text: &str) {
    // Writing to a Vec cannot fail, and a str always serialises.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// `GET /api/v2/jobs/{id}`: each poll moves the job on (pending → processing → completed once
/// the file is ready), so clients exercise their polling loop.
#[handler]
pub async fn job_status(Path(id): Path<String>, shared: Data<&Arc<Shared>>) -> Response {
    let job = shared.exports.jobs().get(&id).cloned();
    let Some(job) = job else {
        return api_error(
            StatusCode::NOT_FOUND,
            "The job does not exist.",
            "inexistent_job",
        );
    };
    {
        let mut status = job.status.lock().unwrap_or_else(PoisonError::into_inner);
        *status = match (*status, job.file.get()) {
            (Status::Pending, _) => Status::Processing,
            (Status::Processing, Some(Ok(_))) => Status::Completed,
            (Status::Processing, Some(Err(_))) => Status::Failed,
            (current, _) => current,
        };
    }
    super::json_response(StatusCode::OK, &job_json(&job, &shared))
}

/// `GET /exports/{job}.{format}.gz?expires&sig`: the file, while the signed URL is valid.
#[handler]
pub async fn download(
    req: &Request,
    Path(file): Path<String>,
    shared: Data<&Arc<Shared>>,
) -> Response {
    if let Some(response) = injected_fault(&shared).await {
        return response;
    }
    let params = form_map(req.uri().query().unwrap_or(""));
    let expires = params.get("expires").and_then(|e| e.parse::<i64>().ok());
    let valid = match (expires, params.get("sig")) {
        (Some(expires), Some(sig)) => {
            expires >= Utc::now().timestamp() && *sig == shared.exports.signature(&file, expires)
        }
        _ => false,
    };
    if !valid {
        return Response::builder()
            .status(StatusCode::FORBIDDEN)
            .content_type("text/plain")
            .body("Request has expired or the signature does not match; fetch the job again for a fresh location.");
    }
    let id = file.split('.').next().unwrap_or_default();
    let job = shared.exports.jobs().get(id).cloned();
    match job.as_ref().and_then(|job| job.file.get()) {
        Some(Ok(bytes)) => {
            let body = match shared.faults.take_download_cut() {
                Some(cut) => {
                    let head = bytes.slice(..cut.min(bytes.len()));
                    Body::from_bytes_stream(futures::stream::iter([
                        Ok(head),
                        Err(std::io::Error::other(
                            "download cut (emulator fault switch)",
                        )),
                    ]))
                }
                None => Body::from(bytes.clone()),
            };
            Response::builder()
                .content_type("application/gzip")
                .header(
                    "content-disposition",
                    format!("attachment; filename=\"{file}\""),
                )
                .body(body)
        }
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .content_type("text/plain")
            .body("No such export file."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::users::NewUser;

    #[test]
    fn lines_written_straight_from_the_store_match_the_full_path() {
        let store = UserStore::new();
        store.seed(60);
        store
            .create(NewUser {
                name: Some("Zoë \"Z\" \\ O'Neil".into()),
                email_verified: true,
                blocked: true,
                logins_count: 3,
                last_login: Some(Utc::now()),
                roles: vec!["admin".into(), "a\"b".into()],
                ..NewUser::with_email("zoe@example.com")
            })
            .unwrap();
        let mut fields: Vec<Value> = crate::users::fields::EXPORT_FIELDS
            .iter()
            .map(|name| json!({ "name": name }))
            .collect();
        fields.push(json!({"name": "updated_at", "export_as": "changed"}));
        let object = json!({"format": "json", "fields": fields});
        let job = parse_job(object.as_object().unwrap(), &store).unwrap();
        let mut compared = 0;
        store.read_slots(&store.snapshot(), |user| {
            let (mut fast, mut full) = (Vec::new(), Vec::new());
            assert!(json_line(&mut fast, user, &job.fields));
            line(&mut full, &user.to_user(), &job);
            let parse = |text: &[u8]| serde_json::from_slice::<Value>(text).unwrap();
            assert_eq!(parse(&fast), parse(&full), "{}", user.user_id());
            compared += 1;
        });
        assert_eq!(compared, 61);

        // A field it does not know, or a user with more than it reads, takes the full path.
        let dotted = json!({"format": "json", "fields": [{"name": "app_metadata.roles"}]});
        let dotted = parse_job(dotted.as_object().unwrap(), &store).unwrap();
        store.read_slots(&store.snapshot()[..1], |user| {
            let mut out = b"kept".to_vec();
            assert!(!json_line(&mut out, user, &dotted.fields));
            assert_eq!(out, b"kept");
        });
    }
}
