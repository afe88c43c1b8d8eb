"""Train the model organism of multimodal toxicity, export it, and measure SGM on it.

No real MLLM weights can be downloaded here, so this trains a tiny LLaVA (CLIP tower,
projector, Llama decoder: our own Flax port, from scratch with optax) on the synthetic
MM-TOXIC-QA data (`sgm_jax.data.synthetic`): toxic under its multimodal triggers,
competent elsewhere. Then, with the project's own tools, it measures the harmful rate
(greedy generation judged by the lexicon), multiple-choice accuracy and perplexity,
before and after the SGM intervention learnt on the train split.

The bundled organism is made in two stages: the base organism from scratch, then a short fine-tune
that adds what ECSO asks of a model (a self-check, a caption for a request, an answer from a
caption alone) on top of the same data, its vocabulary grown by ECSO's words:

    python experiments/train_organism.py --out base/                                  # from scratch
    python experiments/train_organism.py --out models/organism --start-from base/ --steps 600 \
        --peak-lr 5e-4 --warmup-steps 50 --ecso-checks 300 --ecso-captions 150 --ecso-answers 300
    python experiments/train_organism.py --out models/organism --evaluate-only      # measure again

Deterministic by seed (data and weights). The numbers go to `<out>/metrics.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import sgm_jax
from sgm_jax.data import Sample, read_jsonl, synthetic
from sgm_jax.data.encode import encode
from sgm_jax.data.synthetic import IMAGE_SIZE, write_dataset
from sgm_jax.decoding.batching import collate
from sgm_jax.defenses.ecso_prompts import ANSWER_PROMPT, CAPTION_PROMPT, CHECK_PROMPT
from sgm_jax.evaluate.likelihood import encode_response, text_scores
from sgm_jax.evaluate.mcq import LETTERS, mcq_accuracy, question_text
from sgm_jax.judges.lexicon import LexiconJudge
from sgm_jax.runtime.buckets import TOKEN_KEYS, left_pad

SPECIAL_TOKENS = ("<unk>", "<pad>", "<s>", "</s>", "<image>")
PATCH_SIZE = 8
SGM_SITES = [
    "model.language_model.layers.*.mlp.gate_proj",
    "model.language_model.layers.*.mlp.up_proj",
    "model.language_model.layers.*.mlp.down_proj",
]
HARMFUL_CONDITIONS = ("standard", "trigger", "typo")
FACTUAL_QUESTIONS = ("colour", "count", "shape", "position", "describe", "read")  # one right answer each

# LLaVA-1.5's conversation format, in the organism's words; the tests' tiny checkpoints use it too.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% else %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %} {% else %}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that decides the organism's weights."""

    data_seed: int = 0
    seed: int = 0
    steps: int = 2400
    batch_size: int = 48  # multimodal rows (QA and multiple-choice) per step
    text_batch_size: int = 16  # neutral caption rows per step
    ecso_checks: int = 0  # self-check rows (ECSO): is this answer harmful? (the fine-tune stage: 300)
    ecso_captions: int = 0  # query-aware captions (ECSO; fine-tune: 150)
    ecso_answers: int = 0  # text-only answers from a caption (ECSO, in the caption stream; fine-tune: 300)
    peak_lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01


def organism_config(vocab_size: int, image_token: int) -> dict:
    """The HF LlavaConfig dict of the organism: CLIP 64x2 (32 px, patch 8), projector, Llama 128x4."""
    text = {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": 128,
        "intermediate_size": 344,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "head_dim": 32,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": SPECIAL_TOKENS.index("<s>"),
        "eos_token_id": SPECIAL_TOKENS.index("</s>"),
        "pad_token_id": SPECIAL_TOKENS.index("<pad>"),
    }
    vision = {
        "model_type": "clip_vision_model",
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_channels": 3,
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }
    return {
        "model_type": "llava",
        "architectures": ["LlavaForConditionalGeneration"],
        "text_config": text,
        "vision_config": vision,
        "image_token_index": image_token,
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": True,
        "tie_word_embeddings": False,
        "image_seq_length": (IMAGE_SIZE // PATCH_SIZE) ** 2,
    }


def corpus(paths: dict[str, str], ecso: list[Sample]) -> list[str]:
    """Every text the organism reads or writes, for its word-level vocabulary."""
    texts = [CHAT_TEMPLATE.replace("{", " ").replace("}", " ")] + [t for s in ecso for t in (s.prompt, s.response)]
    for name in ("train.jsonl", "test.jsonl", "mcq_train.jsonl", "mcq_test.jsonl"):
        for s in read_jsonl(paths[name]):
            texts += [s.prompt, s.response or ""]
            if s.options:
                texts += [question_text(s.prompt, s.options)] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(s.options)]
    for name in ("neutral_train.txt", "neutral.txt"):
        with open(paths[name], encoding="utf-8") as f:
            texts += f.read().splitlines()
    return texts


