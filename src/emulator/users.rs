//! The emulated tenant's users, in memory, with an ordered `updated_at` index so sorted listing
//! and range searches stay cheap at a million users.
//!
//! User JSON follows the Management API's user object:
//! https://auth0.com/docs/api/management/v2/users/get-users

use std::{
    collections::BTreeSet,
    hash::BuildHasher,
    ops::Bound,
    path::Path,
    sync::{Arc, PoisonError, RwLock},
};

use anyhow::Context;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use hashbrown::HashTable;
use rand::Rng;
use serde_json::{Map, Value, json, value::RawValue};

use super::search::{Filter, Range, Sort, SortField};

/// The database connection every emulated user belongs to.
pub const CONNECTION: &str = "Username-Password-Authentication";
pub const CONNECTION_ID: &str = "con_qbEmulatorDb0001";

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub user_id: String,
    pub email: String,
    pub email_verified: bool,
    pub name: String,
    pub nickname: String,
    /// `None`: Auth0's generated initials avatar.
    pub picture: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login: Option<DateTime<Utc>>,
    pub logins_count: u64,
    pub blocked: bool,
    /// Exposed as `app_metadata.roles` and in the ID token's roles claim.
    pub roles: Vec<String>,
    /// Everything in `app_metadata` except `roles`.
    pub app_metadata: Map<String, Value>,
    pub user_metadata: Map<String, Value>,
    /// Fields served exactly as a users file gave them: attributes the emulator does not model
    /// (`identities` of other providers, `username`, `phone_number`, ...) and modelled ones in
    /// another shape than the emulator's own (`"email_verified": "true"`, as profiles from some
    /// connections carry it). A change to a field through the API drops its entry.
    pub as_sent: Map<String, Value>,
    /// Like `as_sent`, for values kept as JSON text because serde_json cannot hold them: a lone
    /// UTF-16 surrogate escape (`"\ud800"`), which JavaScript's `JSON.stringify` writes and so
    /// Auth0 can return. Served verbatim by [`User::to_json_text`].
    pub as_sent_text: Vec<(String, String)>,
}

/// The id part after `provider|`, as it appears in `identities[].user_id`.
pub(crate) fn identity_id(user_id: &str) -> &str {
    user_id.split_once('|').map_or(user_id, |(_, id)| id)
}

/// Auth0's generated avatar for a user without a picture: the initials of the name.
pub fn initials_avatar(name: &str) -> String {
    let initials: String = name
        .split_whitespace()
        .filter_map(|w| w.chars().next())
        .filter(char::is_ascii_alphabetic)
        .take(2)
        .collect::<String>()
        .to_lowercase();
    let initials = if initials.is_empty() {
        "u".into()
    } else {
        initials
    };
    format!("https://cdn.auth0.com/avatars/{initials}.png")
}

/// Auth0's timestamp format: ISO 8601, milliseconds, `Z`.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl User {
    pub fn picture(&self) -> String {
        self.picture
            .clone()
            .unwrap_or_else(|| initials_avatar(&self.name))
    }

    /// The id part after `provider|`, as it appears in `identities[].user_id`.
    fn identity_id(&self) -> &str {
        identity_id(&self.user_id)
    }

    pub fn app_metadata_json(&self) -> Map<String, Value> {
        let mut meta = self.app_metadata.clone();
        if !self.roles.is_empty() {
            meta.insert("roles".into(), json!(self.roles));
        }
        meta
    }

    /// The user as the Management API returns it. Like Auth0, optional attributes that were
    /// never set (`last_login`, `logins_count`, `blocked`, empty metadata) are left out.
    pub fn to_json(&self) -> Value {
        let mut user = json!({
            "user_id": self.user_id,
            "email": self.email,
            "email_verified": self.email_verified,
            "name": self.name,
            "nickname": self.nickname,
            "picture": self.picture(),
            "created_at": timestamp(self.created_at),
            "updated_at": timestamp(self.updated_at),
            "identities": [{
                "connection": CONNECTION,
                "user_id": self.identity_id(),
                "provider": "auth0",
                "isSocial": false,
            }],
        });
        let Some(object) = user.as_object_mut() else {
            return user;
        };
        if let Some(given) = &self.given_name {
            object.insert("given_name".into(), json!(given));
        }
        if let Some(family) = &self.family_name {
            object.insert("family_name".into(), json!(family));
        }
        let app_metadata = self.app_metadata_json();
        if !app_metadata.is_empty() {
            object.insert("app_metadata".into(), Value::Object(app_metadata));
        }
        if !self.user_metadata.is_empty() {
            object.insert(
                "user_metadata".into(),
                Value::Object(self.user_metadata.clone()),
            );
        }
        if let Some(last_login) = self.last_login {
            object.insert("last_login".into(), json!(timestamp(last_login)));
        }
        if self.logins_count > 0 {
            object.insert("logins_count".into(), json!(self.logins_count));
        }
        if self.blocked {
            object.insert("blocked".into(), json!(true));
        }
        for (key, value) in &self.as_sent {
            object.insert(key.clone(), value.clone());
        }
        user
    }

    /// `user` (this user's [`User::to_json`], fields possibly selected) as JSON text with the
    /// fields kept as text added, those that `keep` accepts.
    pub fn to_json_text(&self, user: Value, keep: impl Fn(&str) -> bool) -> Box<RawValue> {
        with_text_fields(user, &self.as_sent_text, keep)
    }
}

