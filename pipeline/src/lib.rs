//! Recipes, the stage graph, the sample store and incremental builds.
pub mod recipe;
pub mod yaml;
