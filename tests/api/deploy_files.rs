//! The deployment files agree with the app: `fly.toml`, `Dockerfile`, `.ci/run`, `.env.example`
//! and the README's configuration table. No Docker engine or Fly account is needed: the files are
//! parsed and every command they name is run against the binary cargo built for these tests.

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
    process::Command,
};

use quotebook::{config::Settings, startup::Application};
use reqwest::StatusCode;
use sqlx::{ConnectOptions, Connection};

use crate::helpers::{self, spawn_app};

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
}

fn fly_toml() -> toml::Table {
    read("fly.toml")
        .parse()
        .unwrap_or_else(|err| panic!("fly.toml is not valid TOML: {err}"))
}

fn dockerfile() -> Dockerfile {
    Dockerfile::parse(&read("Dockerfile"))
}

fn table<'a>(value: &'a toml::Table, key: &str) -> &'a toml::Table {
    value
        .get(key)
        .and_then(toml::Value::as_table)
        .unwrap_or_else(|| panic!("fly.toml: [{key}] is missing or not a table"))
}

fn string<'a>(value: &'a toml::Table, key: &str) -> &'a str {
    value
        .get(key)
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("fly.toml: `{key}` is missing or not a string"))
}

/// A Dockerfile reduced to what these tests need: stages with their instructions.
struct Dockerfile {
    stages: Vec<Stage>,
}

struct Stage {
    name: Option<String>,
    base: String,
    /// (INSTRUCTION, arguments) with continuation lines joined.
    instructions: Vec<(String, String)>,
}

impl Dockerfile {
    fn parse(text: &str) -> Self {
        let mut logical = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            // Comments (and parser directives) may sit between continuation lines.
            if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
                continue;
            }
            match trimmed.strip_suffix('\\') {
                Some(part) => {
                    current.push_str(part);
                    current.push(' ');
                }
                None => {
                    current.push_str(trimmed);
                    logical.push(std::mem::take(&mut current));
                }
            }
        }
        assert!(current.is_empty(), "Dockerfile ends inside a continuation");

        let mut stages: Vec<Stage> = Vec::new();
        for line in logical {
            let (instruction, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
            let instruction = instruction.to_ascii_uppercase();
            let args = args.trim().to_owned();
            if instruction == "FROM" {
                let words: Vec<&str> = args.split_whitespace().collect();
                let name = match words.as_slice() {
                    [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                    _ => None,
                };
                stages.push(Stage {
                    name,
                    base: words[0].to_owned(),
                    instructions: Vec::new(),
                });
            } else {
                stages
                    .last_mut()
                    .expect("an instruction before the first FROM")
                    .instructions
                    .push((instruction, args));
            }
        }
        Self { stages }
    }

    fn runtime(&self) -> &Stage {
        self.stages.last().expect("Dockerfile has no stage")
    }

    fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name.as_deref() == Some(name))
    }

    /// The stage whose RUN contains `needle`.
    fn stage_running(&self, needle: &str) -> &Stage {
        self.stages
            .iter()
            .find(|s| s.runs().any(|run| run.contains(needle)))
            .unwrap_or_else(|| panic!("no stage runs `{needle}`"))
    }

    /// ENV of a stage, including what it inherits from a stage it is built `FROM`.
    fn env(&self, stage: &Stage) -> HashMap<String, String> {
        let mut env = match self.stage(&stage.base) {
            Some(parent) => self.env(parent),
            None => HashMap::new(),
        };
        for (instruction, args) in &stage.instructions {
            if instruction == "ENV" {
                for pair in args.split_whitespace() {
                    let (key, value) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("ENV `{args}`: use the KEY=VALUE form"));
                    env.insert(key.to_owned(), value.trim_matches('"').to_owned());
                }
            }
        }
        env
    }
}

impl Stage {
    fn all(&self, instruction: &str) -> impl Iterator<Item = &str> {
        self.instructions
            .iter()
            .filter(move |(i, _)| i == instruction)
            .map(|(_, args)| args.as_str())
    }

    fn runs(&self) -> impl Iterator<Item = &str> {
        self.all("RUN")
    }

    fn one(&self, instruction: &str) -> &str {
        let found: Vec<&str> = self.all(instruction).collect();
        assert_eq!(
            found.len(),
            1,
            "expected exactly one {instruction} in the runtime stage, found {found:?}"
        );
        found[0]
    }

