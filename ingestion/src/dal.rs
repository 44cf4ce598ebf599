//! Opening the data access layer from a config: what readers of the history (`overseer
//! view`, the checks) share with ingestion. The DAL reads the same store and catalog
//! ingestion writes, folds protobuf updates with the descriptors of the same
//! `[sources.protobuf]` tables, and knows the built-in views plus those of `[dal]
//! view_descriptor_sets`.

use overseer_dal::Dal;
use overseer_dal::view::Views;

use crate::config::{Config, DalSettings};
use crate::{Error, Result};

/// The DAL over `cfg`'s store and catalog, with its builders, views and read cache, to
/// read: the catalog opened beside any process that writes it
/// ([`overseer_dal::config::open_catalog_reader`]). Configuration problems (a descriptor
/// set that cannot be read or holds an ill-defined view) are reported before any backend
/// is opened.
pub async fn open_dal(cfg: &Config) -> Result<Dal> {
    open(cfg, false).await
}

/// [`open_dal`] with the catalog opened to be written too (for the embedded catalog: as
/// its one writer, so it fails while another process writes it).
pub async fn open_dal_writing(cfg: &Config) -> Result<Dal> {
    open(cfg, true).await
}

async fn open(cfg: &Config, write: bool) -> Result<Dal> {
    let views = views(&cfg.dal)?;
    let builders = crate::format::builders(cfg)?;
    let store = overseer_dal::config::open_store(&cfg.store).await?;
    let catalog = if write {
        overseer_dal::config::open_catalog(&cfg.catalog).await?
    } else {
        overseer_dal::config::open_catalog_reader(&cfg.catalog).await?
    };
    Ok(Dal::new(catalog, store)
        .with_builders(builders)
        .with_views(views)
        .with_cache_bytes(cfg.dal.cache_bytes())
        .with_state_bytes(cfg.dal.state_bytes())
        .with_snapshot_every(cfg.dal.snapshot_every))
}

/// The DAL over already opened storage (one process running ingestion and checks shares
/// one catalog: the embedded one cannot be opened twice).
pub fn dal_over(cfg: &Config, storage: &crate::pipeline::Storage) -> Result<Dal> {
    Ok(Dal::new(storage.catalog.clone(), storage.store.clone())
        .with_builders(crate::format::builders(cfg)?)
        .with_views(views(&cfg.dal)?)
        .with_cache_bytes(cfg.dal.cache_bytes())
        .with_state_bytes(cfg.dal.state_bytes())
        .with_snapshot_every(cfg.dal.snapshot_every))
}

/// The built-in views plus those of every `[dal] view_descriptor_sets` file; an error names
/// the file.
pub fn views(settings: &DalSettings) -> Result<Views> {
    let mut views = Views::builtin();
    for path in &settings.view_descriptor_sets {
        let at = |m: String| {
            Error::Config(format!(
                "[dal] view_descriptor_sets {}: {m}",
                path.display()
            ))
        };
        let bytes = std::fs::read(path).map_err(|e| at(format!("cannot read it: {e}")))?;
        views = views
            .with_descriptor_set(&bytes, &path.display().to_string())
            .map_err(|e| match e {
                // Already says which file; keep only what is wrong with it.
                overseer_dal::Error::Invalid { message, .. } => at(message),
                other => at(other.to_string()),
            })?;
    }
    Ok(views)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    /// Compiles `text` (a .proto that may import `overseer/views.proto`) into an encoded
    /// descriptor set in `dir`. Encoded by protox itself, which keeps the custom options.
    fn descriptor_set(dir: &Path, name: &str, text: &str) -> PathBuf {
        let out = dir.join(format!("{name}.binpb"));
        std::fs::write(&out, overseer_testkit::proto::compile(text)).unwrap();
        out
    }

    #[test]
    fn user_views_are_added_to_the_builtin_ones() {
        let dir = tempfile::tempdir().unwrap();
        let ds = descriptor_set(
            dir.path(),
            "shop",
            r#"syntax = "proto3";
package shop.v1;
import "overseer/views.proto";
message Order {
  option (overseer.views.v1.model) = "shop.orders";
  string id = 1 [(overseer.views.v1.from) = "$id"];
  string customer = 2;
}
message OrderWithToys {
  Order order = 1 [(overseer.views.v1.subject) = true];
  repeated overseer.views.v1.Toy toys = 2 [(overseer.views.v1.join_ref) = "order_id"];
}
"#,
        );
        let v = views(&DalSettings {
            view_descriptor_sets: vec![ds],
            ..DalSettings::default()
        })
        .unwrap();
        assert_eq!(
            v.record_view("shop.orders").unwrap().name(),
            "shop.v1.Order"
        );
        assert_eq!(
            v.get("OrderWithToys").unwrap().models(),
            ["shop.orders", "toys"]
        );
        assert!(v.get("overseer.views.v1.TransferWithLedger").is_ok());
        // none configured: the built-in views alone
        let builtin = views(&DalSettings::default()).unwrap();
        assert_eq!(builtin.names(), Views::builtin().names());
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.binpb");
        let junk = dir.path().join("junk.binpb");
        std::fs::write(&junk, b"\xff\xff not a descriptor set").unwrap();
        let bad_view = descriptor_set(
            dir.path(),
            "bad",
            r#"syntax = "proto3";
package bad.v1;
import "overseer/views.proto";
message Orphan {
  repeated overseer.views.v1.Toy toys = 1 [(overseer.views.v1.join_ref) = "x"];
}
"#,
        );
        for (path, why) in [
            (&missing, "cannot read it"),
            (&junk, "not a usable FileDescriptorSet"),
            (&bad_view, "need a (subject) field"),
        ] {
            let e = views(&DalSettings {
                view_descriptor_sets: vec![path.clone()],
                ..DalSettings::default()
            })
            .unwrap_err()
            .to_string();
            let at = format!("[dal] view_descriptor_sets {}: ", path.display());
            assert!(e.contains(&at) && e.contains(why), "{e}");
            assert_eq!(e.matches(&path.display().to_string()).count(), 1, "{e}");
        }
    }
}
