//! [`BlockingS3`]: the same operations for callers on plain threads (the engine's and the
//! service's worker threads), driven on a runtime the caller lends by its
//! [`tokio::runtime::Handle`].
//!
//! This crate never builds a runtime (only the `rackvault` binary does, see ARCHITECTURE.md):
//! the binary passes its runtime's handle down, as it does for the web server. A call blocks
//! the calling thread until the operation ends. Calling from inside the runtime (an async
//! task) would block one of its workers, so tokio panics there: use [`S3Client`] from async
//! code instead.

use std::ops::Range;

use bytes::Bytes;
use tokio::runtime::Handle;

use crate::client::{ListPage, ObjectInfo, PutOutcome, Retention, S3Client};
use crate::error::S3Error;

/// [`S3Client`] with blocking methods.
#[derive(Debug, Clone)]
pub struct BlockingS3 {
    client: S3Client,
    handle: Handle,
}

impl BlockingS3 {
    pub fn new(client: S3Client, handle: Handle) -> Self {
        BlockingS3 { client, handle }
    }

    /// The async client underneath.
    pub fn client(&self) -> &S3Client {
        &self.client
    }

    pub fn upload(&self, key: &str, data: Bytes) -> Result<PutOutcome, S3Error> {
        self.handle.block_on(self.client.upload(key, data))
    }

    pub fn put(&self, key: &str, data: Bytes) -> Result<PutOutcome, S3Error> {
        self.handle.block_on(self.client.put(key, data))
    }

    pub fn put_multipart(&self, key: &str, data: Bytes, part_size: usize) -> Result<PutOutcome, S3Error> {
        self.handle.block_on(self.client.put_multipart(key, data, part_size))
    }

    pub fn put_with_retention(&self, key: &str, data: Bytes, retention: Retention) -> Result<PutOutcome, S3Error> {
        self.handle.block_on(self.client.put_with_retention(key, data, retention))
    }

    pub fn get(&self, key: &str) -> Result<Bytes, S3Error> {
        self.handle.block_on(self.client.get(key))
    }

    pub fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, S3Error> {
        self.handle.block_on(self.client.get_range(key, range))
    }

    pub fn head(&self, key: &str) -> Result<ObjectInfo, S3Error> {
        self.handle.block_on(self.client.head(key))
    }

    pub fn list_page(&self, prefix: &str, page_token: Option<String>, max_keys: usize) -> Result<ListPage, S3Error> {
        self.handle.block_on(self.client.list_page(prefix, page_token, max_keys))
    }

    pub fn list_all(&self, prefix: &str) -> Result<Vec<ObjectInfo>, S3Error> {
        self.handle.block_on(self.client.list_all(prefix))
    }

    pub fn delete(&self, key: &str) -> Result<(), S3Error> {
        self.handle.block_on(self.client.delete(key))
    }

    pub fn delete_version(&self, key: &str, version: &str) -> Result<(), S3Error> {
        self.handle.block_on(self.client.delete_version(key, version))
    }

    pub fn retention(&self, key: &str, version: Option<&str>) -> Result<Option<Retention>, S3Error> {
        self.handle.block_on(self.client.retention(key, version))
    }

    pub fn set_retention(&self, key: &str, version: Option<&str>, retention: Retention) -> Result<(), S3Error> {
        self.handle.block_on(self.client.set_retention(key, version, retention))
    }

    pub fn create_bucket(&self, object_lock: bool) -> Result<(), S3Error> {
        self.handle.block_on(self.client.create_bucket(object_lock))
    }
}
