#![no_std]
// The library target only exists so that guardian can name this crate as a build dependency;
// the programs are in the `guardian` binary target (src/main.rs).