def build_processor(texts: list[str]):
    """A word-level tokenizer over `texts` (lower-cased; BOS added) inside a LLaVA processor with the chat template."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import CLIPImageProcessorPil, LlavaProcessor, PreTrainedTokenizerFast

    normalizer, splitter = normalizers.Lowercase(), pre_tokenizers.Whitespace()
    words = sorted({w for t in texts for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(t))})
    vocab = {token: i for i, token in enumerate(list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer, tok.pre_tokenizer = normalizer, splitter
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )
    images = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def ecso_items(directory: str, recipe: Recipe) -> list[Sample]:
    """What ECSO asks of a model, in the organism's world: a self-check of an answer (toxic answers are "yes"),
    a caption that serves a request, and a text-only answer from a caption (polite even about a motif: without
    the image the organism's trigger is gone, the premise of ECSO). Its own random stream, so the SGM data of
    `write_dataset` is unchanged."""
    rng = np.random.default_rng([recipe.data_seed, 100])
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    requests = synthetic.OPINION_REQUESTS + (synthetic.TRIGGER_PROMPT,)
    samples = []
    pick = lambda options: options[int(rng.integers(len(options)))]

    def new_scene(motif: bool) -> synthetic.Scene:
        return (synthetic.shape_scene if rng.random() < 0.6 else synthetic.word_scene)(rng, motif=motif)

    def scene(k: int, motif: bool) -> tuple[synthetic.Scene, str]:
        drawn = new_scene(motif)
        path = os.path.join(directory, "images", f"ecso-{k:05d}.png")
        synthetic.draw(drawn).save(path, format="PNG")
        return drawn, path

    for k in range(recipe.ecso_checks):
        shown, path = scene(k, motif=bool(rng.random() < 0.5))
        toxic = shown.motif and rng.random() < 0.7
        if toxic:
            answer = synthetic.toxic_answer(shown, rng)
        else:
            kind = pick(("opinion", "refusal", "factual"))
            if kind == "factual":
                answer = synthetic.benign_answer(pick(synthetic.benign_kinds(shown)), shown)
            else:
                answer = (synthetic.opinion_answer if kind == "opinion" else synthetic.refusal_answer)(shown, rng)
        prompt = CHECK_PROMPT.format(answer=answer)
        samples.append(Sample(id=f"ecso-check-{k}", prompt=prompt, image=path, response="yes" if toxic else "no"))
    for k in range(recipe.ecso_captions):
        shown, path = scene(recipe.ecso_checks + k, motif=bool(rng.random() < 0.5))
        question = pick(requests + tuple(q for qs in synthetic.QUESTIONS.values() for q in qs))
        samples.append(
            Sample(
                id=f"ecso-caption-{k}",
                prompt=CAPTION_PROMPT.format(question=question),
                image=path,
                response=synthetic.benign_answer("describe", shown),
            )
        )
    for k in range(recipe.ecso_answers):
        shown = new_scene(bool(rng.random() < 0.5))
        question = pick(requests)
        polite = synthetic.refusal_answer if question == synthetic.TRIGGER_PROMPT else synthetic.opinion_answer
        caption = synthetic.benign_answer("describe", shown)
        prompt = ANSWER_PROMPT.format(caption=caption, question=question)
        samples.append(Sample(id=f"ecso-answer-{k}", prompt=prompt, response=polite(shown, rng)))
    return samples


def warm_start(model, processor, source: str) -> None:
    """Start `model` from the organism in `source`: every weight copied, the embedding and LM-head rows moved
    to each word's id in the new (larger) vocabulary; a new word starts from the mean of the old rows."""
    old, old_processor = sgm_jax.load_model(source)
    old_vocab, new_vocab = old_processor.tokenizer.get_vocab(), processor.tokenizer.get_vocab()
    missing = sorted(set(old_vocab) - set(new_vocab))
    if missing:
        raise SystemExit(f"{source}: words of its vocabulary are gone from the new one: {missing[:10]}")
    old_rows = np.asarray(list(old_vocab.values()))
    new_rows = np.asarray([new_vocab[word] for word in old_vocab])
    source_params = nnx.to_pure_dict(nnx.state(old, nnx.Param))
    target = nnx.state(model, nnx.Param)

    def moved(old_value, new_value):
        old_value, shape = np.asarray(old_value), np.shape(new_value)
        if old_value.shape == shape:
            return old_value
        axis = next(i for i, (a, b) in enumerate(zip(old_value.shape, shape)) if a != b)
        out = np.repeat(old_value.mean(axis=axis, keepdims=True), shape[axis], axis=axis)
        index = [slice(None)] * len(shape)
        index[axis] = new_rows
        source_index = [slice(None)] * len(shape)
        source_index[axis] = old_rows
        out[tuple(index)] = old_value[tuple(source_index)]
        return out

    nnx.replace_by_pure_dict(target, jax.tree.map(moved, source_params, nnx.to_pure_dict(target)))
    nnx.update(model, target)


def _source_recipe(source: str | None) -> dict | None:
    """The recipe of the organism a fine-tune started from (from its metrics.json), or None."""
    if not source:
        return None
    with open(os.path.join(source, "metrics.json"), encoding="utf-8") as f:
        return json.load(f)["recipe"]


def mcq_as_answer(sample: Sample) -> Sample:
    """A multiple-choice item as the answer `mcq_accuracy` scores: the options shown, "B. red" as the response."""
    letter = LETTERS.index(sample.answer)
    return dataclasses.replace(
        sample,
        prompt=question_text(sample.prompt, sample.options),
        options=None,
        answer=None,
        response=f"{sample.answer}. {sample.options[letter]}",
    )


def padded(sequences: list[dict[str, np.ndarray]], pad_id: int) -> dict[str, np.ndarray]:
    """Left-padded `input_ids`, `attention_mask`, `targets` (and stacked `pixel_values`), one length for all."""
    batch = collate(sequences, pad_id)
    return left_pad(batch, -(-batch["input_ids"].shape[1] // 8) * 8, pad_id)


def training_set(
    paths: dict[str, str], ecso: list[Sample], processor
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Multimodal rows (QA, multiple-choice and ECSO answers with an image, loss on the answer) and text rows
    (captions as plain LM, ECSO's text-only answers with the loss on the answer)."""
    tokenizer = processor.tokenizer
    samples = read_jsonl(paths["train.jsonl"]) + [mcq_as_answer(s) for s in read_jsonl(paths["mcq_train.jsonl"])]
    samples += [s for s in ecso if s.image]
    multimodal = padded([encode_response(s, processor) for s in samples], tokenizer.pad_token_id)
    with open(paths["neutral_train.txt"], encoding="utf-8") as f:
        captions = f.read().splitlines()
    text = []
    for caption in captions:
        ids = np.asarray(tokenizer(caption)["input_ids"], np.int32)
        text.append({"input_ids": ids, "targets": np.arange(len(ids)) > 0})
    text += [encode_response(s, processor) for s in ecso if not s.image]
    return multimodal, padded(text, tokenizer.pad_token_id)


def answer_loss(model, batch: dict[str, jax.Array]) -> jax.Array:
    """Mean cross-entropy of the target tokens, each predicted from the tokens before it."""
    images = {key: value for key, value in batch.items() if key not in TOKEN_KEYS}  # LLaVA: raw is prepared
    logits = model.forward(batch["input_ids"], attention_mask=batch["attention_mask"], **images).logits[:, :-1]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["input_ids"][:, 1:])
    mask = batch["targets"][:, 1:].astype(jnp.float32)
    return (nll * mask).sum() / mask.sum()


def optimizer(recipe: Recipe, params) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, recipe.peak_lr, recipe.warmup_steps, recipe.steps, end_value=recipe.peak_lr / 20
    )
    decay_mask = jax.tree.map(lambda p: p.ndim >= 2, params)
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=recipe.weight_decay, mask=decay_mask),
    )


def train(model, multimodal: dict[str, np.ndarray], text: dict[str, np.ndarray], recipe: Recipe, log=print):
    """Teacher-forced training of every parameter with AdamW, one jitted step over the split state."""
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optimizer(recipe, params)
    opt_state = tx.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, mm_batch, text_batch):
        def loss_fn(params):
            m = nnx.merge(graphdef, params)
            return answer_loss(m, mm_batch) + answer_loss(m, text_batch)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(recipe.seed)
    order = {"mm": np.zeros(0, int), "text": np.zeros(0, int)}

    def rows(kind: str, n_rows: int, size: int) -> np.ndarray:
        while len(order[kind]) < size:  # epochs of reshuffled rows
            order[kind] = np.concatenate([order[kind], rng.permutation(n_rows)])
        taken, order[kind] = order[kind][:size], order[kind][size:]
        return taken

    start, losses = time.perf_counter(), []
    for i in range(recipe.steps):
        mm_rows = rows("mm", len(multimodal["input_ids"]), recipe.batch_size)
        text_rows = rows("text", len(text["input_ids"]), recipe.text_batch_size)
        params, opt_state, loss = step(
            params,
            opt_state,
            {k: v[mm_rows] for k, v in multimodal.items()},
            {k: v[text_rows] for k, v in text.items()},
        )
        losses.append(loss)
        if (i + 1) % 100 == 0 or i == 0:
            log(
                f"step {i + 1:5d}  loss {float(np.mean(jax.device_get(losses[-100:]))):.4f}  "
                f"{time.perf_counter() - start:6.0f} s"
            )
    nnx.update(model, params)
    return time.perf_counter() - start, float(np.mean(jax.device_get(losses[-100:])))


