//! Views: records serialised into protobuf messages, driven by their descriptors.
//!
//! - [`registry`]: which messages are views, of which models, joined how (read from the
//!   options of `views.proto`).
//! - [`map`]: a record's state into a view message, field by field, by descriptor.
//!
//! The DAL ([`crate::reader::Dal`]) builds views as of a time.

pub mod map;
pub mod registry;

pub use registry::{ViewDef, ViewKind, Views};
