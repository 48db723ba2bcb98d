//! Integration tests: the real application against a fake provider, on the backend
//! chosen by TOKENGATE_TEST_BACKEND (scripts/test.sh runs both).
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod admin;
mod alerts;
mod browser;
pub mod cli;
mod concurrency;
mod credits;
mod deploy;
mod disk;
mod distributors;
mod durability;
mod fake_provider;
mod helpers;
mod hostile;
mod instances;
mod isolation;
mod limits;
pub mod me;
mod metering;
mod notice;
pub mod outage;
mod overage;
mod plans;
mod real_clients;
mod replicas;
mod reports;
mod responses;
mod sides;
mod slow;
mod smtp;
mod surface;
mod title;
mod unreservable;
mod upgrades;
mod worst_case;