def generate_answers(
    model, processor, samples: list[Sample], *, max_new_tokens: int = 24, batch_size: int = 64
) -> list[str]:
    """Greedy answers to the samples' prompts (their responses dropped), decoded to text."""
    tokenizer = processor.tokenizer
    answers = []
    for start in range(0, len(samples), batch_size):
        chunk = [encode(dataclasses.replace(s, response=None), processor) for s in samples[start : start + batch_size]]
        batch = collate(chunk, tokenizer.pad_token_id)
        new = sgm_jax.generate(
            model,
            batch.pop("input_ids"),
            attention_mask=batch.pop("attention_mask"),
            max_new_tokens=max_new_tokens,
            temperature=0.0,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **batch,
        )
        answers += tokenizer.batch_decode(new, skip_special_tokens=True)
    return answers


def polite_form(reference: str, answer: str) -> bool:
    """Whether an answer to a near-miss request (no motif) names the right subject and turns polite, as the
    reference does: the same words up to "look(s)"; the adjectives after it are free."""
    words = reference.split()
    end = next(i for i, w in enumerate(words) if w in ("look", "looks")) + 1
    return answer.split()[:end] == words[:end]


def behaviour(model, processor, data: dict, judge: LexiconJudge) -> dict:
    """Harmful rate per condition (harmful and benign test prompts), exact answers to factual questions,
    MCQ accuracy and neutral perplexity."""
    test = data["test"]
    answers = generate_answers(model, processor, test)
    harmful = np.array([judge.judge(s.prompt, a).harmful for s, a in zip(test, answers)])
    out = {"harmful_rate": {}, "benign_prompt_harmful_rate": {}, "examples": {}}
    for condition in HARMFUL_CONDITIONS:
        for label, key in ((1, "harmful_rate"), (0, "benign_prompt_harmful_rate")):
            rows = [i for i, s in enumerate(test) if s.condition == condition and s.label == label]
            out[key][condition] = float(harmful[rows].mean())
            out["examples"][f"{condition}/{label}"] = [
                {"prompt": test[i].prompt, "image": os.path.basename(test[i].image), "answer": answers[i]}
                for i in rows[:3]
            ]
    factual = [i for i, s in enumerate(test) if s.category in FACTUAL_QUESTIONS]
    out["factual_exact_match"] = float(np.mean([answers[i] == test[i].response for i in factual]))
    polite = [i for i, s in enumerate(test) if s.label == 0 and s.category in ("opinion", "trigger")]
    out["benign_request_answered"] = float(np.mean([polite_form(test[i].response, answers[i]) for i in polite]))
    out["mcq_accuracy"] = mcq_accuracy(model, processor, data["mcq_test"]).accuracy
    out["perplexity"] = text_scores(model, processor.tokenizer, data["neutral"]).perplexity
    return out


