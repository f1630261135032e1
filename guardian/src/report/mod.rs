//! What guardian writes for people and tools: profile files and compose overrides.

pub mod episode;
pub mod incident;
pub mod profile;
pub mod table;
