//! The local Phi-3/Phi-4 model against candle-transformers' `phi3` on the same random weights:
//! logits must agree within f32 tolerance at short and long positions, unbatched and batched
//! (prompts of different lengths together, and a new prompt joining a sequence mid-decode).

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::phi3 as reference;
use engines::phi3::{Config, Model};

fn config() -> serde_json::Value {
    serde_json::json!({
        "vocab_size": 96, "hidden_size": 64, "intermediate_size": 112, "num_hidden_layers": 2,
        "num_attention_heads": 8, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": 1024, "hidden_act": "silu",
        "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2
    })
}

/// Both models over one set of random weights.
fn models(slots: usize) -> (Model, reference::Model) {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let cfg: Config = serde_json::from_value(config()).unwrap();
    // Creating our model creates the weights; the reference then reads the same variables.
    let ours = Model::new(&cfg, vb.clone(), slots, 1024).unwrap();
    // Non-trivial norm weights.
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if name.contains("norm") {
            let t = var.as_tensor();
            let noise = (Tensor::rand(0.5f32, 1.5, t.shape(), &dev).unwrap())
                .to_dtype(t.dtype())
                .unwrap();
            var.set(&noise).unwrap();
        }
    }
    let ours = {
        drop(ours);
        Model::new(
            &cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &dev),
            slots,
            1024,
        )
        .unwrap()
    };
    let rcfg: reference::Config = serde_json::from_value(config()).unwrap();
    let theirs =
        reference::Model::new(&rcfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
    (ours, theirs)
}

fn tokens(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 37 + seed * 11 + 3) % 96)
        .collect()
}

/// Their logits after feeding `seq` from position `offset`.
fn reference_logits(m: &mut reference::Model, seq: &[u32], offset: usize) -> Vec<f32> {
    let input = Tensor::new(seq, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward(&input, offset)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn row(t: &Tensor, i: usize) -> Vec<f32> {
    t.get(i).unwrap().to_vec1().unwrap()
}

#[track_caller]
fn close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len());
    let spread = b.iter().fold(0f32, |m, x| m.max((x - b[0]).abs()));
    assert!(
        spread > 1e-3,
        "{what}: the reference logits are flat, the comparison would prove nothing"
    );
    let scale = b.iter().fold(1f32, |m, x| m.max(x.abs()));
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        diff <= 1e-4 * scale,
        "{what}: max difference {diff} (scale {scale})"
    );
}

#[test]
fn one_sequence_matches_at_short_and_long_positions() {
    // Attention reading the KV pool in place (the CPU's default), then gathering it (the GPU's).
    for in_place in [true, false] {
        one_sequence(in_place);
    }
}

fn one_sequence(in_place: bool) {
    let (mut ours, mut theirs) = models(1);
    ours.set_attention_in_place(in_place);
    let prompt = tokens(300, 1);
    // Prefill, then decode past position 256.
    close(
        &row(&ours.forward(&[prompt[..12].to_vec()], &[0]).unwrap(), 0),
        &reference_logits(&mut theirs, &prompt[..12], 0),
        "prefill 12",
    );
    for p in 12..20 {
        let ours_l = row(&ours.forward(&[vec![prompt[p]]], &[p]).unwrap(), 0);
        close(
            &ours_l,
            &reference_logits(&mut theirs, &prompt[p..p + 1], p),
            &format!("decode at {p}"),
        );
    }
    close(
        &row(
            &ours.forward(&[prompt[20..300].to_vec()], &[20]).unwrap(),
            0,
        ),
        &reference_logits(&mut theirs, &prompt[20..300], 20),
        "prefill to 300",
    );
    for p in 300..304 {
        let t = (p as u32 * 7) % 96;
        close(
            &row(&ours.forward(&[vec![t]], &[p]).unwrap(), 0),
            &reference_logits(&mut theirs, &[t], p),
            &format!("decode at {p}"),
        );
    }
}

#[test]
fn batches_of_different_lengths_match_each_sequence_alone() {
    for in_place in [true, false] {
        batches_of_different_lengths(in_place);
    }
}

