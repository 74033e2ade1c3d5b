//! End-to-end tests of the `phiforge` CLI: one test binary, a module per area.

mod util;

mod audit;
mod bad_input;
mod build;
mod build_units;
mod curate;
mod decontaminate;
mod flows;
mod generate;
mod mix;
mod neardup;
mod planted;
mod slurm;
mod tokenize;
mod train;