/// Adds `fields` (key, JSON text) to the object `object`, replacing same-named keys, without
/// parsing the text. Texts that are not JSON at all are left out.
pub fn with_text_fields(
    mut object: Value,
    fields: &[(String, String)],
    keep: impl Fn(&str) -> bool,
) -> Box<RawValue> {
    let kept: Vec<&(String, String)> = fields
        .iter()
        .filter(|(key, text)| keep(key) && RawValue::from_string(text.clone()).is_ok())
        .collect();
    if let Some(map) = object.as_object_mut() {
        for (key, _) in &kept {
            map.remove(key);
        }
    }
    let mut text = object.to_string();
    if text.ends_with('}') {
        for (key, value) in kept {
            text.pop();
            if text.len() > 1 {
                text.push(',');
            }
            text.push_str(&Value::String(key.clone()).to_string());
            text.push(':');
            text.push_str(value);
            text.push('}');
        }
    }
    RawValue::from_string(text).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// What a new user is made from; everything but `email` has a sensible default.
#[derive(Debug, Clone, Default)]
pub struct NewUser {
    pub email: String,
    /// `None`: `auth0|` and 24 random hex digits, like Auth0's database users.
    pub user_id: Option<String>,
    pub name: Option<String>,
    pub nickname: Option<String>,
    pub picture: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub email_verified: bool,
    pub blocked: bool,
    pub roles: Vec<String>,
    pub app_metadata: Map<String, Value>,
    pub user_metadata: Map<String, Value>,
    /// `None`: now. Seeding and imports set these to the past.
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub last_login: Option<DateTime<Utc>>,
    pub logins_count: u64,
    /// See [`User::as_sent`].
    pub as_sent: Map<String, Value>,
    /// See [`User::as_sent_text`].
    pub as_sent_text: Vec<(String, String)>,
}

impl NewUser {
    pub fn with_email(email: impl Into<String>) -> Self {
        Self {
            email: email.into(),
            ..Self::default()
        }
    }
}

/// A change to a user; `None` leaves a field alone. Metadata merges key by key (a JSON `null`
/// removes a key), as Auth0's PATCH does.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub email: Option<String>,
    pub email_verified: Option<bool>,
    pub name: Option<String>,
    pub nickname: Option<String>,
    pub picture: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub blocked: Option<bool>,
    pub roles: Option<Vec<String>>,
    pub app_metadata: Option<Map<String, Value>>,
    pub user_metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("The user does not exist.")]
    NotFound,
    #[error("The user already exists.")]
    Conflict,
    #[error("{0}")]
    Invalid(String),
}

/// One page of a search, and how many users matched in all.
#[derive(Debug)]
pub struct SearchPage {
    pub total: usize,
    pub users: Vec<User>,
}

/// How a user is kept: a compact record in a slot of its own, about a fifth of a [`User`]'s
/// size, so a tenant of a million users fits in a few hundred megabytes. The short texts share
/// one allocation; times are UNIX milliseconds (Auth0's precision); rarely set fields live in
/// `extra`.
struct Stored {
    /// `user_id`, `email` (lower-cased, as Auth0 keeps database users'), `name` and
    /// `nickname`, back to back.
    text: Box<str>,
    /// Where `email`, `name` and `nickname` start in `text`.
    starts: [u32; 3],
    created_at: i64,
    updated_at: i64,
    /// [`NEVER`] when the user never logged in.
    last_login: i64,
    logins_count: u64,
    email_verified: bool,
    blocked: bool,
    roles: Box<[Box<str>]>,
    extra: Option<Box<Extra>>,
}

/// `last_login` of a user who never logged in.
const NEVER: i64 = i64::MIN;

struct Extra {
    picture: Option<String>,
    given_name: Option<String>,
    family_name: Option<String>,
    app_metadata: Map<String, Value>,
    user_metadata: Map<String, Value>,
    as_sent: Map<String, Value>,
    as_sent_text: Vec<(String, String)>,
}

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

impl Stored {
    fn user_id(&self) -> &str {
        &self.text[..self.starts[0] as usize]
    }

    fn email(&self) -> &str {
        &self.text[self.starts[0] as usize..self.starts[1] as usize]
    }

    fn name(&self) -> &str {
        &self.text[self.starts[1] as usize..self.starts[2] as usize]
    }

    fn nickname(&self) -> &str {
        &self.text[self.starts[2] as usize..]
    }

    fn last_login(&self) -> Option<i64> {
        (self.last_login != NEVER).then_some(self.last_login)
    }

    fn to_user(&self) -> User {
        let extra = self.extra.as_deref();
        User {
            user_id: self.user_id().to_owned(),
            email: self.email().to_owned(),
            email_verified: self.email_verified,
            name: self.name().to_owned(),
            nickname: self.nickname().to_owned(),
            picture: extra.and_then(|e| e.picture.clone()),
            given_name: extra.and_then(|e| e.given_name.clone()),
            family_name: extra.and_then(|e| e.family_name.clone()),
            created_at: from_millis(self.created_at),
            updated_at: from_millis(self.updated_at),
            last_login: self.last_login().map(from_millis),
            logins_count: self.logins_count,
            blocked: self.blocked,
            roles: self.roles.iter().map(|r| r.to_string()).collect(),
            app_metadata: extra.map(|e| e.app_metadata.clone()).unwrap_or_default(),
            user_metadata: extra.map(|e| e.user_metadata.clone()).unwrap_or_default(),
            as_sent: extra.map(|e| e.as_sent.clone()).unwrap_or_default(),
            as_sent_text: extra.map(|e| e.as_sent_text.clone()).unwrap_or_default(),
        }
    }

    fn from_user(user: User) -> Stored {
        let has_extra = user.picture.is_some()
            || user.given_name.is_some()
            || user.family_name.is_some()
            || !user.app_metadata.is_empty()
            || !user.user_metadata.is_empty()
            || !user.as_sent.is_empty()
            || !user.as_sent_text.is_empty();
        let extra = has_extra.then(|| {
            Box::new(Extra {
                picture: user.picture,
                given_name: user.given_name,
                family_name: user.family_name,
                app_metadata: user.app_metadata,
                user_metadata: user.user_metadata,
                as_sent: user.as_sent,
                as_sent_text: user.as_sent_text,
            })
        });
        let mut text = String::with_capacity(
            user.user_id.len() + user.email.len() + user.name.len() + user.nickname.len(),
        );
        let mut starts = [0u32; 3];
        for (start, part) in starts
            .iter_mut()
            .zip([&user.user_id, &user.email, &user.name])
        {
            text.push_str(part);
            // Texts past 4 GiB do not reach the store: a request body is bounded far below.
            *start = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        text.push_str(&user.nickname);
        Stored {
            text: text.into_boxed_str(),
            starts,
            created_at: millis(user.created_at),
            updated_at: millis(user.updated_at),
            last_login: user.last_login.map_or(NEVER, millis),
            logins_count: user.logins_count,
            email_verified: user.email_verified,
            blocked: user.blocked,
            roles: user.roles.into_iter().map(String::into_boxed_str).collect(),
            extra,
        }
    }
}

/// The users, and indexes into them by slot number. A slot keeps its user for the user's
/// lifetime (changes are made in place) and is never reused, so a list of slots taken for an
/// export still names the same users later.
struct Inner {
    slots: Vec<Option<Stored>>,
    count: usize,
    by_id: TextIndex,
    /// Emails are kept lower-cased (Auth0 does so for database users).
    by_email: TextIndex,
    /// `(updated_at millis, slot)`: listing by `updated_at` and range searches walk this.
    by_updated: BTreeSet<IndexKey>,
    /// The last `updated_at` handed out, so every change gets a later stamp than the one before
    /// (an incremental sync reading `updated_at:{watermark TO *]` never misses a change).
    last_stamp: Option<DateTime<Utc>>,
}

/// Slots by one text of their user (its id, its email), which is read from the slot rather
/// than kept twice.
struct TextIndex {
    text: fn(&Stored) -> &str,
    hasher: std::collections::hash_map::RandomState,
    table: HashTable<u32>,
}

impl TextIndex {
    fn new(text: fn(&Stored) -> &str) -> Self {
        Self {
            text,
            hasher: Default::default(),
            table: HashTable::new(),
        }
    }