fn batches_of_different_lengths(in_place: bool) {
    let (mut ours, mut theirs) = models(3);
    ours.set_attention_in_place(in_place);
    let a = tokens(7, 2);
    let b = tokens(13, 3);
    let c = tokens(1, 4);
    let batch = ours
        .forward(&[a.clone(), b.clone(), c.clone()], &[0, 0, 0])
        .unwrap();
    for (i, seq) in [&a, &b, &c].into_iter().enumerate() {
        theirs.clear_kv_cache();
        close(
            &row(&batch, i),
            &reference_logits(&mut theirs, seq, 0),
            &format!("batched prompt {i}"),
        );
    }
    // One decode step for all three, each at its own position.
    let next = ours
        .forward(&[vec![5], vec![6], vec![7]], &[7, 13, 1])
        .unwrap();
    for (i, (seq, t)) in [(&a, 5u32), (&b, 6), (&c, 7)].into_iter().enumerate() {
        theirs.clear_kv_cache();
        let mut full = seq.clone();
        full.push(t);
        close(
            &row(&next, i),
            &reference_logits(&mut theirs, &full, 0),
            &format!("batched decode {i}"),
        );
    }
    // Continuous batching: slot 1 starts a new prompt while slots 0 and 2 keep decoding.
    let d = tokens(9, 5);
    let mixed = ours
        .forward(&[vec![8], d.clone(), vec![9]], &[8, 0, 2])
        .unwrap();
    theirs.clear_kv_cache();
    close(
        &row(&mixed, 1),
        &reference_logits(&mut theirs, &d, 0),
        "new prompt joining",
    );
    theirs.clear_kv_cache();
    let mut a2 = a.clone();
    a2.extend([5, 8]);
    close(
        &row(&mixed, 0),
        &reference_logits(&mut theirs, &a2, 0),
        "decode beside a new prompt",
    );
}

#[test]
fn phi4_shape_and_refused_configs() {
    let c = Config::phi4();
    assert_eq!(
        (
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads
        ),
        (40, 5120, 40, 10)
    );
    assert_eq!(
        (c.rope_theta, c.vocab_size, c.max_position_embeddings),
        (250_000.0, 100_352, 16_384)
    );
    assert!(c.check().is_ok());
    let mut bad = c.clone();
    bad.rope_scaling = Some(serde_json::json!({"type": "longrope"}));
    assert!(bad.check().is_err());
}

