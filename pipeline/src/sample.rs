//! Samples: the unit of data between stages (defined in `corpus`, which reads and writes them).

pub use corpus::sample::{Content, Lineage, Message, MixClass, Sample, SourceRef};
