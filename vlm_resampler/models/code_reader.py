"""`vlm-resampler/tiny-qwen3-reader`: the tiny Qwen3 pretrained, offline and from a seed, to read
object codes in its image slot and to answer SynthPano's captions and questions from them.

Why: a real VLM starts from an LLM that already knows its job; the random tiny Qwen3 has to learn
the language, the question types and where to look all at once, and next-token loss through it
never found the image (shared/notes/GROUNDING.md). This LLM arrives knowing the language and
that the answer is in its image slot; the resampler stage then only has to bring the image there,
helped (stage.resampler.object_code_weight) by regressing its tokens onto the codes.

The recipe below is the whole definition: built once into the backbone cache (like the other tiny
backbones), it writes `pretraining.json` beside the weights with the recipe, the data, the final
losses and the reader's own ceiling (QA exact match with perfect codes, code-shuffle gap).
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vlm_resampler.cache import build_host
from vlm_resampler.data.collate import IGNORE_INDEX, left_pad
from vlm_resampler.data.object_facts import view_directions, view_facts
from vlm_resampler.data.prompts import DEFAULT_PROMPT, PromptFormat, answer_ids, end_of_turn_id, prompt_ids
from vlm_resampler.data.synthpano.scene import pretext_scene
from vlm_resampler.data.synthpano.text import DEFAULT_QUERY, question_answers
from vlm_resampler.models.object_codes import ObjectCodes
from vlm_resampler.models.pinned_build import DEFAULT_FLOAT_PATH
from vlm_resampler.models.vlm import answer_hidden_states, splice_visual

PRETRAINING_FILE = "pretraining.json"
RECIPE = {
    "seed": 0,
    "scenes": 6000,  # drawn from SynthPano's pretext stream: never a train/val/test scene
    "held_out_scenes": 200,  # the next scenes of that stream, for the numbers in pretraining.json
    "llm_shape": {},  # overrides of backbones.TINY_QWEN3_SHAPE (the unit tests' random tiny Qwen3)
    "steps": 2500,
    "batch_size": 32,
    "lr": 3e-3,
    "warmup_ratio": 0.05,
    "max_grad_norm": 1.0,
    "caption_share": 0.3,  # else one of the scene's question/answer pairs
    # Each batch draws how many tokens a view occupies, so the reader reads any resampler's layout.
    "tokens_per_view": [1, 4, 16, 49],
    "view_yaws_deg": [0.0, 90.0, 180.0, -90.0],  # conf/view/e2p's four views
    "code_init_std": 0.5,
    "prompt": dict(DEFAULT_PROMPT),  # conf/train.yaml's (tests keep the two equal)
    # The loss's softmax runs over the tokens of SynthPano's answers only (the 151k-row output layer
    # would cost most of each step); generation and the stages still use the full vocabulary.
    "softmax": "answer_tokens",
    # Trained in a child process on this float path: the same bytes on every x86-64 CPU with AVX2.
    "float_path": dict(DEFAULT_FLOAT_PATH),
}


class PretextData:
    """Token ids and fact tables of pretext scenes, tokenised once."""

    def __init__(self, tokenizer, prompt: PromptFormat, seed: int, first: int, count: int, view_yaws) -> None:
        self.tokenizer, self.prompt = tokenizer, prompt
        self.scenes = [pretext_scene(seed, first + i) for i in range(count)]
        self.facts = torch.stack([view_facts(s.objects, view_yaws) for s in self.scenes])  # [N, V, 3, 3]
        self.captions = [list(s.captions) for s in self.scenes]
        self.pairs = [question_answers(s.objects) for s in self.scenes]
        self._ids: dict[tuple[str, str], tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def ids(self, query: str, answer: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        # Few distinct (query, answer) pairs, tokenised once each.
        if (query, answer) not in self._ids:
            self._ids[query, answer] = (
                tuple(prompt_ids(self.tokenizer, self.prompt, query)),
                tuple(answer_ids(self.tokenizer, self.prompt, query, answer)),
            )
        return self._ids[query, answer]

    def batch(self, rows: list[tuple[int, str, str]]) -> dict[str, torch.Tensor]:
        """rows of (scene index, query, answer) -> facts, input_ids, attention_mask, labels."""
        sequences, labels = [], []
        for _, query, answer in rows:
            prompt, target = self.ids(query, answer)
            sequences.append(list(prompt + target))
            labels.append([IGNORE_INDEX] * len(prompt) + list(target))
        input_ids, attention_mask = left_pad(sequences, self.tokenizer.pad_token_id)
        label_ids, _ = left_pad(labels, IGNORE_INDEX)
        facts = self.facts[[scene for scene, _, _ in rows]]
        return {"facts": facts, "input_ids": input_ids, "attention_mask": attention_mask, "labels": label_ids}

    def all_answers(self) -> list[tuple[str, str]]:
        return [(q, a) for pairs in self.pairs for q, a in pairs] + [
            (DEFAULT_QUERY, c) for cs in self.captions for c in cs
        ]


def token_sets(data: PretextData) -> tuple[torch.Tensor, torch.Tensor]:
    """(every token id the pretext text uses, the ids its answers use), sorted."""
    used, answers = set(), set()
    for query, answer in data.all_answers():
        prompt, target = data.ids(query, answer)
        used |= {t for t in prompt if t >= 0} | set(target)
        answers |= set(target)
    used.add(data.tokenizer.pad_token_id)
    return torch.tensor(sorted(used)), torch.tensor(sorted(answers))


def _cosine_with_warmup(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def code_sequence(
    codes: ObjectCodes, facts: torch.Tensor, directions: torch.Tensor, tokens_per_view: int
) -> torch.Tensor:
    return codes.sequence(codes.view_codes(facts, directions), tokens_per_view)


def pretrain_reader(lm, tokenizer, recipe: dict = RECIPE, progress: bool = True) -> tuple[ObjectCodes, dict]:
    """Train `lm` (in place) and fresh object codes on pretext scenes; returns the codes and a
    report (final losses, seconds). Deterministic for a given recipe, torch build and thread count."""
    from tqdm import tqdm

    prompt = PromptFormat(**recipe["prompt"])
    rng = random.Random(recipe["seed"])
    torch.manual_seed(recipe["seed"])
    yaws = recipe["view_yaws_deg"]
    directions = torch.tensor(view_directions(yaws))
    data = PretextData(tokenizer, prompt, recipe["seed"], 0, recipe["scenes"], yaws)
    width = lm.get_input_embeddings().embedding_dim
    codes = ObjectCodes(width, init_std=recipe["code_init_std"])
    # Only the rows of the tokens the pretext text uses ever get a gradient (the softmax runs over
    # the answer tokens): train a compact copy of them and write it back at the end, instead of
    # carrying the 151k-row matrix through every optimizer step (the same result, in half the time).
    embedding = lm.get_input_embeddings().weight
    used, answer_tokens = token_sets(data)
    compact = torch.zeros(embedding.shape[0], dtype=torch.long)
    compact[used] = torch.arange(len(used))
    rows = torch.nn.Parameter(embedding.detach()[used].clone())
    answer_rows = compact[answer_tokens]
    answer_index = torch.full((embedding.shape[0],), IGNORE_INDEX, dtype=torch.long)
    answer_index[answer_tokens] = torch.arange(len(answer_tokens))
    if lm.get_output_embeddings().weight is not embedding:
        raise ValueError("the code-reader recipe expects tied input and output embeddings (tie_word_embeddings)")
    embedding.requires_grad_(False)

    def embed(ids: torch.Tensor) -> torch.Tensor:
        return rows[compact[ids]]

    params = [p for p in lm.parameters() if p.requires_grad] + [rows] + list(codes.parameters())
    optimizer = torch.optim.AdamW(params, lr=recipe["lr"], weight_decay=0.0)
    steps, warmup = int(recipe["steps"]), max(1, int(recipe["warmup_ratio"] * recipe["steps"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine_with_warmup(s, steps, warmup))
    lm.train()
    losses, started = [], time.perf_counter()
    bar = tqdm(range(steps), desc="pretrain tiny-qwen3-reader", unit="step", disable=not progress)
    for _ in bar:
        batch_rows = []
        for _ in range(recipe["batch_size"]):
            scene = rng.randrange(len(data.scenes))
            if rng.random() < recipe["caption_share"]:
                batch_rows.append((scene, DEFAULT_QUERY, rng.choice(data.captions[scene])))
            else:
                batch_rows.append((scene, *rng.choice(data.pairs[scene])))
        batch = data.batch(batch_rows)
        visual = code_sequence(codes, batch["facts"], directions, rng.choice(recipe["tokens_per_view"]))
        spliced = splice_visual(embed, batch["input_ids"], batch["attention_mask"], visual, batch["labels"])
        hidden, targets = answer_hidden_states(lm, spliced)
        loss = F.cross_entropy(hidden @ rows[answer_rows].T, answer_index[targets])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe["max_grad_norm"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix_str(f"loss {sum(losses[-20:]) / len(losses[-20:]):.3f}")
    with torch.no_grad():
        embedding[used] = rows
    embedding.requires_grad_(True)
    lm.eval()
    report = {
        "train_seconds": round(time.perf_counter() - started, 1),
        "final_loss_last_50_steps": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "loss_every_100_steps": [
            round(sum(losses[i : i + 100]) / len(losses[i : i + 100]), 4) for i in range(0, len(losses), 100)
        ],
        "tokens_trained": len(used),
        "answer_vocabulary_size": len(answer_tokens),
    }
    return codes, report


@torch.no_grad()
def reader_ceiling(lm, tokenizer, codes: ObjectCodes, recipe: dict = RECIPE, tokens_per_view: int = 4) -> dict:
    """On held-out pretext scenes, with perfect codes: QA exact match per kind (greedy, full
    vocabulary) and the answer loss with each scene's own codes vs another scene's (full vocabulary)."""
    from vlm_resampler.data.answers import normalise_answer, question_kind

    prompt = PromptFormat(**recipe["prompt"])
    yaws = recipe["view_yaws_deg"]
    directions = torch.tensor(view_directions(yaws))
    data = PretextData(tokenizer, prompt, recipe["seed"], recipe["scenes"], recipe["held_out_scenes"], yaws)
    eot = end_of_turn_id(tokenizer)
    hits: dict[str, list[bool]] = {}
    rows = [(i, q, a) for i, pairs in enumerate(data.pairs) for q, a in pairs]
    for start in range(0, len(rows), 64):
        chunk = rows[start : start + 64]
        sequences = [list(data.ids(q, a)[0]) for _, q, a in chunk]
        input_ids, attention_mask = left_pad(sequences, tokenizer.pad_token_id)
        facts = data.facts[[i for i, _, _ in chunk]]
        spliced = splice_visual(
            lm.get_input_embeddings(),
            input_ids,
            attention_mask,
            code_sequence(codes, facts, directions, tokens_per_view),
        )
        out = lm.generate(
            inputs_embeds=spliced["inputs_embeds"],
            attention_mask=spliced["attention_mask"],
            max_new_tokens=12,
            do_sample=False,
            num_beams=1,
            eos_token_id=eot,
            pad_token_id=tokenizer.pad_token_id,
        )
        for (_, query, answer), row in zip(chunk, out.tolist()):
            row = row[: row.index(eot)] if eot in row else row
            said = tokenizer.decode(row, skip_special_tokens=True)
            hits.setdefault(question_kind(query), []).append(normalise_answer(said) == normalise_answer(answer))
    caption_rows = [(i, DEFAULT_QUERY, data.captions[i][0]) for i in range(len(data.scenes))]
    totals = {"own": 0.0, "shuffled": 0.0}
    count = 0
    for start in range(0, len(caption_rows), 64):
        batch = data.batch(caption_rows[start : start + 64])
        for label, facts in (("own", batch["facts"]), ("shuffled", batch["facts"].roll(1, dims=0))):
            spliced = splice_visual(
                lm.get_input_embeddings(),
                batch["input_ids"],
                batch["attention_mask"],
                code_sequence(codes, facts, directions, tokens_per_view),
                batch["labels"],
            )
            hidden, targets = answer_hidden_states(lm, spliced)
            totals[label] += float(F.cross_entropy(lm.get_output_embeddings()(hidden), targets, reduction="sum"))
        count += int((batch["labels"] != IGNORE_INDEX).sum())
    return {
        "tokens_per_view": tokens_per_view,
        "qa_exact_match": {kind: round(sum(h) / len(h), 4) for kind, h in sorted(hits.items())},
        "caption_loss": round(totals["own"] / count, 4),
        "caption_loss_codes_shuffled": round(totals["shuffled"] / count, 4),
        "code_shuffle_gap": round((totals["shuffled"] - totals["own"]) / count, 4),
    }


def build_reader(out_dir: Path, base_model_builder, recipe: dict = RECIPE) -> None:
    """Fill `out_dir` like a hub repository: the pretrained LLM, its tokenizer, its object codes and
    pretraining.json. `base_model_builder()` returns the (seeded) random-init LLM to start from."""
    from transformers import AutoTokenizer

    from vlm_resampler.models.tokenizer import build_qwen3_tokenizer

    out_dir = Path(out_dir)
    build_qwen3_tokenizer(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    lm = base_model_builder()
    generation_config = lm.generation_config
    with torch.random.fork_rng(devices=[]):
        codes, report = pretrain_reader(lm, tokenizer, recipe)
    ceilings = [reader_ceiling(lm, tokenizer, codes, recipe, t) for t in (4, 49)]
    lm.generation_config = generation_config
    lm.save_pretrained(out_dir)
    codes.save(out_dir)
    record = {
        "what": "tiny Qwen3 pretrained to answer SynthPano captions and questions from object codes in its image slot",
        "recipe": recipe,
        "data": "SynthPano pretext scenes (vlm_resampler.data.synthpano.scene.pretext_scene, indices 0.."
        f"{recipe['scenes'] - 1}; held out: the next {recipe['held_out_scenes']})",
        "training": report,
        "ceiling_with_perfect_codes": ceilings,
        **build_host(),
    }
    (out_dir / PRETRAINING_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