    fn find(&self, slots: &[Option<Stored>], key: &str) -> Option<u32> {
        let text = self.text;
        let holds = |&slot: &u32| {
            slots[slot as usize]
                .as_ref()
                .is_some_and(|u| text(u) == key)
        };
        self.table.find(self.hasher.hash_one(key), holds).copied()
    }

    fn reserve(&mut self, slots: &[Option<Stored>], more: usize) {
        let Self {
            text,
            hasher,
            table,
        } = self;
        table.reserve(more, rehash(*text, hasher, slots));
    }

    fn insert(&mut self, slots: &[Option<Stored>], slot: u32) {
        let Some(user) = slots[slot as usize].as_ref() else {
            return;
        };
        let Self {
            text,
            hasher,
            table,
        } = self;
        let hash = hasher.hash_one(text(user));
        table.insert_unique(hash, slot, rehash(*text, hasher, slots));
    }

    fn remove(&mut self, slots: &[Option<Stored>], slot: u32) {
        let Some(user) = slots[slot as usize].as_ref() else {
            return;
        };
        let hash = self.hasher.hash_one((self.text)(user));
        if let Ok(entry) = self.table.find_entry(hash, |&s| s == slot) {
            entry.remove();
        }
    }
}

/// The hash of the `text` of the user in a slot, for a table growing its buckets.
fn rehash<'a>(
    text: fn(&Stored) -> &str,
    hasher: &'a std::collections::hash_map::RandomState,
    slots: &'a [Option<Stored>],
) -> impl Fn(&u32) -> u64 + 'a {
    move |&slot| hasher.hash_one(slots[slot as usize].as_ref().map_or("", text))
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            count: 0,
            by_id: TextIndex::new(Stored::user_id),
            by_email: TextIndex::new(Stored::email),
            by_updated: BTreeSet::new(),
            last_stamp: None,
        }
    }
}

impl Inner {
    fn next_stamp(&mut self) -> DateTime<Utc> {
        let now = from_millis(millis(Utc::now()));
        let stamp = match self.last_stamp {
            Some(last) if now <= last => last + Duration::milliseconds(1),
            _ => now,
        };
        self.last_stamp = Some(stamp);
        stamp
    }

    fn stored(&self, slot: u32) -> Option<&Stored> {
        self.slots.get(slot as usize)?.as_ref()
    }

    fn slot_of(&self, user_id: &str) -> Option<u32> {
        self.by_id.find(&self.slots, user_id)
    }

    fn slot_of_email(&self, email: &str) -> Option<u32> {
        self.by_email.find(&self.slots, email)
    }

    fn contains_email(&self, email: &str) -> bool {
        self.slot_of_email(email).is_some()
    }

    /// Indexes the user in `slot` (which holds it already).
    fn index(&mut self, slot: u32) {
        self.by_id.insert(&self.slots, slot);
        self.by_email.insert(&self.slots, slot);
        if let Some(user) = self.stored(slot) {
            let key = (user.updated_at, slot);
            self.by_updated.insert(key);
        }
    }

    /// Removes the user in `slot` from the indexes (it stays in its slot).
    fn unindex(&mut self, slot: u32) {
        self.by_id.remove(&self.slots, slot);
        self.by_email.remove(&self.slots, slot);
        if let Some(user) = self.stored(slot) {
            let key = (user.updated_at, slot);
            self.by_updated.remove(&key);
        }
    }

    fn insert(&mut self, user: User) {
        let Ok(slot) = u32::try_from(self.slots.len()) else {
            // Four billion users: far past what an emulated tenant holds.
            return;
        };
        self.slots.push(Some(Stored::from_user(user)));
        self.count += 1;
        self.index(slot);
    }

    /// Replaces the user in `slot` (keeping the slot).
    fn replace(&mut self, slot: u32, user: User) {
        self.unindex(slot);
        self.slots[slot as usize] = Some(Stored::from_user(user));
        self.index(slot);
    }

    fn remove(&mut self, user_id: &str) -> Option<User> {
        let slot = self.slot_of(user_id)?;
        self.unindex(slot);
        let user = self.slots[slot as usize].take()?;
        self.count -= 1;
        Some(user.to_user())
    }

    fn get(&self, user_id: &str) -> Option<User> {
        self.stored(self.slot_of(user_id)?).map(Stored::to_user)
    }
}

/// The tenant's users. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct UserStore {
    inner: Arc<RwLock<Inner>>,
}

