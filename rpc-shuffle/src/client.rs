//! The client: Spark's `ExternalBlockStoreClient`.
