//! tokengate: a per-user token metering sidecar between LibreChat and LiteLLM.
//!
//! Where to find things:
//! - [`proxy`]: the `/v1` hot path (auth, identity, estimate, reserve, forward, settle).
//! - [`ledger`]: balances, holds, the append-only ledger and usage records.
//! - [`admin`]: the admin dashboard (maud pages, sessions, CSRF).
//! - [`me`]: the user's own page (balance, use; one-time links, user sessions).
//! - [`alerts`]: threshold alerts, their outbox and the mail worker; [`mail`]: SMTP
//!   and message templates; [`i18n`]: pt-BR and English number and date formats.
//! - [`db`]: connections, pools and migrations for SQLite and PostgreSQL.
//! - [`domain`]: value types parsed at the edge (identities, weights, cycles).
//! - [`config`]: environment configuration; [`cli`]: the command line.
//! - [`startup`]: wiring the HTTP server and background tasks; [`limits`]: what one
//!   request and one client may hold open; [`net`]: who a request comes from.

pub mod admin;
pub mod alerts;
pub mod assets;
pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod i18n;
pub mod ledger;
pub mod limits;
pub mod mail;
pub mod me;
pub mod net;
pub mod ops;
pub mod proxy;
pub mod startup;
pub mod telemetry;