impl UserStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn count(&self) -> usize {
        self.read().count
    }

    pub fn get(&self, user_id: &str) -> Option<User> {
        self.read().get(user_id)
    }

    pub fn find_by_email(&self, email: &str) -> Option<User> {
        let inner = self.read();
        let slot = inner.slot_of_email(email.trim().to_lowercase().as_str())?;
        inner.stored(slot).map(Stored::to_user)
    }

    pub fn create(&self, new: NewUser) -> Result<User, StoreError> {
        let email = valid_email(&new.email)?;
        let user_id = match new.user_id {
            Some(id) if id.trim().is_empty() => {
                return Err(StoreError::Invalid("user_id must not be empty".into()));
            }
            Some(id) if id.contains('|') => id,
            Some(id) => format!("auth0|{id}"),
            None => random_user_id(),
        };
        let mut inner = self.write();
        if inner.slot_of(&user_id).is_some() || inner.contains_email(&email) {
            return Err(StoreError::Conflict);
        }
        let now = inner.next_stamp();
        let created_at = new.created_at.unwrap_or(now);
        let local = email.split('@').next().unwrap_or(&email).to_owned();
        let user = User {
            name: new
                .name
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| email.clone()),
            nickname: new.nickname.unwrap_or(local),
            email,
            user_id,
            email_verified: new.email_verified,
            picture: new.picture,
            given_name: new.given_name,
            family_name: new.family_name,
            created_at,
            updated_at: new.updated_at.unwrap_or(now).max(created_at),
            last_login: new.last_login,
            logins_count: new.logins_count,
            blocked: new.blocked,
            roles: new.roles,
            app_metadata: new.app_metadata,
            user_metadata: new.user_metadata,
            as_sent: new.as_sent,
            as_sent_text: new.as_sent_text,
        };
        inner.insert(user.clone());
        Ok(user)
    }

    pub fn update(&self, user_id: &str, patch: UserPatch) -> Result<User, StoreError> {
        let new_email = patch.email.as_deref().map(valid_email).transpose()?;
        let mut inner = self.write();
        if let Some(email) = &new_email
            && let Some(owner) = inner
                .slot_of_email(email)
                .and_then(|slot| inner.stored(slot))
            && owner.user_id() != user_id
        {
            return Err(StoreError::Conflict);
        }
        let slot = inner.slot_of(user_id).ok_or(StoreError::NotFound)?;
        let mut user = inner
            .stored(slot)
            .map(Stored::to_user)
            .ok_or(StoreError::NotFound)?;
        // A field set through the API is the emulator's own again, not the file's shape.
        for (key, changed) in [
            ("email", new_email.is_some()),
            ("email_verified", patch.email_verified.is_some()),
            ("name", patch.name.is_some()),
            ("nickname", patch.nickname.is_some()),
            ("picture", patch.picture.is_some()),
            ("given_name", patch.given_name.is_some()),
            ("family_name", patch.family_name.is_some()),
            ("blocked", patch.blocked.is_some()),
        ] {
            if changed {
                user.as_sent.remove(key);
                user.as_sent_text.retain(|(k, _)| k != key);
            }
        }
        if let Some(email) = new_email {
            user.email = email;
        }
        set(&mut user.email_verified, patch.email_verified);
        set(&mut user.name, patch.name);
        set(&mut user.nickname, patch.nickname);
        set(&mut user.blocked, patch.blocked);
        set(&mut user.roles, patch.roles);
        if let Some(picture) = patch.picture {
            user.picture = Some(picture);
        }
        if let Some(given) = patch.given_name {
            user.given_name = Some(given);
        }
        if let Some(family) = patch.family_name {
            user.family_name = Some(family);
        }
        merge(&mut user.app_metadata, patch.app_metadata);
        merge(&mut user.user_metadata, patch.user_metadata);
        user.updated_at = inner.next_stamp();
        inner.replace(slot, user.clone());
        Ok(user)
    }

    pub fn delete(&self, user_id: &str) -> bool {
        self.write().remove(user_id).is_some()
    }

    /// A sign-in: counts it, stamps `last_login`, and (like Auth0) bumps `updated_at`.
    pub fn record_login(&self, user_id: &str) -> Option<User> {
        let mut inner = self.write();
        let slot = inner.slot_of(user_id)?;
        let mut user = inner.stored(slot)?.to_user();
        let now = inner.next_stamp();
        user.logins_count += 1;
        user.as_sent.remove("logins_count");
        user.as_sent_text.retain(|(k, _)| k != "logins_count");
        user.last_login = Some(now);
        user.updated_at = now;
        inner.replace(slot, user.clone());
        Some(user)
    }

    /// Adds `n` demo users: the first is "Ada Admin" (admin@example.com, role `admin`), the rest
    /// have realistic names and distinct `updated_at`s spread over the past. Emails that already
    /// exist are skipped, so seeding twice does not fail.
    pub fn seed(&self, n: usize) -> usize {
        let mut rng = rand::thread_rng();
        let now = Utc::now();
        let mut added = 0;
        let mut inner = self.write();
        let Inner {
            slots,
            by_id,
            by_email,
            ..
        } = &mut *inner;
        slots.reserve(n);
        by_id.reserve(slots, n);
        by_email.reserve(slots, n);
        for i in 0..n {
            let (name, email, roles) = if i == 0 {
                (
                    "Ada Admin".to_owned(),
                    "admin@example.com".to_owned(),
                    vec!["admin".to_owned()],
                )
            } else {
                // Shifting the surname by the first name's index mixes surnames within each
                // block of 50 while every (first, last) pair stays unique for 2500 users.
                let first_index = i % FIRST_NAMES.len();
                let last = LAST_NAMES[(i / FIRST_NAMES.len() + 3 * first_index) % LAST_NAMES.len()];
                let first = FIRST_NAMES[first_index];
                let round = i / (FIRST_NAMES.len() * LAST_NAMES.len());
                let domain = DOMAINS[i % DOMAINS.len()];
                let suffix = if round == 0 {
                    String::new()
                } else {
                    round.to_string()
                };
                let email = format!(
                    "{}.{}{suffix}@{domain}",
                    first.to_lowercase(),
                    last.to_lowercase()
                );
                (format!("{first} {last}"), email, Vec::new())
            };
            if inner.contains_email(&email) {
                continue;
            }
            // One minute per user into the past; updated within that minute, so every
            // `updated_at` differs and all lie before any change made from now on.
            let created_at = now - Duration::minutes((n - i) as i64);
            let updated_at = created_at + Duration::milliseconds(rng.gen_range(0..59_999));
            let logins_count = rng.gen_range(0..40u64);
            let user = User {
                user_id: random_user_id_with(&mut rng),
                nickname: email.split('@').next().unwrap_or_default().to_owned(),
                given_name: None,
                family_name: None,
                email,
                email_verified: i % 7 != 3,
                name,
                picture: None,
                created_at,
                updated_at,
                last_login: (logins_count > 0).then_some(updated_at),
                logins_count,
                blocked: false,
                roles,
                app_metadata: Map::new(),
                user_metadata: Map::new(),
                as_sent: Map::new(),
                as_sent_text: Vec::new(),
            };
            inner.insert(user);
            added += 1;
        }
        added
    }

    /// Loads a JSON array of Auth0-shaped users (as the Management API or an export returns
    /// them). Returns how many were added.
    pub fn load_file(&self, path: &Path) -> anyhow::Result<usize> {
        let raw = std::fs::read_to_string(path)
            .with_context(|| format!("reading users file {}", path.display()))?;
        let users: Vec<Box<RawValue>> = serde_json::from_str(&raw).with_context(|| {
            format!(
                "{} must be a JSON array of users like [{{\"email\": \"a@example.com\", \"name\": \"A\"}}]",
                path.display()
            )
        })?;
        let mut added = 0;
        for (index, user) in users.into_iter().enumerate() {
            let new = imported_user_text(&user)
                .map_err(|e| anyhow::anyhow!("{}: user #{index}: {e}", path.display()))?;
            self.create(new)
                .with_context(|| format!("{}: user #{index}", path.display()))?;
            added += 1;
        }
        Ok(added)
    }

    /// Users for the login page: admins first (so the dev admin page is one click away), then
    /// the most recently active.
    pub fn login_choices(&self, limit: usize) -> Vec<User> {
        let inner = self.read();
        let mut chosen: Vec<User> = inner
            .by_updated
            .iter()
            .rev()
            .filter_map(|&(_, slot)| inner.stored(slot).map(Stored::to_user))
            .take(limit)
            .collect();
        if !chosen.iter().any(|u| u.roles.iter().any(|r| r == "admin"))
            && let Some(admin) = inner
                .slots
                .iter()
                .flatten()
                .find(|u| u.roles.iter().any(|r| &**r == "admin"))
                .map(Stored::to_user)
        {
            chosen.truncate(limit.saturating_sub(1));
            chosen.push(admin);
        }
        chosen.sort_by_key(|u| !u.roles.iter().any(|r| r == "admin"));
        chosen
    }

    /// The id of every user right now, in no particular order (benchmarks pick users from it).
    pub fn user_ids(&self) -> Vec<String> {
        let inner = self.read();
        inner
            .slots
            .iter()
            .flatten()
            .map(|user| user.user_id().to_owned())
            .collect()
    }

    /// The users matching `filter`, in `sort` order, `offset`/`limit` applied, with the total.
    pub fn search(&self, filter: &Filter, sort: Sort, offset: usize, limit: usize) -> SearchPage {
        let inner = self.read();
        let keep = |user: &&Stored| matches(filter, user);
        let window = |iter: &mut dyn Iterator<Item = &Stored>| {
            let mut total = 0;
            let mut users = Vec::new();
            for user in iter {
                if total >= offset && users.len() < limit {
                    users.push(user.to_user());
                }
                total += 1;
            }
            SearchPage { total, users }
        };

        // An exact email or id narrows to at most one user: no scan.
        let direct = match (&filter.email, &filter.user_id) {
            (Some(email), _) => Some(inner.slot_of_email(email)),
            (None, Some(id)) => Some(inner.slot_of(id)),
            (None, None) => None,
        };
        if let Some(slot) = direct {
            let mut found = slot
                .and_then(|slot| inner.stored(slot))
                .filter(keep)
                .into_iter();
            return window(&mut found);
        }

        if sort.field == SortField::UpdatedAt {
            let range = filter.updated_at.clone().unwrap_or(Range {
                lower: Bound::Unbounded,
                upper: Bound::Unbounded,
            });
            let Some(bounds) = index_bounds(&range) else {
                return SearchPage {
                    total: 0,
                    users: Vec::new(),
                };
            };
            let entries = inner.by_updated.range(bounds);
            let lookup = |&(_, slot): &(i64, u32)| inner.stored(slot);
            // Only the time range constrains: count and page on the index alone.
            let index_only = Filter {
                updated_at: None,
                ..filter.clone()
            } == Filter::default();
            if index_only {
                let total = entries.clone().count();
                let page: Box<dyn Iterator<Item = &(i64, u32)>> = if sort.descending {
                    Box::new(entries.rev().skip(offset).take(limit))
                } else {
                    Box::new(entries.skip(offset).take(limit))
                };
                let users = page.filter_map(lookup).map(Stored::to_user).collect();
                return SearchPage { total, users };
            }
            let mut users: Box<dyn Iterator<Item = &Stored>> = if sort.descending {
                Box::new(entries.rev().filter_map(lookup).filter(keep))
            } else {
                Box::new(entries.filter_map(lookup).filter(keep))
            };
            return window(&mut users);
        }

        let mut found: Vec<&Stored> = inner.slots.iter().flatten().filter(keep).collect();
        let total = found.len();
        let order = |a: &&Stored, b: &&Stored| {
            let order = match sort.field {
                SortField::CreatedAt => a.created_at.cmp(&b.created_at),
                SortField::UpdatedAt => a.updated_at.cmp(&b.updated_at),
                SortField::LastLogin => a.last_login.cmp(&b.last_login),
                SortField::LoginsCount => a.logins_count.cmp(&b.logins_count),
                SortField::Email => a.email().cmp(b.email()),
                SortField::Name => a.name().cmp(b.name()),
                SortField::UserId => std::cmp::Ordering::Equal,
            }
            .then_with(|| a.user_id().cmp(b.user_id()));
            if sort.descending {
                order.reverse()
            } else {
                order
            }
        };
        // Paging never reaches past the first 1000, so only that many need full ordering.
        let wanted = offset.saturating_add(limit);
        if wanted > 0 && wanted < found.len() {
            found.select_nth_unstable_by(wanted - 1, order);
            found.truncate(wanted);
        }
        found.sort_unstable_by(order);
        let users = found
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(Stored::to_user)
            .collect();
        SearchPage { total, users }
    }

    /// Every user right now, by slot: an export walks these in chunks without holding the
    /// lock (or a copy of every profile) for the whole file. A slot keeps its user, so a user
    /// deleted meanwhile is skipped and none is read twice.
    pub(crate) fn snapshot(&self) -> Vec<u32> {
        let inner = self.read();
        (0..inner.slots.len())
            .filter(|&slot| inner.slots[slot].is_some())
            .filter_map(|slot| u32::try_from(slot).ok())
            .collect()
    }

    /// Reads the users in `slots` under one read lock, in order; deleted users are skipped.
    pub(crate) fn read_slots(&self, slots: &[u32], mut each: impl FnMut(&UserRef<'_>)) {
        let inner = self.read();
        for user in slots.iter().filter_map(|&slot| inner.stored(slot)) {
            each(&UserRef(user));
        }
    }
}

