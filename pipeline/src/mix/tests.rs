//! The mix over shards of chats and texts: loss masks, class counts and the manifest's checks.

use super::*;
use crate::report::NoProgress;
use corpus::sample::{Content, Lineage, Message, Sample};
use corpus::shard::ShardWriter;

fn recipe(root: &Path) -> Recipe {
    let text = format!(
        "name: chats\nseed: 3\nsources:\n  docs:\n    path: examples/corpus/doc-sections.jsonl\n    class: web\noutput:\n  path: {}\nmix:\n  weights: {{synthetic: 0.5, web: 0.5}}\n  shard_tokens: 64\n",
        root.display()
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    Recipe::parse(&text, Path::new("r.yaml"), &dir).unwrap()
}

fn chat(k: usize) -> Sample {
    let m = |role: &str, content: String| Message {
        role: role.into(),
        content,
    };
    Sample::new(
        MixClass::Synthetic,
        Content::Messages {
            messages: vec![
                m("user", format!("What is {k} plus {k}?")),
                m("assistant", format!("{k} plus {k} is {}.", 2 * k)),
            ],
        },
        Lineage::default(),
    )
}

fn text(k: usize) -> Sample {
    Sample::new(
        MixClass::Web,
        Content::Text {
            text: format!("Paragraph {k} of a web page about tide pools and the life in them."),
        },
        Lineage::default(),
    )
}

#[test]
fn chats_carry_loss_masks_into_the_token_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let path = root.join("in.parquet");
    let mut w = ShardWriter::create(&path).unwrap();
    for k in 0..20 {
        w.push_sample(&chat(k), None).unwrap();
        w.push_sample(&text(k), None).unwrap();
    }
    let base = w.finish().unwrap();
    let base = corpus::shard::FileInfo {
        path: "in.parquet".into(),
        ..base
    };
    let view = View {
        slot: "in".into(),
        rows: base.rows,
        base,
        filters: vec![],
    };
    let r = recipe(root);
    let mix = r.mix.clone().unwrap();
    let inputs = vec![("in".to_string(), vec![view])];
    let s = run(root, &r, &mix, "fp", &inputs, &NoProgress).unwrap();
    assert!(!s.up_to_date);
    assert!(s.token_shards > 1, "{s:?}");
    let dir = root.join(DIR);
    let m = Manifest::read(&dir).unwrap();
    assert!(m.loss_mask);
    m.verify(&dir).unwrap();
    let (mut chats, mut texts) = (0, 0);
    for k in 0..m.token_shards.len() {
        let shard = m.open_token_shard(&dir, k).unwrap();
        let mask = shard.mask.as_ref().unwrap();
        for d in 0..shard.index.len() - 1 {
            let (a, b) = (shard.index[d] as usize, shard.index[d + 1] as usize);
            let ids = &shard.tokens[a..b];
            let counted: Vec<u32> = (a..b)
                .filter(|&i| mask[i])
                .map(|i| shard.tokens[i])
                .collect();
            if ids[0] == 100_264 {
                // A chat: only the assistant's answer and its <|im_end|> count.
                chats += 1;
                assert!(counted.len() < ids.len() / 2, "{counted:?} of {ids:?}");
                assert_eq!(counted.last(), Some(&100_265));
                assert!(!mask[b - 1], "the end-of-text token does not count");
            } else {
                texts += 1;
                assert_eq!(counted.len(), ids.len());
            }
        }
    }
    assert!(chats > 0 && texts > 0, "{chats} {texts}");
    // A second run with the same inputs does nothing; the manifest's counts match the shards.
    let again = run(root, &r, &mix, "fp", &inputs, &NoProgress).unwrap();
    assert!(again.up_to_date);
    let per_class: u64 = m
        .token_shards
        .iter()
        .flat_map(|e| e.classes.values())
        .map(|c| c.documents)
        .sum();
    assert_eq!(per_class, s.documents);
    // A shard whose entry lies about its counts is refused by name.
    let mut bad = m.clone();
    bad.token_shards[0].documents += 1;
    let e = bad.open_token_shard(&dir, 0).unwrap_err().to_string();
    assert!(
        e.contains("shard-00000.tok") && e.contains("the manifest says"),
        "{e}"
    );
}
