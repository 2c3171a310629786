//! Test support: the deterministic network simulation harness.
