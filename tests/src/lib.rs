//! Shared kernel lab and end-to-end test helpers.
