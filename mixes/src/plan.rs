//! How many tokens of each class the mix takes.

use crate::{Error, MixClass};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a class with fewer unique tokens than its share does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Policy {
    /// Repeat its documents, reshuffled each epoch, for at most `max_epochs` epochs (Phi-4 ran its
    /// synthetic data for about 14, its web data for about 1).
    Repeat { max_epochs: f64 },
    /// Refuse the mix.
    Fail,
    /// Shrink the mix's total so the class fits once, and say so in the report.
    Renormalise,
}

impl Policy {
    /// The default: synthetic data repeats up to 14 epochs, other classes fail.
    pub fn default_for(class: MixClass) -> Policy {
        match class {
            MixClass::Synthetic => Policy::Repeat { max_epochs: 14.0 },
            _ => Policy::Fail,
        }
    }
}

/// The mix's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MixSettings {
    /// Shares by tokens; must sum to 1.
    pub weights: BTreeMap<MixClass, f64>,
    /// Tokens in the mix; `None`: as many as every class can give within its policy.
    pub target_tokens: Option<u64>,
    /// Per class (else [`Policy::default_for`]).
    pub policies: BTreeMap<MixClass, Policy>,
}

/// One class in the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassPlan {
    pub weight: f64,
    pub unique_tokens: u64,
    pub target_tokens: u64,
    /// Epochs over the class's documents its target takes (more than 1: repeated).
    pub epochs: f64,
    pub policy: Policy,
}

/// The plan: the total and each class's part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixPlan {
    pub target_tokens: u64,
    /// The target asked for, when renormalising shrank it.
    pub renormalised_from: Option<u64>,
    pub classes: BTreeMap<MixClass, ClassPlan>,
}

/// What a mix achieved against its plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixReport {
    pub plan: MixPlan,
    pub achieved_tokens: u64,
    /// Per class: tokens, share, the target share's distance in percentage points, epochs begun.
    pub classes: BTreeMap<MixClass, Achieved>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Achieved {
    pub tokens: u64,
    pub documents: u64,
    pub share: f64,
    pub target_share: f64,
    pub error_pp: f64,
    pub epochs: u32,
}

