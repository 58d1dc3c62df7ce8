//! Backend tests: being implemented.
