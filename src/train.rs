//! `phiforge train RECIPE`: trains a Phi-3-architecture model on the recipe's mix with the
//! recipe's `train:` section (see docs/training.md).

use anyhow::{bail, Context, Result};
use clap::Args;
use pipeline::build::output_dir;
use pipeline::recipe::Recipe;
use std::path::PathBuf;
use trainer::TrainConfig;

#[derive(Args)]
pub struct TrainArgs {
    /// The recipe (its `train:` section holds the settings).
    pub recipe: PathBuf,
    /// The mix manifest (default: `<output.path>/mix/manifest.json`).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Continue the latest checkpoint in the output folder.
    #[arg(long)]
    pub resume: bool,
    /// The output folder (default: `train.output`, else `<output.path>/train`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn train(a: TrainArgs) -> Result<()> {
    let r = Recipe::load(&a.recipe)?;
    let Some(cfg) = r.train.clone() else {
        bail!(
            "{}: the recipe has no `train:` section (see docs/training.md)",
            a.recipe.display()
        )
    };
    let manifest = a.manifest.unwrap_or_else(|| manifest_path(&r));
    let out = a.out.unwrap_or_else(|| out_dir(&r, &cfg));
    prepare(&cfg);
    let mut t = trainer::Trainer::from_manifest(&cfg, &manifest, &out, a.resume)
        .with_context(|| format!("training from {}", manifest.display()))?;
    let bar = trainer::run::Bar::new();
    let s = t.run(&bar)?;
    print_summary(&s);
    Ok(())
}

fn print_summary(s: &trainer::run::Summary) {
    println!(
        "{} steps, {} tokens, loss {:.4}{}, {:.0} tokens/s; model in {}",
        s.steps,
        s.tokens,
        s.last_loss,
        s.last_eval_loss
            .map(|e| format!(", held-out {e:.4}"))
            .unwrap_or_default(),
        s.tokens_per_s,
        s.model_dir.display()
    );
}

/// The manifest of the recipe's mix: `<output.path>/mix/manifest.json`.
fn manifest_path(r: &Recipe) -> PathBuf {
    output_dir(r)
        .join(pipeline::mix::DIR)
        .join(mixes::manifest::FILE_NAME)
}

/// The run's folder: `train.output`, else `<output.path>/train`.
fn out_dir(r: &Recipe, cfg: &TrainConfig) -> PathBuf {
    match &cfg.output {
        Some(o) => r.resolve(o),
        None => output_dir(r).join("train"),
    }
}

/// Settings of this process for training: the allocator and the thread count.
fn prepare(cfg: &TrainConfig) {
    // Freed memory stays with the allocator: candle allocates every operation's output anew, and
    // each big buffer given back to the system is page-faulted in and zeroed by the kernel again
    // (a third of a step at Phi-4's vocabulary). `mi_option_purge_delay` is 15 in mimalloc 3's
    // `mi_option_e` (the Rust bindings lack the name).
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets an allocator option; no memory is involved.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    if let Some(n) = cfg.threads {
        // candle's matrix products read their thread count from RAYON_NUM_THREADS; set before
        // any pool exists.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// The last step of `phiforge build` for a recipe with `train:` and `mix:` sections: trains on the
/// mix just written, unless the run there is already this one (see `trainer::incremental`).
pub fn after_build(r: &Recipe) -> Result<()> {
    let Some(cfg) = r.train.clone() else {
        return Ok(());
    };
    if r.mix.is_none() {
        println!(
            "train: skipped: the recipe has no `mix:` section to train on \
             (`phiforge train RECIPE --manifest DIR` trains on another mix)"
        );
        return Ok(());
    }
    prepare(&cfg);
    let manifest = manifest_path(r);
    let out = out_dir(r, &cfg);
    let bar = trainer::run::Bar::new();
    let outcome = trainer::incremental::train(&cfg, &manifest, &out, &bar)
        .with_context(|| format!("training on {}", manifest.display()))?;
    match outcome {
        trainer::incremental::Outcome::UpToDate(model) => {
            println!("train (up to date): model in {}", model.display())
        }
        trainer::incremental::Outcome::Trained {
            summary,
            resumed_at,
        } => {
            print!("train: ");
            if let Some(step) = resumed_at {
                print!("continued from step {step}; ");
            }
            print_summary(&summary);
        }
    }
    Ok(())
}
