//! Harness for hablock end-to-end tests.
