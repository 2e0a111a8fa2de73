//! Crash-safe metadata of pods, containers and images: an embedded transactional database (redb),
//! one JSON record per object, each write one transaction. The daemon rebuilds its in-memory
//! view from here at start.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

const SANDBOXES: TableDefinition<&str, &[u8]> = TableDefinition::new("sandboxes");
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("open store {path}: {source}")]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("store transaction: {0}")]
    Db(String),
    #[error("store record {id}: {source}")]
    Codec {
        id: String,
        source: serde_json::Error,
    },
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// Which table a record lives in.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Sandbox,
    Container,
    Image,
}

impl Kind {
    fn table(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Kind::Sandbox => SANDBOXES,
            Kind::Container => CONTAINERS,
            Kind::Image => IMAGES,
        }
    }
}

/// The metadata database.
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(SANDBOXES).map_err(db_err)?;
        txn.open_table(CONTAINERS).map_err(db_err)?;
        txn.open_table(IMAGES).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Self { db })
    }

    /// Inserts or replaces a record, durably.
    pub fn put<T: Serialize>(&self, kind: Kind, id: &str, record: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(|source| StoreError::Codec {
            id: id.to_owned(),
            source,
        })?;
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.open_table(kind.table())
            .map_err(db_err)?
            .insert(id, bytes.as_slice())
            .map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    /// Inserts or replaces several records of one kind in one durable transaction.
    pub fn put_many<T: Serialize>(
        &self,
        kind: Kind,
        records: &[(&str, &T)],
    ) -> Result<(), StoreError> {
        self.apply(kind, records, &[])
    }

    /// Inserts or replaces `puts` and deletes `deletes`, records of one kind, in one durable
    /// transaction.
    pub fn apply<T: Serialize>(
        &self,
        kind: Kind,
        puts: &[(&str, &T)],
        deletes: &[&str],
    ) -> Result<(), StoreError> {
        if puts.is_empty() && deletes.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(kind.table()).map_err(db_err)?;
            for (id, record) in puts {
                let bytes = serde_json::to_vec(record).map_err(|source| StoreError::Codec {
                    id: (*id).to_owned(),
                    source,
                })?;
                table.insert(*id, bytes.as_slice()).map_err(db_err)?;
            }
            for id in deletes {
                table.remove(*id).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    /// Deletes records (of any kind) in one transaction; missing ids are fine.
    pub fn delete(&self, ids: &[(Kind, &str)]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        for (kind, id) in ids {
            txn.open_table(kind.table())
                .map_err(db_err)?
                .remove(*id)
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Every record of a kind.
    pub fn all<T: DeserializeOwned>(&self, kind: Kind) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(kind.table()).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            let record =
                serde_json::from_slice(value.value()).map_err(|source| StoreError::Codec {
                    id: key.value().to_owned(),
                    source,
                })?;
            out.push(record);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rec {
        id: String,
        n: u32,
    }

    #[test]
    fn records_survive_reopen_and_delete_in_one_txn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let s = Store::open(&path).unwrap();
            s.put(
                Kind::Sandbox,
                "p",
                &Rec {
                    id: "p".into(),
                    n: 1,
                },
            )
            .unwrap();
            s.put(
                Kind::Container,
                "c",
                &Rec {
                    id: "c".into(),
                    n: 2,
                },
            )
            .unwrap();
            s.put(
                Kind::Sandbox,
                "p",
                &Rec {
                    id: "p".into(),
                    n: 3,
                },
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(
            s.all::<Rec>(Kind::Sandbox).unwrap(),
            vec![Rec {
                id: "p".into(),
                n: 3
            }]
        );
        s.delete(&[
            (Kind::Sandbox, "p"),
            (Kind::Container, "c"),
            (Kind::Container, "zz"),
        ])
        .unwrap();
        assert!(s.all::<Rec>(Kind::Container).unwrap().is_empty());
        assert!(s.all::<Rec>(Kind::Sandbox).unwrap().is_empty());
    }

    #[test]
    fn put_many_writes_all_in_one_go() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        let a = Rec {
            id: "a".into(),
            n: 1,
        };
        let b = Rec {
            id: "b".into(),
            n: 2,
        };
        s.put_many(Kind::Container, &[("a", &a), ("b", &b)])
            .unwrap();
        s.put_many::<Rec>(Kind::Container, &[]).unwrap();
        assert_eq!(s.all::<Rec>(Kind::Container).unwrap(), vec![a, b]);
    }
}
