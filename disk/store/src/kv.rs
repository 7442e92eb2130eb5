//! A small LMDB environment of named byte-keyed databases, for catalogs that live beside
//! the store (the tape tier's media and location catalog). Same durability as the store's
//! own index: one writer at a time across processes, every commit `fsync`ed before it
//! returns. Keys and values are the caller's encodings.

use std::path::{Path, PathBuf};

use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions, RoTxn, RwTxn, WithoutTls};

use crate::error::{Result, StoreError};

pub use heed;

/// A database of the environment.
pub type KvDb = Database<'static, Bytes, Bytes>;

/// An open environment.
#[derive(Debug)]
pub struct KvEnv {
    env: Env<WithoutTls>,
    path: PathBuf,
}

/// Virtual size of the map; the file grows only as data is written.
const MAP_SIZE: usize = 1 << 38;

impl KvEnv {
    /// Opens (creating) the environment in `dir` with the named databases, returned in the
    /// order of `names`.
    pub fn open(dir: &Path, names: &[&str]) -> Result<(KvEnv, Vec<KvDb>)> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let mut opts = EnvOpenOptions::new().read_txn_without_tls();
        opts.map_size(MAP_SIZE).max_dbs(16).max_readers(126);
        // SAFETY: heed requires that an environment is not opened twice in one process and
        // that its files are changed only by LMDB. The owner of a `KvEnv` (one per catalog
        // directory) keeps it for the process's life; nothing else writes that directory.
        let env = unsafe { opts.open(dir) }.map_err(|e| StoreError::index(dir, e))?;
        let mut dbs = Vec::with_capacity(names.len());
        for name in names {
            let wtxn = env.write_txn().map_err(|e| StoreError::index(dir, e))?;
            let db = env
                .create_databases_and_commit(wtxn, |dbo, wtxn| -> heed::Result<_> {
                    let db: Database<Bytes, Bytes> = dbo.create_database(wtxn, Some(name))?;
                    Ok(heed::CommitOrAbort::<_, ()>::Commit(db))
                })
                .map_err(|e| StoreError::index(dir, e))?
                .unwrap_commit();
            dbs.push(db);
        }
        Ok((KvEnv { env, path: dir.to_path_buf() }, dbs))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn err(&self, e: heed::Error) -> StoreError {
        StoreError::index(&self.path, e)
    }

    pub fn read(&self) -> Result<RoTxn<'_, WithoutTls>> {
        self.env.read_txn().map_err(|e| self.err(e))
    }

    pub fn write(&self) -> Result<RwTxn<'_>> {
        self.env.write_txn().map_err(|e| self.err(e))
    }
}