/// Plans a mix of `supply` (unique tokens per class) under `settings`.
pub fn plan(supply: &BTreeMap<MixClass, u64>, settings: &MixSettings) -> Result<MixPlan, Error> {
    let w = &settings.weights;
    for (c, x) in w {
        if !(x.is_finite() && *x >= 0.0) {
            return Err(Error::Weights(format!(
                "`{}` must be 0 or more, got {x}",
                c.as_str()
            )));
        }
    }
    let sum: f64 = w.values().sum();
    if (sum - 1.0).abs() > 1e-6 {
        return Err(Error::Weights(format!("the weights sum to {sum}, not 1")));
    }
    let policy = |c: MixClass| {
        settings
            .policies
            .get(&c)
            .copied()
            .unwrap_or(Policy::default_for(c))
    };
    let mut active = Vec::new();
    for (&c, &weight) in w.iter().filter(|(_, x)| **x > 0.0) {
        let have = supply.get(&c).copied().unwrap_or(0);
        if have == 0 {
            return Err(Error::EmptyClass {
                class: c.as_str(),
                weight,
            });
        }
        if let Policy::Repeat { max_epochs } = policy(c) {
            if !(max_epochs.is_finite() && max_epochs >= 1.0) {
                return Err(Error::Weights(format!(
                    "`{}`: max_epochs must be at least 1, got {max_epochs}",
                    c.as_str()
                )));
            }
        }
        active.push((c, weight, have));
    }
    // What each class can give within its policy, as a total mix size.
    let capacity = |c: MixClass, weight: f64, have: u64| match policy(c) {
        Policy::Repeat { max_epochs } => have as f64 * max_epochs / weight,
        Policy::Fail | Policy::Renormalise => have as f64 / weight,
    };
    let (total, renormalised_from) = match settings.target_tokens {
        Some(0) => return Err(Error::Target("must be more than 0".into())),
        Some(t) => {
            // Renormalising classes shrink the total first; the others must then fit it.
            let mut total = t as f64;
            for &(c, weight, have) in &active {
                if policy(c) == Policy::Renormalise {
                    total = total.min(have as f64 / weight);
                }
            }
            let total = total.floor() as u64;
            for &(c, weight, have) in &active {
                let need = (weight * total as f64).round() as u64;
                if need <= have {
                    continue;
                }
                let epochs = need as f64 / have as f64;
                match policy(c) {
                    Policy::Fail => {
                        return Err(Error::Short {
                            class: c.as_str(),
                            have,
                            need,
                        })
                    }
                    Policy::Repeat { max_epochs } if epochs > max_epochs => {
                        return Err(Error::TooManyEpochs {
                            class: c.as_str(),
                            have,
                            epochs,
                            max: max_epochs,
                        })
                    }
                    Policy::Repeat { .. } | Policy::Renormalise => {}
                }
            }
            (total, (total < t).then_some(t))
        }
        None => {
            let total = active
                .iter()
                .map(|&(c, weight, have)| capacity(c, weight, have))
                .fold(f64::INFINITY, f64::min);
            (total.floor() as u64, None)
        }
    };
    let classes = active
        .iter()
        .map(|&(c, weight, have)| {
            let target = (weight * total as f64).round() as u64;
            (
                c,
                ClassPlan {
                    weight,
                    unique_tokens: have,
                    target_tokens: target,
                    epochs: (target as f64 / have as f64 * 1000.0).round() / 1000.0,
                    policy: policy(c),
                },
            )
        })
        .collect();
    Ok(MixPlan {
        target_tokens: total,
        renormalised_from,
        classes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(target: Option<u64>) -> MixSettings {
        MixSettings {
            weights: MixClass::ALL
                .iter()
                .map(|c| (*c, c.default_weight()))
                .collect(),
            target_tokens: target,
            policies: BTreeMap::new(),
        }
    }

    fn supply(synthetic: u64) -> BTreeMap<MixClass, u64> {
        BTreeMap::from([
            (MixClass::Synthetic, synthetic),
            (MixClass::WebRewrite, 1_500),
            (MixClass::Web, 2_000),
            (MixClass::Code, 2_000),
            (MixClass::Targeted, 1_000),
        ])
    }

    #[test]
    fn targets_follow_the_weights_and_policies_decide_what_is_short() {
        // 10,000 tokens: synthetic needs 4,000 of its 1,000 (4 epochs, within 14).
        let p = plan(&supply(1_000), &settings(Some(10_000))).unwrap();
        assert_eq!(p.target_tokens, 10_000);
        assert_eq!(p.classes[&MixClass::Synthetic].target_tokens, 4_000);
        assert_eq!(p.classes[&MixClass::Synthetic].epochs, 4.0);
        assert_eq!(p.classes[&MixClass::Code].target_tokens, 2_000);

        // Web needs 1,650 of 2,000, fine; web rewrites 1,650 of 1,500: policy `fail`.
        let e = plan(&supply(1_000), &settings(Some(11_000))).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Short {
                    class: "web_rewrite",
                    have: 1_500,
                    need: 1_650
                }
            ),
            "{e}"
        );

        // Renormalised: the total shrinks to what web rewrites give once.
        let mut s = settings(Some(11_000));
        s.policies.insert(MixClass::WebRewrite, Policy::Renormalise);
        let p = plan(&supply(1_000), &s).unwrap();
        assert_eq!(
            (p.target_tokens, p.renormalised_from),
            (10_000, Some(11_000))
        );

        // Too many epochs.
        let e = plan(&supply(100), &settings(Some(10_000))).unwrap_err();
        assert!(
            matches!(
                e,
                Error::TooManyEpochs {
                    class: "synthetic",
                    ..
                }
            ),
            "{e}"
        );

        // No target: the largest mix every class gives within its policy (targeted: 1,000 / 0.1).
        let p = plan(&supply(1_000), &settings(None)).unwrap();
        assert_eq!(p.target_tokens, 10_000);

        // Bad weights and empty classes.
        let mut s = settings(None);
        s.weights.insert(MixClass::Code, 0.3);
        assert!(matches!(plan(&supply(1_000), &s), Err(Error::Weights(_))));
        let mut short = supply(1_000);
        short.remove(&MixClass::Targeted);
        assert!(matches!(
            plan(&short, &settings(None)),
            Err(Error::EmptyClass {
                class: "targeted",
                ..
            })
        ));
        // A class with no weight needs no data.
        let mut s = settings(None);
        s.weights.insert(MixClass::Targeted, 0.0);
        s.weights.insert(MixClass::Code, 0.3);
        assert!(plan(&short, &s).is_ok());
    }
}