/// Against Hugging Face transformers' own `Phi3ForCausalLM` (golden logits made once by
/// `tests/golden/make_phi3_golden.py`), loading the model the way users do: a model folder.
#[test]
fn a_hugging_face_folder_loads_and_matches_transformers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/phi3-tiny");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let tokens: Vec<u32> = golden["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    let want = |n: usize| -> Vec<f32> {
        let check = golden["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["length"] == n)
            .unwrap();
        check["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let model = Model::load(&dir, DType::F32, &Device::Cpu, 2, 1024).unwrap();
    // Whole prefixes at once, two of different lengths in one batch.
    let both = model
        .forward(&[tokens[..12].to_vec(), tokens[..257].to_vec()], &[0, 0])
        .unwrap();
    close(&row(&both, 0), &want(12), "prefix 12 (batched)");
    close(&row(&both, 1), &want(257), "prefix 257 (batched)");
    // Incrementally: one token, then decode, then a long chunk.
    close(
        &row(&model.forward(&[tokens[..1].to_vec()], &[0]).unwrap(), 0),
        &want(1),
        "first token",
    );
    let mut last = None;
    for (p, &t) in tokens.iter().enumerate().take(20).skip(1) {
        last = Some(row(&model.forward(&[vec![t]], &[p]).unwrap(), 0));
    }
    close(&last.unwrap(), &want(20), "decoded to 20");
    close(
        &row(
            &model.forward(&[tokens[20..256].to_vec()], &[20]).unwrap(),
            0,
        ),
        &want(256),
        "chunk to 256",
    );
    let mut last = None;
    for (p, &t) in tokens.iter().enumerate().take(300).skip(256) {
        last = Some(row(&model.forward(&[vec![t]], &[p]).unwrap(), 0));
    }
    close(&last.unwrap(), &want(300), "decoded to 300");
}

/// Writes the tiny model as a `phi3` GGUF file (llama.cpp's names), quantizing the projections
/// to `dtype` where their rows allow it.
fn write_gguf(path: &std::path::Path, dtype: candle_core::quantized::GgmlDType) {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/phi3-tiny");
    let weights =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut put = |gguf: &str, hf: &str, quantize: bool| {
        let t = &weights[hf];
        let fits = t.dims().last().unwrap().is_multiple_of(dtype.block_size());
        let q = if quantize && fits {
            dtype
        } else {
            GgmlDType::F32
        };
        tensors.push((gguf.to_string(), QTensor::quantize(t, q).unwrap()));
    };
    put("token_embd.weight", "model.embed_tokens.weight", false);
    put("output_norm.weight", "model.norm.weight", false);
    put("output.weight", "lm_head.weight", true);
    for i in 0..2 {
        let (g, h) = (format!("blk.{i}"), format!("model.layers.{i}"));
        put(
            &format!("{g}.attn_norm.weight"),
            &format!("{h}.input_layernorm.weight"),
            false,
        );
        put(
            &format!("{g}.ffn_norm.weight"),
            &format!("{h}.post_attention_layernorm.weight"),
            false,
        );
        put(
            &format!("{g}.attn_qkv.weight"),
            &format!("{h}.self_attn.qkv_proj.weight"),
            true,
        );
        put(
            &format!("{g}.attn_output.weight"),
            &format!("{h}.self_attn.o_proj.weight"),
            true,
        );
        put(
            &format!("{g}.ffn_up.weight"),
            &format!("{h}.mlp.gate_up_proj.weight"),
            true,
        );
        put(
            &format!("{g}.ffn_down.weight"),
            &format!("{h}.mlp.down_proj.weight"),
            true,
        );
    }
    use gguf_file::Value;
    let theta = cfg["rope_parameters"]["rope_theta"].as_f64().unwrap() as f32;
    let metadata = [
        ("general.architecture", Value::String("phi3".into())),
        ("phi3.block_count", Value::U32(2)),
        ("phi3.embedding_length", Value::U32(64)),
        ("phi3.feed_forward_length", Value::U32(112)),
        ("phi3.attention.head_count", Value::U32(8)),
        ("phi3.attention.head_count_kv", Value::U32(2)),
        ("phi3.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("phi3.rope.freq_base", Value::F32(theta)),
        ("phi3.context_length", Value::U32(1024)),
    ];
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md, &ts).unwrap();
}

#[test]
fn gguf_files_load_exactly_in_f32_and_closely_quantized() {
    use candle_core::quantized::GgmlDType;
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/phi3-tiny");
    let dense = Model::load(&dir, DType::F32, &Device::Cpu, 1, 64).unwrap();
    let tokens: Vec<u32> = (0..20u32).map(|i| (i * 37 + 14) % 96).collect();
    let want = row(
        &dense.forward(std::slice::from_ref(&tokens), &[0]).unwrap(),
        0,
    );
    for (dtype, tolerance) in [(GgmlDType::F32, 1e-4f32), (GgmlDType::Q8_0, 3e-2)] {
        let path = tmp.path().join(format!("tiny-{dtype:?}.gguf"));
        write_gguf(&path, dtype);
        let q = Model::from_gguf(&path, &Device::Cpu, 1, 64).unwrap();
        assert_eq!(q.config().rope_theta, 10000.0);
        let got = row(&q.forward(std::slice::from_ref(&tokens), &[0]).unwrap(), 0);
        let scale = want.iter().fold(1f32, |m, x| m.max(x.abs()));
        let diff = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff <= tolerance * scale,
            "{dtype:?}: max difference {diff} (scale {scale})"
        );
    }
}

#[test]
fn a_batch_in_later_slots_and_equal_lengths_match_the_reference() {
    let (ours, mut theirs) = models(4);
    let a = tokens(6, 7);
    let b = tokens(6, 8);
    // Slots 0 and 1 hold something else; the batch of interest lives in slots 2 and 3.
    ours.forward(&[tokens(5, 9), tokens(3, 10)], &[0, 0])
        .unwrap();
    let first = ours
        .forward_at(2, &[a.clone(), b.clone()], &[0, 0])
        .unwrap();
    // Equal lengths: the decode step runs without a mask.
    let next = ours.forward_at(2, &[vec![11], vec![12]], &[6, 6]).unwrap();
    for (i, (seq, t)) in [(&a, 11u32), (&b, 12)].into_iter().enumerate() {
        theirs.clear_kv_cache();
        close(
            &row(&first, i),
            &reference_logits(&mut theirs, seq, 0),
            &format!("prompt in slot {}", 2 + i),
        );
        theirs.clear_kv_cache();
        let mut full = seq.clone();
        full.push(t);
        close(
            &row(&next, i),
            &reference_logits(&mut theirs, &full, 0),
            &format!("decode in slot {}", 2 + i),
        );
    }
    // Past the slots there are: refused.
    assert!(ours.forward_at(3, &[vec![1], vec![2]], &[0, 0]).is_err());
}

/// The paged KV cache: a prompt prefix written once, in blocks out of order, is then read in
/// place by two sequences whose tables share those blocks (as prefix-cache hits and `n` samples
/// are), and each gets the logits it would have had computing the prefix itself; the fused decode
/// path reads the same tables. Two sequences writing one block, or a table that does not reach
/// the new positions, are refused.
#[test]
fn sequences_sharing_prefix_blocks_read_them_in_place() {
    use engines::kernels::Kernels;
    use engines::phi3::Group;
    let (mut ours, mut theirs) = models(1);
    ours.set_pool(4, 40).unwrap();
    let prefix = tokens(12, 3); // three whole blocks
    let own = |t: &[u32]| Group {
        tables: vec![t.to_vec()],
        tokens: vec![prefix.clone()],
        starts: vec![0],
    };
    let p = ours.forward_groups(&[own(&[5, 9, 2, 30])]).unwrap();
    theirs.clear_kv_cache();
    close(
        &row(&p, 0),
        &reference_logits(&mut theirs, &prefix, 0),
        "the prefix",
    );
    // Two continuations of unequal lengths, each with blocks of its own after the shared three
    // (the shorter is padded to the longer: its table reaches the padding too).
    let (x, y) = (tokens(5, 4), tokens(3, 5));
    let tables = vec![vec![5, 9, 2, 11, 12], vec![5, 9, 2, 20, 21]];
    let both = Group {
        tables: tables.clone(),
        tokens: vec![x.clone(), y.clone()],
        starts: vec![12, 12],
    };
    let got = ours.forward_groups(&[both]).unwrap();
    let mut px = prefix.clone();
    px.extend(&x);
    let mut py = prefix.clone();
    py.extend(&y);
    for (i, seq) in [&px, &py].into_iter().enumerate() {
        theirs.clear_kv_cache();
        close(
            &row(&got, i),
            &reference_logits(&mut theirs, seq, 0),
            &format!("continuation {i}"),
        );
    }
    // A decode step of each, on the general path and on the fused one (its candle fallbacks on
    // the CPU), which read the same tables.
    let step = Group {
        tables,
        tokens: vec![vec![7], vec![8]],
        starts: vec![17, 15],
    };
    let general = ours.forward_groups(std::slice::from_ref(&step)).unwrap();
    px.push(7);
    py.push(8);
    for (i, seq) in [&px, &py].into_iter().enumerate() {
        theirs.clear_kv_cache();
        close(
            &row(&general, i),
            &reference_logits(&mut theirs, seq, 0),
            &format!("decode {i}"),
        );
    }
    // The fused path needs head size 64: a model of that shape, the same steps on both paths.
    let mut json = config();
    json["hidden_size"] = 256.into();
    json["num_attention_heads"] = 4.into();
    let cfg: Config = serde_json::from_value(json).unwrap();
    let dev = Device::Cpu;
    let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &dev);
    let mut wide = Model::new(&cfg, vb, 1, 64).unwrap();
    wide.set_pool(4, 40).unwrap();
    wide.forward_groups(&[own(&[5, 9, 2, 30])]).unwrap();
    let cont = Group {
        tables: step.tables.clone(),
        tokens: vec![x.clone(), y.clone()],
        starts: vec![12, 12],
    };
    wide.forward_groups(&[cont]).unwrap();
    let want = wide.forward_groups(std::slice::from_ref(&step)).unwrap();
    wide.set_kernels(Some(Kernels::NONE)).unwrap();
    let fused = wide.forward_groups(std::slice::from_ref(&step)).unwrap();
    for i in 0..2 {
        close(
            &row(&fused, i),
            &row(&want, i),
            &format!("fused decode {i}"),
        );
    }
    // Refused: two sequences writing block 11; a table short of the new position.
    let clash = Group {
        tables: vec![vec![5, 9, 2, 11], vec![5, 9, 2, 11]],
        tokens: vec![vec![1], vec![2]],
        starts: vec![12, 13],
    };
    let err = ours.forward_groups(&[clash]).unwrap_err().to_string();
    assert!(err.contains("block 11"), "{err}");
    let short = Group {
        tables: vec![vec![5, 9, 2]],
        tokens: vec![vec![1]],
        starts: vec![12],
    };
    let err = ours.forward_groups(&[short]).unwrap_err().to_string();
    assert!(err.contains("position 12"), "{err}");
}