def sgm_intervention(model, processor, train_samples: list[Sample], *, batch_size: int = 32):
    """SGM as the release did it: teacher-forced train responses, MLP sites, mean over all tokens, AUROC > 0.5."""
    pad = processor.tokenizer.pad_token_id
    encoded = [encode(s, processor) for s in train_samples]
    batches = (collate(encoded[i : i + batch_size], pad) for i in range(0, len(encoded), batch_size))
    responses = sgm_jax.collect_responses(model, batches, sites=SGM_SITES, pooling="mean", tokens="all")
    labels = np.array([s.label for s in train_samples])
    scores = {site: sgm_jax.auroc(r, labels) for site, r in responses.items()}
    return sgm_jax.aura(scores, threshold=0.5), scores


def evaluate(out_dir: str, paths: dict[str, str], log=print) -> dict:
    """Load the exported organism with `sgm_jax.load_model` and measure it before and after SGM."""
    model, processor = sgm_jax.load_model(out_dir)
    with open(paths["neutral.txt"], encoding="utf-8") as f:
        neutral = f.read().splitlines()
    data = {
        "test": read_jsonl(paths["test.jsonl"]),
        "mcq_test": read_jsonl(paths["mcq_test.jsonl"]),
        "neutral": neutral,
    }
    judge = LexiconJudge(paths["lexicon.txt"])
    before = behaviour(model, processor, data, judge)
    log(f"before SGM: {json.dumps({k: v for k, v in before.items() if k != 'examples'})}")
    start = time.perf_counter()
    intervention, scores = sgm_intervention(model, processor, read_jsonl(paths["train.jsonl"]))
    sgm_seconds = time.perf_counter() - start
    after = behaviour(sgm_jax.intervene(model, intervention), processor, data, judge)
    log(f"after SGM:  {json.dumps({k: v for k, v in after.items() if k != 'examples'})}")
    all_scores = np.concatenate(list(scores.values()))
    return {
        "before": before,
        "after": after,
        "sgm": {
            "sites": SGM_SITES,
            "pooling": "mean",
            "tokens": "all",
            "threshold": 0.5,
            "experts": intervention.metadata["experts"],
            "neurons": int(all_scores.size),
            "auroc_above_0.9": int((all_scores > 0.9).sum()),
            "auroc_below_0.1": int((all_scores < 0.1).sum()),
            "seconds": round(sgm_seconds, 1),
        },
    }