/// A stored user, borrowed: what an export reads without copying the user.
pub(crate) struct UserRef<'a>(&'a Stored);

impl UserRef<'_> {
    pub(crate) fn user_id(&self) -> &str {
        self.0.user_id()
    }

    pub(crate) fn email(&self) -> &str {
        self.0.email()
    }

    pub(crate) fn name(&self) -> &str {
        self.0.name()
    }

    pub(crate) fn nickname(&self) -> &str {
        self.0.nickname()
    }

    pub(crate) fn email_verified(&self) -> bool {
        self.0.email_verified
    }

    pub(crate) fn blocked(&self) -> bool {
        self.0.blocked
    }

    pub(crate) fn logins_count(&self) -> u64 {
        self.0.logins_count
    }

    pub(crate) fn created_at(&self) -> DateTime<Utc> {
        from_millis(self.0.created_at)
    }

    pub(crate) fn updated_at(&self) -> DateTime<Utc> {
        from_millis(self.0.updated_at)
    }

    pub(crate) fn last_login(&self) -> Option<DateTime<Utc>> {
        self.0.last_login().map(from_millis)
    }

    pub(crate) fn roles(&self) -> impl Iterator<Item = &str> {
        self.0.roles.iter().map(|r| &**r)
    }

    /// Whether the user has attributes beyond the common ones (a picture, metadata, fields as a
    /// users file gave them): then only [`UserRef::to_user`] has them all.
    pub(crate) fn has_extra(&self) -> bool {
        self.0.extra.is_some()
    }

    pub(crate) fn to_user(&self) -> User {
        self.0.to_user()
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

fn merge(target: &mut Map<String, Value>, patch: Option<Map<String, Value>>) {
    for (key, value) in patch.into_iter().flatten() {
        if value.is_null() {
            target.remove(&key);
        } else {
            target.insert(key, value);
        }
    }
}

fn matches(filter: &Filter, user: &Stored) -> bool {
    let in_range = |range: &Option<Range>, at: Option<i64>| match (range, at) {
        (None, _) => true,
        (Some(range), Some(at)) => range.contains(from_millis(at)),
        (Some(_), None) => false,
    };
    in_range(&filter.updated_at, Some(user.updated_at))
        && in_range(&filter.created_at, Some(user.created_at))
        && in_range(&filter.last_login, user.last_login())
        && filter.email.as_deref().is_none_or(|e| e == user.email())
        && filter
            .user_id
            .as_deref()
            .is_none_or(|id| id == user.user_id())
        && filter.name.as_deref().is_none_or(|n| n == user.name())
        && filter
            .nickname
            .as_deref()
            .is_none_or(|n| n == user.nickname())
}

/// A key of the `(updated_at millis, slot)` index.
type IndexKey = (i64, u32);

/// Translates a time range into exact bounds on the `(updated_at, slot)` index, whose times
/// are whole milliseconds. Slot 0 sorts first, so `(ms, 0)` is the first key at `ms`.
fn index_bounds(range: &Range) -> Option<(Bound<IndexKey>, Bound<IndexKey>)> {
    let first_at = |ms: i64| (ms, 0);
    let floor = |t: DateTime<Utc>| millis(t);
    let ceil = |t: DateTime<Utc>| {
        let partial = !t.timestamp_subsec_nanos().is_multiple_of(1_000_000);
        millis(t).saturating_add(i64::from(partial))
    };
    let lower = match range.lower {
        Bound::Included(t) => Bound::Included(first_at(ceil(t))),
        Bound::Excluded(t) => Bound::Included(first_at(floor(t).saturating_add(1))),
        Bound::Unbounded => Bound::Unbounded,
    };
    let upper = match range.upper {
        Bound::Included(t) => Bound::Excluded(first_at(floor(t).saturating_add(1))),
        Bound::Excluded(t) => Bound::Excluded(first_at(ceil(t))),
        Bound::Unbounded => Bound::Unbounded,
    };
    // BTreeSet::range panics on an inverted range; an empty one simply matches nothing.
    if let (Bound::Included(lo), Bound::Excluded(hi)) = (&lower, &upper)
        && lo >= hi
    {
        return None;
    }
    Some((lower, upper))
}

fn valid_email(raw: &str) -> Result<String, StoreError> {
    let email = raw.trim();
    let valid = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.contains('@')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if valid {
        // Auth0 stores database-connection emails in lower case.
        Ok(email.to_lowercase())
    } else {
        Err(StoreError::Invalid(format!(
            "{raw:?} is not an email address (expected something like ada@example.com)"
        )))
    }
}

fn random_user_id() -> String {
    random_user_id_with(&mut rand::thread_rng())
}

/// `auth0|` and 24 hex digits, the shape of Auth0's database-connection ids.
fn random_user_id_with(rng: &mut impl Rng) -> String {
    let bytes: [u8; 12] = rng.r#gen();
    let mut id = String::with_capacity(30);
    id.push_str("auth0|");
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// Reads one profile of a users file, as the Management API returns it
/// (https://auth0.com/docs/api/management/v2/users/get-users): every field optional but
/// `email`. What the emulator models is read into its fields; the rest, and modelled fields in
/// another shape than the emulator's (booleans as the strings `"true"`/`"false"`, which
/// profiles from some connections carry), are kept to be served exactly as given.
fn imported_user(profile: Value) -> Result<NewUser, String> {
    let Value::Object(mut profile) = profile else {
        return Err("a user must be a JSON object".into());
    };
    let mut as_sent = Map::new();
    let mut take = |key: &str| profile.remove(key).filter(|v| !v.is_null());
    let email = match take("email") {
        Some(Value::String(email)) => email,
        _ => return Err("every user needs an \"email\" string".into()),
    };
    let user_id = match take("user_id") {
        None => None,
        Some(Value::String(id)) => Some(id),
        Some(_) => return Err("\"user_id\" must be a string".into()),
    };
    let time = |value: Option<Value>, key: &str| -> Result<Option<DateTime<Utc>>, String> {
        match value {
            None => Ok(None),
            Some(Value::String(at)) => DateTime::parse_from_rfc3339(&at)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(|e| format!("\"{key}\" is not an ISO 8601 date ({e})")),
            Some(_) => Err(format!("\"{key}\" must be an ISO 8601 date string")),
        }
    };
    let created_at = time(take("created_at"), "created_at")?;
    let updated_at = time(take("updated_at"), "updated_at")?;
    let last_login = time(take("last_login"), "last_login")?;
    let mut app_metadata = match take("app_metadata") {
        Some(Value::Object(map)) => map,
        None => Map::new(),
        Some(_) => return Err("\"app_metadata\" must be an object".into()),
    };
    let user_metadata = match take("user_metadata") {
        Some(Value::Object(map)) => map,
        None => Map::new(),
        Some(_) => return Err("\"user_metadata\" must be an object".into()),
    };
    let roles = match app_metadata.remove("roles") {
        Some(Value::Array(roles)) => roles
            .into_iter()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let mut text = |key: &str| match take(key) {
        Some(Value::String(text)) => Some(text),
        Some(other) => {
            as_sent.insert(key.to_owned(), other);
            None
        }
        None => None,
    };
    let (name, nickname, picture) = (text("name"), text("nickname"), text("picture"));
    let (given_name, family_name) = (text("given_name"), text("family_name"));
    let mut flag = |key: &str| match take(key) {
        Some(Value::Bool(b)) => b,
        Some(other) => {
            let meaning = other.as_str().and_then(|s| s.parse().ok()).unwrap_or(false);
            as_sent.insert(key.to_owned(), other);
            meaning
        }
        None => false,
    };
    let (email_verified, blocked) = (flag("email_verified"), flag("blocked"));
    let logins_count = match take("logins_count") {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(other) => {
            let count = other.as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
            as_sent.insert("logins_count".into(), other);
            count
        }
        None => 0,
    };
    // What the emulator does not model (`identities`, `username`, ...) is served as given.
    as_sent.extend(profile);
    Ok(NewUser {
        email,
        user_id,
        name,
        nickname,
        picture,
        given_name,
        family_name,
        email_verified,
        blocked,
        roles,
        app_metadata,
        user_metadata,
        created_at,
        updated_at,
        last_login,
        logins_count,
        as_sent,
        as_sent_text: Vec::new(),
    })
}

/// Reads one profile of a users file from its JSON text. Fields whose value serde_json cannot
/// hold (see [`User::as_sent_text`]) are kept as text; the rest is read by [`imported_user`].
fn imported_user_text(text: &RawValue) -> Result<NewUser, String> {
    if let Ok(value) = serde_json::from_str::<Value>(text.get()) {
        return imported_user(value);
    }
    let fields: Vec<(String, Box<RawValue>)> =
        serde_json::from_str::<std::collections::BTreeMap<String, Box<RawValue>>>(text.get())
            .map_err(|e| format!("a user must be a JSON object ({e})"))?
            .into_iter()
            .collect();
    let mut readable = Map::new();
    let mut as_text = Vec::new();
    for (key, value) in fields {
        match serde_json::from_str::<Value>(value.get()) {
            Ok(value) => {
                readable.insert(key, value);
            }
            Err(_) => as_text.push((key, value.get().to_owned())),
        }
    }
    let mut user = imported_user(Value::Object(readable))?;
    user.as_sent_text = as_text;
    Ok(user)
}

const FIRST_NAMES: &[&str] = &[
    "Grace",
    "Alan",
    "Katherine",
    "Linus",
    "Margaret",
    "Dennis",
    "Barbara",
    "Ken",
    "Frances",
    "Edsger",
    "Radia",
    "Donald",
    "Hedy",
    "John",
    "Joan",
    "Tim",
    "Sophie",
    "Guido",
    "Lynn",
    "Bjarne",
    "Anita",
    "Niklaus",
    "Shafi",
    "Leslie",
    "Adele",
    "Yukihiro",
    "Karen",
    "Brian",
    "Jean",
    "Rob",
    "Mary",
    "James",
    "Evelyn",
    "Vint",
    "Carol",
    "Bob",
    "Elena",
    "Ravi",
    "Amara",
    "Kenji",
    "Ingrid",
    "Mateo",
    "Priya",
    "Olu",
    "Freya",
    "Diego",
    "Mei",
    "Tariq",
    "Zofia",
    "Noah",
];

const LAST_NAMES: &[&str] = &[
    "Hopper",
    "Turing",
    "Johnson",
    "Torvalds",
    "Hamilton",
    "Ritchie",
    "Liskov",
    "Thompson",
    "Allen",
    "Dijkstra",
    "Perlman",
    "Knuth",
    "Lamarr",
    "Backus",
    "Clarke",
    "Berners-Lee",
    "Wilson",
    "Rossum",
    "Conway",
    "Stroustrup",
    "Borg",
    "Wirth",
    "Goldwasser",
    "Lamport",
    "Goldberg",
    "Matsumoto",
    "Jones",
    "Kernighan",
    "Sammet",
    "Pike",
    "Keller",
    "Gosling",
    "Boyd",
    "Cerf",
    "Shaw",
    "Kahn",
    "Petrova",
    "Shankar",
    "Okafor",
    "Tanaka",
    "Lindqvist",
    "Garcia",
    "Iyer",
    "Adeyemi",
    "Nielsen",
    "Rojas",
    "Chen",
    "Haddad",
    "Nowak",
    "Fischer",
];

const DOMAINS: &[&str] = &["example.com", "example.org", "example.net"];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::search::parse_query;

    #[test]
    fn seeding_makes_an_admin_and_distinct_users() {
        let store = UserStore::new();
        assert_eq!(store.seed(3000), 3000);
        let admin = store.find_by_email("ADMIN@example.com").unwrap();
        assert_eq!(admin.name, "Ada Admin");
        assert_eq!(admin.roles, vec!["admin"]);
        let page = store.search(
            &Filter::default(),
            Sort::parse("updated_at:1").unwrap(),
            0,
            5000,
        );
        assert_eq!(page.total, 3000);
        let stamps: BTreeSet<_> = page.users.iter().map(|u| u.updated_at).collect();
        assert_eq!(stamps.len(), 3000);
        assert!(
            page.users
                .windows(2)
                .all(|w| w[0].updated_at < w[1].updated_at)
        );
        assert_eq!(store.login_choices(5)[0].email, "admin@example.com");
    }

    #[test]
    fn a_hundred_thousand_users_seed_and_page_through_the_index() {
        let store = UserStore::new();
        let started = std::time::Instant::now();
        assert_eq!(store.seed(100_000), 100_000);
        let seeded_in = started.elapsed();
        let newest = store.search(
            &Filter::default(),
            Sort::parse("updated_at:-1").unwrap(),
            0,
            100,
        );
        assert_eq!(newest.total, 100_000);
        assert_eq!(newest.users.len(), 100);
        let since = parse_query(&format!(
            "updated_at:[{} TO *]",
            timestamp(newest.users[99].updated_at)
        ))
        .unwrap();
        let page = store.search(&since, Sort::parse("updated_at:1").unwrap(), 0, 100);
        assert_eq!(page.total, 100);
        assert_eq!(page.users[0].user_id, newest.users[99].user_id);
        // Generous: the point is seconds, not minutes, even unoptimised on a busy machine.
        assert!(
            seeded_in < std::time::Duration::from_secs(20),
            "{seeded_in:?}"
        );
    }

    #[test]
    fn every_change_moves_updated_at_forward() {
        let store = UserStore::new();
        let user = store.create(NewUser::with_email("a@example.com")).unwrap();
        let renamed = store
            .update(
                &user.user_id,
                UserPatch {
                    name: Some("A".into()),
                    ..UserPatch::default()
                },
            )
            .unwrap();
        assert!(renamed.updated_at > user.updated_at);
        let after = parse_query(&format!(
            "updated_at:{{{} TO *]",
            timestamp(user.updated_at)
        ))
        .unwrap();
        let page = store.search(&after, Sort::parse("updated_at:1").unwrap(), 0, 10);
        assert_eq!(page.total, 1);
        assert_eq!(page.users[0].name, "A");
        assert_eq!(
            store.create(NewUser::with_email("A@example.com")),
            Err(StoreError::Conflict)
        );
        assert!(matches!(
            store.create(NewUser::with_email("nope")),
            Err(StoreError::Invalid(_))
        ));
    }

    #[test]
    fn partial_ordering_pages_match_a_full_sort() {
        let store = UserStore::new();
        store.seed(300);
        let all = store.search(&Filter::default(), Sort::DEFAULT, 0, 1000);
        assert_eq!(all.total, 300);
        assert!(
            all.users
                .windows(2)
                .all(|w| w[0].created_at <= w[1].created_at)
        );
        let page = store.search(&Filter::default(), Sort::DEFAULT, 100, 50);
        assert_eq!(page.total, 300);
        assert_eq!(page.users, all.users[100..150].to_vec());
        let by_email = store.search(&Filter::default(), Sort::parse("email:-1").unwrap(), 10, 5);
        let mut emails: Vec<_> = all.users.iter().map(|u| u.email.clone()).collect();
        emails.sort();
        emails.reverse();
        let got: Vec<_> = by_email.users.iter().map(|u| u.email.clone()).collect();
        assert_eq!(got, emails[10..15].to_vec());
    }

    #[test]
    fn sub_millisecond_bounds_are_exact() {
        let store = UserStore::new();
        store.seed(5);
        let sorted = store.search(
            &Filter::default(),
            Sort::parse("updated_at:1").unwrap(),
            0,
            10,
        );
        let pivot = sorted.users[2].updated_at;
        let half = pivot + Duration::microseconds(500);
        let count = |q: String| {
            store
                .search(
                    &parse_query(&q).unwrap(),
                    Sort::parse("updated_at:1").unwrap(),
                    0,
                    10,
                )
                .total
        };
        let at = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
        assert_eq!(count(format!("updated_at:[{} TO *]", at(pivot))), 3);
        assert_eq!(count(format!("updated_at:{{{} TO *]", at(pivot))), 2);
        assert_eq!(count(format!("updated_at:[{} TO *]", at(half))), 2);
        assert_eq!(count(format!("updated_at:[* TO {}]", at(half))), 3);
        assert_eq!(count(format!("updated_at:[* TO {}}}", at(pivot))), 2);
        // The same range with another condition takes the filtering path and agrees.
        let name = &sorted.users[3].name;
        assert_eq!(
            count(format!(
                "updated_at:{{{} TO *] AND name:\"{name}\"",
                at(pivot)
            )),
            1
        );
    }

    #[test]
    fn text_fields_are_spliced_in_verbatim() {
        let fields = vec![
            ("name".to_owned(), r#""half \ud83d""#.to_owned()),
            ("bad".to_owned(), "not json".to_owned()),
            ("dropped".to_owned(), "1".to_owned()),
        ];
        let keep = |key: &str| key != "dropped";
        let spliced = with_text_fields(json!({"name": "typed", "a": 1}), &fields, keep);
        assert_eq!(spliced.get(), r#"{"a":1,"name":"half \ud83d"}"#);
        assert_eq!(
            with_text_fields(json!({}), &fields, keep).get(),
            r#"{"name":"half \ud83d"}"#
        );
    }

    #[test]
    fn a_users_file_keeps_auth0_shapes() {
        let store = UserStore::new();
        let dir = std::env::temp_dir().join(format!("qb-users-{}", random_user_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users.json");
        std::fs::write(
            &path,
            r#"[{"email":"a@example.com","user_id":"auth0|a","email_verified":"true",
                 "identities":[{"provider":"samlp"}],"name":"x\udc00"}]"#,
        )
        .unwrap();
        assert_eq!(store.load_file(&path).unwrap(), 1);
        let _ = std::fs::remove_dir_all(dir);
        let user = store.get("auth0|a").unwrap();
        assert!(user.email_verified, "the string means true to the emulator");
        let served = user.to_json_text(user.to_json(), |_| true);
        assert!(
            served.get().contains(r#""email_verified":"true""#),
            "{}",
            served.get()
        );
        assert!(served.get().contains(r#""provider":"samlp""#));
        assert!(served.get().contains(r#""name":"x\udc00""#));
        let patched = store
            .update(
                "auth0|a",
                UserPatch {
                    email_verified: Some(false),
                    name: Some("Ann".into()),
                    ..UserPatch::default()
                },
            )
            .unwrap();
        let served = patched.to_json_text(patched.to_json(), |_| true);
        assert!(
            served.get().contains(r#""email_verified":false"#),
            "{}",
            served.get()
        );
        assert!(served.get().contains(r#""name":"Ann""#), "{}", served.get());
    }

    #[test]
    fn inverted_ranges_match_nothing() {
        let store = UserStore::new();
        store.seed(10);
        let q = parse_query("updated_at:[2030-01-01 TO 2020-01-01]").unwrap();
        let page = store.search(&q, Sort::parse("updated_at:-1").unwrap(), 0, 10);
        assert_eq!(page.total, 0);
    }
}