    /// An exec-form (JSON array) instruction such as ENTRYPOINT or CMD.
    fn exec_form(&self, instruction: &str) -> Vec<String> {
        let raw = self.one(instruction);
        serde_json::from_str(raw).unwrap_or_else(|_| {
            panic!("{instruction} must use the exec form (a JSON array) so signals reach the app, got {raw}")
        })
    }
}

/// The arguments Fly passes to the image's ENTRYPOINT for a process or release command: the
/// command replaces CMD and the ENTRYPOINT stays (fly.io/docs/reference/configuration, `deploy`
/// and `processes` sections).
fn argv_through_entrypoint(entrypoint: &[String], command: &str) -> Vec<String> {
    assert!(
        !command.contains(['"', '\'', '$', '\\']),
        "keep fly.toml commands to plain words so this test splits them as Fly does: {command:?}"
    );
    entrypoint[1..]
        .iter()
        .cloned()
        .chain(command.split_whitespace().map(str::to_owned))
        .collect()
}

/// Runs the built binary with `args --help`: clap rejects unknown subcommands and flags before it
/// reads any configuration, so success means the command line is one the app understands.
fn assert_is_a_real_command(what: &str, args: &[String]) {
    let output = Command::new(env!("CARGO_BIN_EXE_quotebook"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run the quotebook binary");
    assert!(
        output.status.success(),
        "{what} runs `quotebook {}`, which the binary rejects:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn entrypoint() -> Vec<String> {
    let entrypoint = dockerfile().runtime().exec_form("ENTRYPOINT");
    assert!(!entrypoint.is_empty(), "ENTRYPOINT is empty");
    entrypoint
}

#[test]
fn port_is_the_same_in_fly_toml_and_the_image() {
    let fly = fly_toml();
    let docker = dockerfile();
    let runtime = docker.runtime();

    let internal_port = table(&fly, "http_service")
        .get("internal_port")
        .and_then(toml::Value::as_integer)
        .expect("http_service.internal_port is an integer");
    let exposed: i64 = runtime
        .one("EXPOSE")
        .trim_end_matches("/tcp")
        .parse()
        .expect("EXPOSE is a port number");
    let image_port: i64 = docker.env(runtime)["PORT"]
        .parse()
        .expect("the image's PORT is a number");
    let fly_port: i64 = string(table(&fly, "env"), "PORT")
        .parse()
        .expect("fly.toml [env] PORT is a number");

    assert_eq!(internal_port, exposed, "internal_port vs EXPOSE");
    assert_eq!(
        internal_port, image_port,
        "internal_port vs the image's ENV PORT"
    );
    assert_eq!(internal_port, fly_port, "internal_port vs [env] PORT");
}

#[test]
fn image_and_fly_env_with_the_documented_secrets_make_a_valid_production_config() {
    let docker = dockerfile();
    let mut vars = docker.env(docker.runtime());
    for (key, value) in table(&fly_toml(), "env") {
        let value = value
            .as_str()
            .unwrap_or_else(|| panic!("fly.toml [env] {key}: Fly env values are strings"));
        vars.insert(key.clone(), value.to_owned());
    }
    // The secrets the README tells you to `fly secrets set` (placeholder values).
    for (key, value) in [
        ("APP_BASE_URL", "https://quotebook.fly.dev"),
        (
            "DATABASE_URL",
            "postgres://u:p@ep-x-pooler.us-east-1.aws.neon.tech/neondb?sslmode=require",
        ),
        ("AUTH0_DOMAIN", "tenant.us.auth0.com"),
        ("AUTH0_CLIENT_ID", "client-id"),
        ("AUTH0_CLIENT_SECRET", "client-secret"),
        ("AUTH0_MGMT_CLIENT_ID", "m2m-client-id"),
        ("AUTH0_MGMT_CLIENT_SECRET", "m2m-client-secret"),
        ("SESSION_SECRET", "0123456789abcdef0123456789abcdef"),
        ("ADMIN_API_TOKEN", "admin-token"),
    ] {
        vars.insert(key.to_owned(), value.to_owned());
    }

    let settings = Settings::from_vars(&vars)
        .unwrap_or_else(|err| panic!("the production environment is refused: {err}"));
    assert!(settings.is_production());
    assert!(settings.trust_proxy_headers, "behind Fly's proxy");
    assert_eq!(
        settings.host,
        std::net::IpAddr::from([0, 0, 0, 0]),
        "Fly's proxy reaches the app from outside the Machine"
    );
    let internal_port = table(&fly_toml(), "http_service")["internal_port"]
        .as_integer()
        .expect("internal_port is an integer");
    assert_eq!(i64::from(settings.port), internal_port);
    // The README's secrets name only the pooled URL: migrations and the worker get the direct one.
    assert_eq!(
        settings
            .database
            .url_for(quotebook::config::DatabaseUse::Session)
            .map(|url| url.expose().to_owned()),
        Some("postgres://u:p@ep-x.us-east-1.aws.neon.tech/neondb?sslmode=require".to_owned())
    );
}

#[tokio::test]
async fn fly_health_checks_hit_routes_the_app_serves() {
    let fly = fly_toml();
    let checks = table(&fly, "http_service")
        .get("checks")
        .and_then(toml::Value::as_array)
        .expect("[[http_service.checks]] is configured");
    assert!(!checks.is_empty(), "at least one health check");

    let app = spawn_app().await;
    for check in checks {
        let check = check.as_table().expect("a check is a table");
        let method = check
            .get("method")
            .and_then(toml::Value::as_str)
            .unwrap_or("GET");
        let path = string(check, "path");
        let response = app
            .client
            .request(method.parse().expect("an HTTP method"), app.url(path))
            .send()
            .await
            .expect("request the health check path");
        // Fly's checks do not follow redirects: only a direct 200 counts.
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "health check {method} {path}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn start_up_migrates_through_the_direct_url_when_given() {
    // DATABASE_URL points at an empty database, DATABASE_URL_DIRECT at a migrated one: if the
    // app migrated through its (pooled) DATABASE_URL, the empty one would gain the migrations
    // table. On Neon that would mean a session advisory lock taken through PgBouncer.
    let cluster = helpers::cluster();
    let direct = cluster.create_database().await;
    let pooled = format!("qb_test_empty_{}", helpers::random_suffix());
    let mut admin = cluster
        .options("postgres")
        .connect()
        .await
        .expect("connect to the test server");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{pooled}\"")))
        .execute(&mut admin)
        .await
        .expect("create an empty database");

    let vars = helpers::test_vars(
        &cluster.url(&pooled),
        &[("DATABASE_URL_DIRECT", &cluster.url(&direct))],
    );
    let app = Application::build(Settings::from_vars(&vars).expect("settings"))
        .await
        .expect("the app starts");
    let mut pooled_conn = cluster
        .options(&pooled)
        .connect()
        .await
        .expect("connect to the pooled database");
    let migrated: bool =
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
            .fetch_one(&mut pooled_conn)
            .await
            .expect("query the pooled database");
    assert!(
        !migrated,
        "migrations ran through DATABASE_URL, not DATABASE_URL_DIRECT"
    );

    drop(app);
    let _ = pooled_conn.close().await;
    let _ = admin.close().await;
    cluster.drop_database(pooled);
    cluster.drop_database(direct);
}

#[test]
fn entrypoint_is_the_package_binary() {
    let entrypoint = entrypoint();
    let binary = Path::new(env!("CARGO_BIN_EXE_quotebook"))
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("binary name");
    assert_eq!(entrypoint[0], binary);

    // The runtime stage must install that binary on PATH under the same name.
    let docker = dockerfile();
    let copied = docker
        .runtime()
        .all("COPY")
        .any(|args| args.ends_with(&format!("/bin/{binary}")));
    assert!(
        copied,
        "the runtime stage copies the binary to a bin/{binary}"
    );
}

#[test]
fn image_default_command_is_a_real_subcommand() {
    let cmd = dockerfile().runtime().exec_form("CMD");
    assert_is_a_real_command("the image's CMD", &[&entrypoint()[1..], &cmd[..]].concat());
}

#[test]
fn release_command_is_a_real_subcommand() {
    let fly = fly_toml();
    let release = string(table(&fly, "deploy"), "release_command");
    let argv = argv_through_entrypoint(&entrypoint(), release);
    assert_is_a_real_command("[deploy] release_command", &argv);
    assert_eq!(
        argv.first().map(String::as_str),
        Some("migrate"),
        "the release command applies migrations"
    );
}

#[test]
fn process_commands_are_real_subcommands() {
    let fly = fly_toml();
    let processes = table(&fly, "processes");
    assert!(
        !processes.is_empty(),
        "[processes] lists the process groups"
    );
    let entrypoint = entrypoint();
    for (name, command) in processes {
        let command = command
            .as_str()
            .unwrap_or_else(|| panic!("process {name}: a command string"));
        assert_is_a_real_command(
            &format!("process `{name}`"),
            &argv_through_entrypoint(&entrypoint, command),
        );
    }

    // Every process group the http_service routes to exists.
    let routed = table(&fly, "http_service")
        .get("processes")
        .and_then(toml::Value::as_array)
        .expect("http_service.processes");
    for group in routed {
        let group = group.as_str().expect("a process group name");
        assert!(
            processes.contains_key(group),
            "unknown process group {group}"
        );
    }
}

#[test]
fn image_builds_the_way_ci_checks_it() {
    let docker = dockerfile();
    let release_flags = ["--release", "--locked", "--no-default-features"];

    let builder = docker.stage_running("cargo build");
    let build = builder
        .runs()
        .find(|run| run.contains("cargo build"))
        .expect("a cargo build");
    let cook = builder
        .runs()
        .find(|run| run.contains("cargo chef cook"))
        .expect("dependencies are cooked with cargo-chef in the build stage");
    for flag in release_flags {
        assert!(build.contains(flag), "`{build}` lacks {flag}");
        // Different flags would cook dependencies the final build cannot reuse.
        assert!(cook.contains(flag), "`{cook}` lacks {flag}");
    }
    assert_eq!(
        docker.env(builder).get("SQLX_OFFLINE").map(String::as_str),
        Some("true"),
        "the build stage sets SQLX_OFFLINE=true (there is no database at build time)"
    );

    // CI builds the release binary exactly like the image does.
    let ci = read(".ci/run");
    assert!(
        ci.lines().any(|line| {
            let line = line.trim();
            !line.starts_with('#')
                && line.contains("SQLX_OFFLINE=true")
                && line.contains("cargo build")
                && release_flags.iter().all(|flag| line.contains(flag))
        }),
        ".ci/run builds with SQLX_OFFLINE=true cargo build {}",
        release_flags.join(" ")
    );

    // A DATABASE_URL exported in a developer's shell must not make builds reach for a database.
    let cargo_config: toml::Table = read(".cargo/config.toml")
        .parse()
        .expect(".cargo/config.toml is valid TOML");
    assert_eq!(
        cargo_config
            .get("env")
            .and_then(|env| env.get("SQLX_OFFLINE"))
            .and_then(toml::Value::as_str),
        Some("true"),
        ".cargo/config.toml [env] SQLX_OFFLINE"
    );
}

/// Variable names the app reads: quoted SCREAMING_CASE literals in `config.rs`, and
/// `std::env::var("...")` / `var_os("...")` calls anywhere under `src/`.
fn variables_the_app_reads() -> BTreeSet<String> {
    // Not settings: the label for a malformed .env file, and the system's search path.
    const NOT_SETTINGS: [&str; 2] = ["DOTENV", "PATH"];
    fn is_variable(word: &str) -> bool {
        word.len() >= 4
            && !NOT_SETTINGS.contains(&word)
            && word.starts_with(|c: char| c.is_ascii_uppercase())
            && word
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    }

    let mut names: BTreeSet<String> = read("src/config.rs")
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|w| is_variable(w))
        .map(str::to_owned)
        .collect();
    let mut pending = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src/").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read a source file");
                for call in ["env::var(\"", "env::var_os(\""] {
                    for piece in text.split(call).skip(1) {
                        if let Some(name) = piece.split('"').next().filter(|w| is_variable(w)) {
                            names.insert(name.to_owned());
                        }
                    }
                }
            }
        }
    }
    assert!(
        names.contains("DATABASE_URL") && names.contains("PORT"),
        "the scan found too little: {names:?}"
    );
    names
}

#[test]
fn env_example_and_readme_document_every_variable() {
    let example = read(".env.example");
    let documented: BTreeSet<&str> = example
        .lines()
        .map(|line| line.trim_start_matches('#').trim())
        .filter_map(|line| line.split_once('=').map(|(name, _)| name.trim()))
        .collect();
    let readme = read("README.md");

    let missing_example: Vec<String> = variables_the_app_reads()
        .into_iter()
        .filter(|name| !documented.contains(name.as_str()))
        .collect();
    assert!(
        missing_example.is_empty(),
        ".env.example lacks {missing_example:?}"
    );
    let missing_readme: Vec<String> = variables_the_app_reads()
        .into_iter()
        .filter(|name| !readme.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing_readme.is_empty(),
        "README.md's configuration table lacks {missing_readme:?}"
    );
}