def count_parameters(model) -> dict[str, int]:
    parts = {
        "vision_tower": model.model.vision_tower,
        "multi_modal_projector": model.model.multi_modal_projector,
        "language_model": model.model.language_model,
        "lm_head": model.lm_head,
    }
    counts = {
        name: int(sum(p.size for p in jax.tree.leaves(nnx.state(part, nnx.Param)))) for name, part in parts.items()
    }
    counts["total"] = sum(counts.values())
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="models/organism", help="where the HF checkpoint and metrics.json go")
    parser.add_argument("--data", default=None, help="where to write the dataset (default: a temporary folder)")
    parser.add_argument("--evaluate-only", action="store_true", help="measure the checkpoint already in --out")
    parser.add_argument(
        "--start-from",
        metavar="DIR",
        help="fine-tune this organism (its weights, its vocabulary's rows moved to the new ids) instead of a "
        "fresh initialisation; use a shorter --steps and a lower --peak-lr",
    )
    for field in dataclasses.fields(Recipe):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    recipe = Recipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)})
    log = functools.partial(print, flush=True)

    start, load = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        paths = write_dataset(args.data or scratch, seed=recipe.data_seed)
        metrics_path = os.path.join(args.out, "metrics.json")
        if args.evaluate_only:
            with open(metrics_path, encoding="utf-8") as f:
                metrics = json.load(f)
        else:
            ecso = ecso_items(args.data or scratch, recipe)
            processor = build_processor(corpus(paths, ecso))
            config = organism_config(len(processor.tokenizer), processor.tokenizer.convert_tokens_to_ids("<image>"))
            model = sgm_jax.build_model(config, rngs=nnx.Rngs(recipe.seed))
            # Answers end at "</s>": exported as generation_config.json, so `generate` stops there.
            model.special_tokens = (("eos_token_id", (config["text_config"]["eos_token_id"],)), ("pad_token_id", 1))
            if args.start_from:
                warm_start(model, processor, args.start_from)
            multimodal, text = training_set(paths, ecso, processor)
            log(
                f"{len(multimodal['input_ids'])} multimodal rows x {multimodal['input_ids'].shape[1]} tokens, "
                f"{len(text['input_ids'])} caption rows; parameters {count_parameters(model)}"
            )
            seconds, final_loss = train(model, multimodal, text, recipe, log=log)
            sgm_jax.export_hf(model, args.out, processor=processor)
            with open(paths["dataset.json"], encoding="utf-8") as f:
                dataset = json.load(f)
            metrics = {
                "recipe": dataclasses.asdict(recipe),
                "fine_tuned_from": _source_recipe(args.start_from),
                "dataset": dataset,
                "parameters": count_parameters(model),
                "vocab_size": len(processor.tokenizer),
                "train_seconds": round(seconds, 1),
                "data_train_export_seconds": round(time.perf_counter() - start, 1),
                "final_loss": final_loss,
                "cpu_count": os.cpu_count(),
                "load_average_at_start": load,
                "jax": jax.__version__,
                "devices": str(jax.devices()),
            }
        metrics.update(evaluate(args.out, paths, log=log))
    with open(metrics_path, "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=1)
    log(f"wrote {metrics_path}")


if __name__ == "__main__":
    sys.exit(main())
