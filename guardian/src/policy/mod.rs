//! Decisions as pure functions of recorded facts: no files, no kernel.

pub mod enforce;
pub mod growth;
pub mod health;
pub mod incidents;
pub mod killers;
pub mod leftovers;
pub mod postmortem;
pub mod profile;
pub mod reload;
pub mod sampling;
pub mod stack;
pub mod staging;
pub mod trust;