/// The fused decode path (`kernels`), on the CPU made of candle operations only, against the
/// general forward pass on the same weights: sequences of unequal lengths in later slots, then
/// equal lengths (no mask), for several steps.
#[test]
fn the_fused_decode_path_matches_the_general_one() {
    use engines::kernels::Kernels;
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    // Head size 64 (the kernels' smallest), two query heads per KV head.
    let mut json = config();
    json["hidden_size"] = 256.into();
    json["num_attention_heads"] = 4.into();
    let cfg: Config = serde_json::from_value(json).unwrap();
    let make = || {
        Model::new(
            &cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &dev),
            5,
            64,
        )
    };
    let mut general = make().unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if name.contains("norm") {
            let t = var.as_tensor();
            var.set(&Tensor::rand(0.5f32, 1.5, t.shape(), &dev).unwrap())
                .unwrap();
        }
    }
    general = {
        drop(general);
        make().unwrap()
    };
    let mut fused = make().unwrap();
    // The CPU default is the general path; the fused one must be asked for.
    assert_eq!(general.kernels(), None);
    fused.set_kernels(Some(Kernels::NONE)).unwrap();
    for (first, prompts) in [
        (1, vec![tokens(5, 1), tokens(9, 2), tokens(2, 3)]),
        (0, vec![tokens(4, 4), tokens(4, 5)]),
    ] {
        let starts = vec![0; prompts.len()];
        let a = general.forward_at(first, &prompts, &starts).unwrap();
        let b = fused.forward_at(first, &prompts, &starts).unwrap();
        let mut lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
        let mut next: Vec<u32> = (0..prompts.len())
            .map(|i| {
                row(&a, i)
                    .iter()
                    .enumerate()
                    .fold((0, f32::MIN), |m, (j, &x)| if x > m.1 { (j, x) } else { m })
                    .0 as u32
            })
            .collect();
        for i in 0..prompts.len() {
            close(&row(&b, i), &row(&a, i), "prompt");
        }
        for step in 0..6 {
            let feed: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
            let a = general.forward_at(first, &feed, &lens).unwrap();
            let b = fused.forward_at(first, &feed, &lens).unwrap();
            for (i, len) in lens.iter_mut().enumerate() {
                close(
                    &row(&b, i),
                    &row(&a, i),
                    &format!("decode step {step}, sequence {i} at position {len}"),
                );
                *len += 1;
                next[i] = (next[i] * 31 + step as u32 + 7) % 96;
            }
        }
    }
    // Quantized weights or head sizes the kernels do not serve keep the general path.
    let mut small = models(1).0;
    assert!(small.set_kernels(Some(Kernels::ALL)).is_err());
}
