//! The service: Spark's `ExternalBlockHandler` and `ExternalShuffleService`.
