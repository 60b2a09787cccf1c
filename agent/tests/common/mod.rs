//! Helpers shared by the agent's integration tests.

#![allow(dead_code)]

pub mod bundle;
pub mod hub;
